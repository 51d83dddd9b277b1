"""The automations `relay alerts create` makes, as the server will evaluate them: a lost run is
marked Crashed after its heartbeats stop, and "no tick completed" is counted per clinic (one
bucket per tick deployment) and names the clinic. The server-side proof of the first is
tests/flows/test_heartbeats.py."""

from __future__ import annotations

import uuid
from datetime import timedelta

from prefect.client.schemas.objects import StateType

from relay.alerts import CRASH_AFTER_SECONDS, HEARTBEAT_SECONDS, ZOMBIE_NAME, automations


def by_name(quiet_minutes: int = 30) -> dict:
    return {a.name: a for a in automations(uuid.uuid4(), quiet_minutes)}


def test_a_run_whose_heartbeats_stop_is_marked_crashed():
    zombie = by_name()[ZOMBIE_NAME]
    trigger = zombie.trigger

    assert trigger.posture.value == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
            "prefect.flow-run.Crashed"} <= trigger.expect  # fmt: skip
    assert trigger.for_each == {"prefect.resource.id"}  # one bucket per run
    assert trigger.within == timedelta(seconds=CRASH_AFTER_SECONDS)
    # Several heartbeats may be missed before a live run is taken for a dead one.
    assert CRASH_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS
    crash, tell = zombie.actions
    assert crash.type == "change-flow-run-state" and crash.state == StateType.CRASHED
    # the lost machine's alert comes from this automation itself, not from the Crashed state
    assert tell.type == "send-notification" and "marked Crashed" in tell.subject


def test_no_tick_completed_is_counted_per_clinic_and_names_it():
    quiet = by_name(45)["relay: no tick completed"]
    trigger = quiet.trigger

    assert trigger.for_each == {"related:deployment:prefect.resource.id"}
    assert trigger.after == trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.within == timedelta(minutes=45)
    [action] = quiet.actions
    assert "{{ flow_run.parameters.clinic }}" in action.subject
    assert "45 minutes" in action.subject


def test_every_clinic_event_alert_and_the_run_alerts_are_there():
    names = set(by_name())
    assert {"relay: a run failed or crashed", "relay: sending held: stale or failed sync",
            "relay: clinic.yaml names drifted", "relay: no tick completed",
            ZOMBIE_NAME} <= names  # fmt: skip
