"""A lost machine is noticed: a tick whose process dies with its machine (SIGKILL, nobody left to
report it) stops heartbeating, the automation `relay alerts create` makes marks it Crashed, and
Crashed gives the clinic's slot back so its next tick runs, instead of every tick waiting for
the slot's lease to run out (5 minutes) as in issue 14.

The tick is the deployment `relay deploy` made (its heartbeat every 30 s comes from the run's
environment); the automation is relay/alerts.py's with a shorter silence (15 s instead of 90) so
the test does not wait three heartbeats. States are polled with generous timeouts; nothing is
timed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SILENCE = 15  # seconds without a heartbeat before a run counts as lost (90 in production)


@pytest.fixture
def zombie_automation(client):
    """relay/alerts.py's lost-run automation on the test server, removed afterwards."""
    from relay.alerts import ZOMBIE_NAME, zombie_runs

    for old in client.read_automations_by_name(ZOMBIE_NAME):
        client.delete_automation(old.id)
    automation = zombie_runs(SILENCE).create()
    yield automation
    client.delete_automation(automation.id)


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
    killed = client.create_flow_run_from_deployment(tick.id).id
    proc = start_engine(client, prefect_server, killed)
    wait_until("the first heartbeat", lambda: heartbeats(prefect_server, killed))
    proc.send_signal(signal.SIGKILL)  # the machine is gone: no worker, no engine to report it
    proc.wait()
    assert client.read_flow_run(killed).state.type.value == "RUNNING"

    waiting = client.create_flow_run_from_deployment(tick.id).id
    assert client.set_flow_run_state(waiting, Pending()).status.value == "REJECT"
    assert client.read_flow_run(waiting).state.name == "AwaitingConcurrencySlot"

    crashed = wait_until(
        "the killed tick to be marked Crashed",
        lambda: (r := client.read_flow_run(killed)).state.type.value == "CRASHED" and r,
    )
    assert "No heartbeat" in crashed.state.message

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
