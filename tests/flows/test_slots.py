"""A tick's slot left taken by a killed run never blocks later ticks (relay/slots.py), on a real
Prefect server: a tick takes its deployment's one slot in a process of its own, the process is
killed with SIGKILL while Running, the next tick waits in AwaitingConcurrencySlot (the bug), and
then the start-up release, or the scheduled housekeeping, marks the killed run Crashed and the
next tick runs to Completed. No wall-clock assertions: states are polled with generous timeouts.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def slot_tick(prefect_server, client, clinics):
    """alpha's tick as relay serve deploys it (tick_deployment: limit 1, ENQUEUE), unscheduled."""
    from relay.serve import tick_deployment

    deployment = tick_deployment("alpha", timedelta(minutes=2), name="alpha-slot-tick")
    deployment.schedules = []
    return deployment.apply()


def start_run(client, env: dict, run_id) -> subprocess.Popen:
    """What a runner does with a run it picked up: take the slot (Pending), start the engine."""
    from prefect.states import Pending

    result = client.set_flow_run_state(run_id, Pending())
    assert result.status.value == "ACCEPT", result.details
    return subprocess.Popen(
        [sys.executable, "-m", "prefect.engine"],
        env={**env, "PREFECT__FLOW_RUN_ID": str(run_id)},
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_state(client, run_id, states: set[str], timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state and run.state.type.value in states:
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"run {run.name} stayed {run.state and run.state.name}, not in {states}")
        time.sleep(0.5)


def killed_tick(client, env: dict, deployment_id):
    """A tick that took the slot and was killed with SIGKILL while Running; then a second tick
    that is refused the slot (AwaitingConcurrencySlot). Returns (killed run id, waiting run id)."""
    from prefect.states import Pending

    killed = client.create_flow_run_from_deployment(deployment_id).id
    proc = start_run(client, env, killed)
    wait_state(client, killed, {"RUNNING"})
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert client.read_flow_run(killed).state.type.value == "RUNNING"  # nobody says otherwise

    waiting = client.create_flow_run_from_deployment(deployment_id).id
    refused = client.set_flow_run_state(waiting, Pending())
    assert refused.status.value == "REJECT"
    assert client.read_flow_run(waiting).state.name == "AwaitingConcurrencySlot"
    return killed, waiting


def next_tick_runs(client, env: dict, killed, waiting):
    """The killed run is Crashed, its slot given back, and the waiting tick runs to Completed."""
    assert client.read_flow_run(killed).state.type.value == "CRASHED"
    proc = start_run(client, env, waiting)
    try:
        run = wait_state(client, waiting, FINAL, timeout=300)
    finally:
        proc.wait(timeout=120)
    assert run.state.type.value == "COMPLETED", run.state.message
    # Its logs reach the UI (INFO and up), though the terminal shows warnings only (relay.env).
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[waiting])))
    assert any(log.level == logging.INFO for log in logs), [log.message for log in logs]


def test_start_up_releases_a_killed_runs_slot(prefect_server, client, slot_tick):
    from relay.slots import release_stopped_runs

    killed, waiting = killed_tick(client, prefect_server, slot_tick)

    marked = release_stopped_runs(client, [slot_tick], "stopped in the test")

    assert marked == [client.read_flow_run(killed).name]
    assert "stopped in the test" in client.read_flow_run(killed).state.message
    next_tick_runs(client, prefect_server, killed, waiting)


def test_housekeeping_releases_a_killed_runs_slot_and_says_why_a_tick_waits(
    prefect_server, client, slot_tick, monkeypatch
):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from relay.slots import DEAD_AFTER, Housekeeper

    killed, waiting = killed_tick(client, prefect_server, slot_tick)
    keeper = Housekeeper([slot_tick], interval=timedelta(0))
    # The housekeeper reads the clinic's configuration for its database lock, as serve does.
    monkeypatch.setenv("RELAY_CLINICS_DIR", prefect_server["RELAY_CLINICS_DIR"])

    keeper.run_once()  # the killed run still counts as alive: the waiting tick is told why
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[waiting])))
    told = [log.message for log in logs if log.name == "relay.slots"]
    assert len(told) == 1 and str(killed) in told[0], told
    assert client.read_flow_run(killed).state.type.value == "RUNNING"

    for _ in range(DEAD_AFTER - 1):
        keeper.run_once()
    next_tick_runs(client, prefect_server, killed, waiting)


def test_the_next_tick_marks_a_run_lost_before_any_heartbeat_crashed(
    client, prefect_server, slot_tick
):
    """A run lost while Pending (its worker died before the engine started: no heartbeat for the
    lost-run automation to watch) whose lease then ran out: the clinic's next tick, holding the
    deployment's one slot, marks it Crashed naming itself (flows/lost.py), and the slot stays
    its own until it ends."""
    from prefect.states import Pending

    from flows.lost import limit_of, set_active

    lost = client.create_flow_run_from_deployment(slot_tick).id
    assert client.set_flow_run_state(lost, Pending()).status.value == "ACCEPT"  # took the slot
    limit = limit_of(client, slot_tick)
    assert limit.active_slots == 1
    set_active(client, limit.name, 0)  # its lease ran out: the server's repossessor does this

    following = client.create_flow_run_from_deployment(slot_tick).id
    proc = start_run(client, prefect_server, following)
    try:
        wait_state(client, lost, {"CRASHED"})
        if client.read_flow_run(following).state.type.value == "RUNNING":
            assert limit_of(client, slot_tick).active_slots == 1  # the slot still the tick's
        run = wait_state(client, following, FINAL, timeout=300)
    finally:
        proc.wait(timeout=120)
    assert run.state.type.value == "COMPLETED", run.state.message
    marked = client.read_flow_run(lost).state
    assert marked.type.value == "CRASHED", marked.name
    assert "process was lost" in marked.message and str(following) in marked.message
    assert limit_of(client, slot_tick).active_slots == 0  # the tick gave back its own slot only
