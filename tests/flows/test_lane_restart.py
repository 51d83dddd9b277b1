"""A worker restarted while a tick is in its fast lane (deploying code: docs/scaling.md, "Restart
it to run code changed on disk"): the tick did all its work, so its run ends Completed, its
lane's last line saying its worker is stopping, and no "a run failed or crashed" alert comes
from a routine restart. Before, the worker's stop sent the run SIGTERM: Crashed ("aborted by a
termination signal"), or Failed ("Query interrupted") when it landed in a query of a poll.

`relay worker` as an operator runs it, stopped with SIGTERM (``kill``, systemd's stop of its
main process) and with SIGINT (Ctrl-C), on a real server; then a cancel from the UI of a tick in
its lane still ends Cancelled. The clinic is deployed on a pool of its own (``restart``) so the
session's worker (Prefect's, on ``local``) never takes its runs. Nothing is timed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.flows.conftest import MACHINE, PROJECT_ROOT, RELAY, WELCOME, clinic_yaml, unschedule
from tests.flows.test_deployments import events, run_deployment, wait_for

pytestmark = [pytest.mark.prefect]

POOL = "restart"
LANE = "fast_lane:\n  enabled: true\n  every_seconds: 2\n"
SCHEDULE = "schedule:\n  tick_every_minutes: 10\n"  # a lane that would poll for minutes


@pytest.fixture(scope="module")
def restart_clinic(prefect_server, client, tmp_path_factory):
    """Clinic 'restart' (its own sandbox and clinics folder), deployed on pool ``restart``."""
    from pydantic import SecretStr

    from blocks.cliniko import ClinikoAccount
    from sandbox.cliniko import SandboxClinic, SandboxServer

    sandbox = SandboxClinic.generate(seed=17, patients=80, start=datetime.now(UTC))
    folder = tmp_path_factory.mktemp("restart-clinics")
    with SandboxServer(sandbox, rate_limit=None) as server:
        ClinikoAccount(
            api_key=SecretStr(sandbox.api_key), contact_email="tests@example.com",
            base_url=server.base_url, requests_per_minute=100000,
        ).save("restart-cliniko", overwrite=True)  # fmt: skip
        clinic_yaml(folder, "restart", "restart-cliniko", WELCOME + LANE + SCHEDULE)
        result = subprocess.run(
            [RELAY, "deploy", "--clinics", str(folder), "--pool", POOL, "--home", MACHINE],
            env=prefect_server, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, f"relay deploy failed:\n{result.stdout}\n{result.stderr}"
        unschedule(client)
        yield {**prefect_server, "RELAY_CLINICS_DIR": str(folder)}


class Worker:
    """`relay worker` on the clinic's pool and machine queue, as an operator starts it."""

    def __init__(self, env: dict, log: Path) -> None:
        self.log = log
        self.out = log.open("a")
        self.proc = subprocess.Popen(
            [RELAY, "worker", "--pool", POOL, "--queue", f"machine-{MACHINE}"],
            env=env, cwd=PROJECT_ROOT, stdout=self.out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.out.close()


@pytest.fixture
def relay_worker(restart_clinic, tmp_path):
    running = Worker(restart_clinic, tmp_path / "worker.log")
    yield running
    running.stop()


def in_its_lane(client, run_id, worker: Worker, timeout: float = 300) -> None:
    """Until the tick's ``fast-lane`` task runs (its steps all done), and a poll or two more."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        found = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        # a task run may be read before its first state is (state None)
        if any(t.name == "fast-lane" and t.state and t.state.is_running() for t in found):
            break
        run = client.read_flow_run(run_id)
        assert not run.state.is_final(), (run.state.name, run.state.message)
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no fast lane after {timeout:.0f} s"
        time.sleep(1)
    time.sleep(3)  # polling, not starting


def lane_lines(client, run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [log.message for log in logs if log.message.startswith("fast lane:")]


def of_run(env: dict, name: str, run_id) -> list[dict]:
    return [
        e
        for e in events(env, name)
        if e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run_id}"
        or any(r["prefect.resource.id"] == f"prefect.flow-run.{run_id}" for r in e["related"])
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_worker_restart_ends_a_polling_lane_completed_not_crashed(
    client, restart_clinic, relay_worker, signum
):
    run_id = run_deployment(client, "clinic-tick/restart-tick")
    in_its_lane(client, run_id, relay_worker)

    assert relay_worker.stop(signum) == 0, relay_worker.log.read_text()[-3000:]
    (run,) = wait_for(client, [run_id], timeout=120, worker_log=relay_worker.log)

    assert run.state.is_completed(), (run.state.name, run.state.message)
    last = lane_lines(client, run_id)[-1]
    assert last.endswith("stopped: its worker is stopping"), last
    env = restart_clinic
    assert not of_run(env, "prefect.flow-run.Crashed", run_id)  # "a run failed or crashed"
    assert not of_run(env, "prefect.flow-run.Failed", run_id)
    deadline = time.monotonic() + 60  # events are stored a moment after they are sent
    while not of_run(env, "relay.tick.completed", run_id):  # the "no tick completed" alert's
        assert time.monotonic() < deadline, "no relay.tick.completed for the tick"
        time.sleep(1)


def test_a_tick_cancelled_in_its_lane_still_ends_cancelled(client, restart_clinic, relay_worker):
    from prefect.states import Cancelling

    run_id = run_deployment(client, "clinic-tick/restart-tick")
    in_its_lane(client, run_id, relay_worker)
    client.set_flow_run_state(run_id, Cancelling(), force=True)  # the UI's Cancel
    (run,) = wait_for(client, [run_id], timeout=120, worker_log=relay_worker.log)
    assert run.state.type.value == "CANCELLED", (run.state.name, run.state.message)
    assert relay_worker.proc.poll() is None  # the worker lives on
    assert not [line for line in lane_lines(client, run_id) if "worker is stopping" in line]
