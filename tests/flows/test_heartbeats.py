"""A lost machine is noticed: a tick whose process dies with its machine (SIGKILL, nobody left to
report it) stops heartbeating, the automation `relay alerts create` makes marks it Crashed, and
Crashed gives the clinic's slot back so its next tick runs, instead of every tick waiting for
the slot's lease to run out (5 minutes) as in issue 14.

The tick is the deployment `relay deploy` made (its heartbeat every 30 s comes from the run's
environment); the automation is relay/alerts.py's with a shorter silence (15 s instead of 60) so
the test does not wait three heartbeats. States are polled with generous timeouts; nothing is
timed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SILENCE = 15  # seconds without a heartbeat before a run counts as lost (60 in production)


@pytest.fixture
def zombie_automation(client):
    """relay/alerts.py's lost-run automation on the test server, the one that tells a person
    when it marked a run Crashed, and "a run failed or crashed" (which must not tell them again),
    notifying a local webhook; removed afterwards."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from relay.alerts import (
        FAILED_NAME,
        LOST_NAME,
        ZOMBIE_NAME,
        automations,
        lost_run_crashed,
        zombie_runs,
    )
    from tests.flows.test_quiet_alert import Webhook

    hook = Webhook()
    block_id = CustomWebhookNotificationBlock(
        name="lost-test", url=hook.url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("lost-test", overwrite=True)  # fmt: skip
    for name in (ZOMBIE_NAME, LOST_NAME, FAILED_NAME):
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)
    [failed] = [a for a in automations(block_id, 15, SILENCE) if a.name == FAILED_NAME]
    made = [
        zombie_runs(SILENCE).create(),
        lost_run_crashed(dict(block_document_id=block_id), SILENCE).create(),
        failed.create(),
    ]
    yield hook
    for automation in made:
        client.delete_automation(automation.id)
    hook.server.shutdown()


@pytest.fixture
def slow_cliniko(sandboxes):
    """alpha's Cliniko answers every request slowly: its tick is mid-sync when it is killed."""
    from sandbox.cliniko.controls import Faults

    sandboxes["a"].faults = Faults(slow_rate=1.0, slow_seconds=20)
    yield
    sandboxes["a"].faults = None


def wait_until(what, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)
    return found


def heartbeats(env: dict, run_id) -> list[dict]:
    response = httpx.post(
        f"{env['PREFECT_API_URL']}/events/filter",
        json={"filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        }},
        timeout=10,
    )  # fmt: skip
    response.raise_for_status()
    return response.json()["events"]


def unserved(client) -> dict:
    """Where a run the test starts itself goes: a queue no worker polls (test_quiet_alert.py)."""
    from tests.flows.test_quiet_alert import unserved as queue

    return {"work_queue_name": queue(client)}


def start_engine(client, env: dict, run_id) -> subprocess.Popen:
    """What a worker does with a run it picked up: take the slot (Pending), start the engine
    with the deployment's environment (its heartbeat setting)."""
    from prefect.states import Pending

    run = client.read_flow_run(run_id)
    deployment = client.read_deployment(run.deployment_id)
    result = client.set_flow_run_state(run_id, Pending())
    assert result.status.value == "ACCEPT", result.details
    return subprocess.Popen(
        [sys.executable, "-m", "prefect.engine"],
        env={**env, **deployment.job_variables["env"], "PREFECT__FLOW_RUN_ID": str(run_id)},
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_killed_tick_is_marked_crashed_and_the_next_tick_gets_the_slot(
    prefect_server, client, deployed, zombie_automation, slow_cliniko
):
    from prefect.states import Pending

    tick = client.read_deployment_by_name("clinic-tick/alpha-tick")
    killed = client.create_flow_run_from_deployment(tick.id, **unserved(client)).id
    proc = start_engine(client, prefect_server, killed)
    wait_until("the first heartbeat", lambda: heartbeats(prefect_server, killed))
    proc.send_signal(signal.SIGKILL)  # the machine is gone: no worker, no engine to report it
    proc.wait()
    assert client.read_flow_run(killed).state.type.value == "RUNNING"

    waiting = client.create_flow_run_from_deployment(tick.id, **unserved(client)).id
    assert client.set_flow_run_state(waiting, Pending()).status.value == "REJECT"
    assert client.read_flow_run(waiting).state.name == "AwaitingConcurrencySlot"

    crashed = wait_until(
        "the killed tick to be marked Crashed",
        lambda: (r := client.read_flow_run(killed)).state.type.value == "CRASHED" and r,
    )
    assert "No heartbeat" in crashed.state.message
    told = wait_until(
        "the notification naming the lost run",
        lambda: [m for m in zombie_automation.received if str(killed) in m.get("body", "")],
    )
    assert "was lost and is marked Crashed" in told[0]["subject"], told
    assert "clinic alpha" in told[0]["body"], told
    told_once(zombie_automation, killed)

    # Its slot is free: the next tick is let in at once (no 5-minute lease to wait out).
    next_tick = start_engine(client, prefect_server, waiting)
    try:
        wait_until(
            "the next tick to run",
            lambda: client.read_flow_run(waiting).state.type.value in {"RUNNING", "COMPLETED"},
        )
    finally:
        next_tick.kill()
        next_tick.wait()
        from prefect.states import Cancelled

        client.set_flow_run_state(waiting, Cancelled(), force=True)


def test_a_heartbeat_after_a_run_finished_crashes_nothing_and_tells_nobody(
    prefect_server, client, deployed, zombie_automation
):
    """Prefect's race (PrefectHQ/prefect#18653): a run's last heartbeat processed after its
    Completed state reopens the lost-run watch, which fires once the silence has passed. The
    finished run stays Completed, and no notification goes out (it used to, from the lost-run
    automation itself: 5 of 7 in the two-machine run at load 20)."""
    from tests.flows.test_quiet_alert import complete_a_tick

    deployment = client.read_deployment_by_name("clinic-tick/beta-tick").id
    run_id = complete_a_tick(client, deployment)
    late = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
        "related": [
            {
                "prefect.resource.id": f"prefect.deployment.{deployment}",
                "prefect.resource.role": "deployment",
            }
        ],
    }  # what the run's engine sent just before it ended (naming its deployment, as the engine
    # does), arriving after its Completed
    httpx.post(f"{prefect_server['PREFECT_API_URL']}/events", json=[late], timeout=30)

    def refused():
        return [
            e for e in automation_events(prefect_server, "prefect.automation.action.failed")
            if any(r["prefect.resource.id"] == f"prefect.flow-run.{run_id}" for r in e["related"])
        ]  # fmt: skip

    [failed] = wait_until("the lost-run automation to fire for the finished run", refused)
    assert "terminal state COMPLETED" in failed["payload"]["reason"], failed
    assert client.read_flow_run(run_id).state.name == "Completed"
    time.sleep(5)  # a notification would be sent at once by the action that was refused
    assert not [m for m in zombie_automation.received if str(run_id) in json.dumps(m)]


def test_a_tick_lost_before_its_first_heartbeat_is_marked_crashed(
    client, deployed, zombie_automation
):
    """The two-machine run killed a tick 3 s after it went Running, before any heartbeat of its
    reached the server, and its worker left another tick Submitting (taken up, its process not
    started): neither may stay there for good, holding its clinic's slot until the lease runs out.
    Both are watched at once (two clinics' ticks), so the second costs the test no time."""
    from prefect.states import Pending, Running, Submitting

    lost = {}
    for clinic, states in (
        ("beta", (Pending(), Running())),  # the worker and the engine; then the machine is gone
        ("alpha", (Pending(), Submitting())),  # the worker was starting it, then it was gone
    ):
        tick = client.read_deployment_by_name(f"clinic-tick/{clinic}-tick")
        run_id = client.create_flow_run_from_deployment(tick.id, **unserved(client)).id
        for state in states:
            assert client.set_flow_run_state(run_id, state).status.value == "ACCEPT"
        lost[clinic] = run_id

    for clinic, run_id in lost.items():
        crashed = wait_until(
            f"{clinic}'s silent tick to be marked Crashed",
            lambda run_id=run_id: (
                (r := client.read_flow_run(run_id)).state.type.value == "CRASHED" and r
            ),
        )
        assert "No heartbeat for" in crashed.state.message
        told = wait_until(
            "the notification naming it",
            lambda run_id=run_id: [
                m for m in zombie_automation.received if str(run_id) in m.get("body", "")
            ],
        )
        assert f"clinic {clinic}" in told[0]["body"], told
    for run_id in lost.values():
        told_once(zombie_automation, run_id)


def told_once(hook, run_id) -> None:
    """A lost run is told of once, by "a lost run was marked Crashed": its Crashed state (named
    Lost) is not "a run failed or crashed" as well, which answers within seconds when it fires."""
    time.sleep(5)
    told = [m for m in hook.received if str(run_id) in m.get("body", "")]
    assert len(told) == 1, told


def automation_events(env: dict, name: str) -> list[dict]:
    response = httpx.post(
        f"{env['PREFECT_API_URL']}/events/filter",
        json={"filter": {"event": {"name": [name]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["events"]
