"""The Scheduled event a tick sends for runs the scheduler made (flows/lost.py,
``announce_scheduled``), on a real Prefect server: a run started within 5 minutes of being made
has state events that follow a Scheduled event the scheduler never sends, and Prefect's triggers
hold them for 15 minutes; once the tick sends that event, they go through at once. Seen through an
automation on the run's Running event (what the lost-run watch opens on): it does not fire while
the event is held, and fires once the Scheduled event is sent. Nothing is timed but the wait that
shows the hold, which is long enough for an unheld event to go through on a busy machine."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest

pytestmark = [pytest.mark.prefect]

HELD_FOR = 15  # seconds the Running event is watched for, and not seen, before the announcement


def fired(client, automation_id) -> bool:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    found = client.request(
        "POST", "/events/filter",
        json={"filter": EventFilter(
            event=EventNameFilter(name=["prefect.automation.triggered"]),
            resource=EventResourceFilter(id=[f"prefect.automation.{automation_id}"]),
        ).model_dump(mode="json"), "limit": 5},
    ).json()  # fmt: skip
    return bool(found["events"])


def test_a_scheduler_made_runs_held_events_go_through_once_the_tick_announces_it(client):
    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.events.actions import DoNothing
    from prefect.states import Pending, Running

    from flows.lost import announce_scheduled

    flow_id = client.create_flow_from_name(f"held-{uuid.uuid4().hex[:8]}")
    deployment_id = client.create_deployment(
        flow_id, "held", schedules=[DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(minutes=1)), active=True,
        )],
    )  # fmt: skip
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    deadline = time.monotonic() + 120
    while not (runs := client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])),
        sort="EXPECTED_START_TIME_ASC", limit=1,
    )):  # fmt: skip
        assert time.monotonic() < deadline, "the scheduler made no run in 120 s"
        time.sleep(1)
    run = runs[0]
    automation = Automation(
        name=f"held-{run.id}",
        trigger=EventTrigger(
            match={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
            expect={"prefect.flow-run.Running"}, posture=Posture.Reactive, threshold=1,
            within=timedelta(0),
        ),
        actions=[DoNothing()],
    ).create()  # fmt: skip
    try:
        for state in (Pending(), Running()):
            assert client.set_flow_run_state(run.id, state, force=True).status.value == "ACCEPT"
        time.sleep(HELD_FOR)
        assert not fired(client, automation.id), "the Running event was not held: nothing to fix"
        running = client.read_flow_run(run.id)
        assert announce_scheduled(client, running) >= 1
        deadline = time.monotonic() + 60
        while not fired(client, automation.id):
            assert time.monotonic() < deadline, "the Running event is still held"
            time.sleep(1)
    finally:
        client.delete_automation(automation.id)
        client.delete_deployment(deployment_id)
