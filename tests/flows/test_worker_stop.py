"""`relay worker` stopped (SIGTERM as systemd or `kill` sends it, Ctrl-C to its process group)
while a run it started is in progress, on a real Prefect server of the test's own.

With the server stopped first, or frozen (SIGSTOP: it takes connections and never answers, as a
server behind a network gone), the worker exits within seconds all the same, saying why: the
run, told to stop, would retry its last report to the server for minutes (here
``PREFECT_CLIENT_MAX_RETRIES=10``, as tests/flows/conftest.py sets it), and the worker used to
wait for it that long; now the run is killed after the grace (relay/worker.py, Stopping), its
process gone, and the worker says which run it killed (with the server stopped the run lingers
30 s after it is told, as one retrying would: a refused connection can also end it at once).
With the server up, the run reports its own end (Crashed) and nothing is killed, also when that
takes longer than the grace (a loaded machine; here a run that lingers 15 s): the grace is for a
server that does not answer. The bound asserted is generous (60 s for a grace of 10 s, 25 s
while the server answers, and a deadline of 30 s): nothing else is timed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("relay"))
POOL, QUEUE = "stop", "machine-stop"

PROBE = """
import os, time
from prefect import flow


@flow(name="stop-probe")
def probe(out: str, linger: float = 0) -> None:
    with open(out, "w") as f:
        f.write(str(os.getpid()))
    try:
        time.sleep(600)
    finally:  # told to stop: ``linger`` seconds more before it reports its end
        time.sleep(linger)
"""

STOPS = {
    "sigterm": lambda pid: os.kill(pid, signal.SIGTERM),  # systemd's stop, `kill PID`
    "ctrl-c": lambda pid: os.killpg(pid, signal.SIGINT),  # the terminal's foreground group
    "sighup": lambda pid: os.kill(pid, signal.SIGHUP),  # the terminal closed, SSH dropped
}
SIGNAL_NAMES = {"sigterm": "SIGTERM", "ctrl-c": "SIGINT", "sighup": "SIGHUP"}


def wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert proc.poll() is None, f"the worker ended while waiting for {what}:\n{log.read_text()}"
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.3)
    return found


@pytest.mark.parametrize(
    "stop, server",
    [
        ("sigterm", "stopped"),
        ("ctrl-c", "stopped"),
        ("sigterm", "frozen"),
        ("sigterm", "up"),
        ("sighup", "up"),
        ("sigterm", "up-slow"),  # the run ends 15 s after it is told: past the 10 s grace
    ],  # fmt: skip
)
def test_the_worker_stops_within_seconds_with_its_server_gone(tmp_path, stop, server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from relay.serve import alive, descendants, free_port, prefect_server

    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "stop_probe.py").write_text(textwrap.dedent(PROBE), encoding="utf-8")
    home = tmp_path / "prefect"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RELAY_DATA_DIR": str(tmp_path / "data"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_CLIENT_MAX_RETRIES": "10",
        "PYTHONPATH": os.pathsep.join([str(folder), str(PROJECT_ROOT)]),
    }
    log = tmp_path / "worker.log"
    out = tmp_path / "run.pid"
    served = prefect_server(free_port(), home=home, ui=False)
    api = served.__enter__()
    running = True
    worker = run_pid = None
    frozen: list[int] = []
    try:
        env["PREFECT_API_URL"] = api
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            deployment = client.create_deployment(
                flow_id=client.create_flow_from_name("stop-probe"),
                name="probe",
                entrypoint="stop_probe.probe",
                path=None,
                pull_steps=[],
                work_pool_name=POOL,
                work_queue_name=QUEUE,
                paused=False,
            )
            with log.open("w") as output:
                worker = subprocess.Popen(
                    [RELAY, "worker", "--pool", POOL, "--queue", QUEUE, "--preload", "stop_probe"],
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, as a terminal's job
                )
            # With the server stopped, a run told to stop may give up on its report within the
            # grace (the connection refused at once) or retry for minutes: by chance of timing
            # (CI saw the first). Lingering 30 s, it is there at the grace, so the kill is tested.
            linger = {"up-slow": 15, "stopped": 30}.get(server, 0)
            run = client.create_flow_run_from_deployment(
                deployment, parameters={"out": str(out), "linger": linger}
            )
            run_pid = int(
                wait_for("the run to start", lambda: out.exists() and out.read_text(), worker, log)
            )
            if server == "stopped":
                served.__exit__(None, None, None)
                running = False
            elif server == "frozen":
                theirs = descendants(os.getpid()) - descendants(worker.pid) - {worker.pid}
                frozen = [pid for pid in theirs if with_home(pid, home)]
                assert frozen
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
            STOPS[stop](worker.pid)
            try:
                code = worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the worker still runs 60 s after {stop}:\n{log.read_text()}")
            up = server.startswith("up")
            state = client.read_flow_run(run.id).state if up else None
        text = log.read_text()
        assert code == 0, text
        deadline = time.monotonic() + 10
        while alive(run_pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # the run's parent, the template, reaps it as it ends
        assert not alive(run_pid), text
        signal_name = SIGNAL_NAMES[stop]
        assert f"Stopping on {signal_name}: runs in progress are told to stop" in text, text
        if not up:  # it says which run it killed, and why
            assert "Killed what was left of 1 run(s)" in text, text
            assert f"{run.name} ({run.id})" in text and "is it down?" in text, text
        else:  # the run reported its end itself, however long it took within the deadline
            assert "Killed" not in text, text
            assert state is not None and state.type.value == "CRASHED", (state, text)
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        if run_pid is not None and alive(run_pid):
            os.kill(run_pid, signal.SIGKILL)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        if running:
            served.__exit__(None, None, None)


def with_home(pid: int, home: Path) -> bool:
    """Whether ``pid`` runs with PREFECT_HOME=home (the test's server, and its worker's tree)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
    except OSError:
        return False
    return f"PREFECT_HOME={home}\0".encode() in environ
