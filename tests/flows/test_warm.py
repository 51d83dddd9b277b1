"""`relay worker` starts each run warm (relay/warm.py, relay/worker.py), on a real Prefect server,
and each run is still a run of its own: a fresh process forked from the template every time,
with the environment Prefect gives a run (API URL, run id, heartbeat, the job's env) and nothing
of the worker's (no socket, no thread); killing it marks it Crashed and the next run works;
code changed on disk is picked up after a restart (a new template), not before; a cancel ends
its process. `prefect.serve` (relay serve's and the benchmarks' Runner) forks its runs from the
template too.

One worker serves the module's runs (each test checks one thing on it); runs that must be
stopped sleep together, so the cost is one worker start and one Runner start. The runs are of a
probe flow written here into its own folder (on the worker's PYTHONPATH and
preloaded with --preload, as an operator's own flows would be), deployed on a pool of its own
(``warm``) so no other test's worker takes them. Nothing is timed.
"""

from __future__ import annotations

import json
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
POOL, QUEUE = "warm", "machine-warm"

PROBE = """
import json, os, sys, threading, time
from pathlib import Path

from prefect import flow

VERSION = {version}
_runs = []  # module state: a run that saw another run's entry here shared its process


@flow(name="warm-probe")
def probe(out: str, sleep: float = 0) -> None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    fds = {{}}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{{fd}}")
        except OSError:
            pass
    _runs.append(os.getpid())
    Path(out).write_text(json.dumps({{
        "pid": os.getpid(), "ppid": os.getppid(), "version": VERSION, "runs": list(_runs),
        "threads_at_import": THREADS_AT_IMPORT, "fds": fds,
        "api_url": settings.api.url, "heartbeat": settings.flows.heartbeat_frequency,
        "flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
        "job_env": os.environ.get("RELAY_PROBE_JOB"), "cwd": os.getcwd(),
        "preloaded": "flows.tick" in sys.modules, "numpy": "numpy" in sys.modules,
        "os_threads_at_import": OS_THREADS_AT_IMPORT, "session": os.getsid(0),
    }}))
    time.sleep(sleep)


THREADS_AT_IMPORT = [t.name for t in threading.enumerate()]
OS_THREADS_AT_IMPORT = len(os.listdir("/proc/self/task"))  # OpenBLAS's would show here
"""


def write_probe(folder: Path, version: int) -> None:
    (folder / "warm_probe.py").write_text(
        textwrap.dedent(PROBE.format(version=version)), encoding="utf-8"
    )
    for cached in (folder / "__pycache__").glob("warm_probe*"):
        cached.unlink()


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    write_probe(folder, 1)
    return folder


@pytest.fixture(scope="module")
def probe_deployment(client):
    """The probe on pool ``warm``, queue ``machine-warm``, as relay deploy makes deployments:
    a module-path entrypoint, no pull step, its env in the job variables."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(POOL)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    return client.create_deployment(
        flow_id=client.create_flow_from_name("warm-probe"),
        name="probe",
        entrypoint="warm_probe.probe",
        path=None,
        pull_steps=[],
        work_pool_name=POOL,
        work_queue_name=QUEUE,
        job_variables={
            "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "RELAY_PROBE_JOB": "from-job"}
        },
        paused=False,
    )


class Worker:
    """`relay worker` as an operator starts it; stopped with SIGTERM."""

    def __init__(self, env: dict, folder: Path, log: Path) -> None:
        self.out = log.open("a")
        self.proc = subprocess.Popen(
            [RELAY, "worker", "--pool", POOL, "--queue", QUEUE, "--preload", "warm_probe"],
            env={
                **env,
                "PYTHONPATH": os.pathsep.join([str(folder), str(PROJECT_ROOT)]),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
            },
            cwd=PROJECT_ROOT,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def worker(prefect_server, probe_folder, probe_deployment, tmp_path_factory):
    running = Worker(prefect_server, probe_folder, tmp_path_factory.mktemp("worker") / "log")
    yield running
    running.stop()


def run_probe(client, deployment, out: Path, sleep: float = 0):
    return client.create_flow_run_from_deployment(
        deployment, parameters={"out": str(out), "sleep": sleep}
    ).id


def wait_final(client, run_id, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (run := client.read_flow_run(run_id)).state.is_final():
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} not final after {timeout:.0f}s: {run.state.name}")
        time.sleep(0.5)
    return run


def wait_for(what: str, check, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)
    return found


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_each_run_is_a_fresh_process_forked_warm_with_the_runs_environment(
    client, prefect_server, probe_deployment, worker, tmp_path
):
    from relay.serve import descendants

    records = []
    for n in range(2):
        out = tmp_path / f"run{n}.json"
        run = wait_final(client, run_probe(client, probe_deployment, out))
        assert run.state.is_completed(), (run.state.message, worker.out.name)
        records.append((run, json.loads(out.read_text())))
    (first_run, first), (second_run, second) = records

    # Its own process each time, forked from the template (a child of the worker), never the
    # worker itself, and with no module state of an earlier run.
    assert first["pid"] != second["pid"]
    template = first["ppid"]
    assert second["ppid"] == template and template != worker.proc.pid
    assert template in descendants(worker.proc.pid)
    assert first["runs"] == [first["pid"]] and second["runs"] == [second["pid"]]
    # In a session of its own, as Prefect's worker starts a run: where Linux shares the CPU
    # between sessions first (autogroup), busy programs elsewhere on the machine take their
    # sessions' share, not a share per thread of the run's (docs/scaling.md, bench/models.py).
    assert first["session"] == first["pid"] and second["session"] == second["pid"]
    assert first["preloaded"]  # warm: the template had imported the flows
    assert first["threads_at_import"] == ["MainThread"]
    assert first["numpy"] and first["os_threads_at_import"] == 1  # preloaded, its BLAS idle

    # What Prefect gives a run: the server, the run's id, the job's env (heartbeat included).
    assert first["api_url"] == prefect_server["PREFECT_API_URL"]
    assert first["flow_run_id"] == str(first_run.id)
    assert second["flow_run_id"] == str(second_run.id)
    assert first["job_env"] == "from-job" and first["heartbeat"] == 30
    assert first["cwd"] != str(PROJECT_ROOT)  # a fresh temporary directory, as Prefect's

    # Nothing of the worker's: none of its sockets (API client, control channel) in the run.
    shared = socket_inodes(worker.proc.pid) & set(first["fds"].values())
    assert not shared


def test_a_killed_run_is_crashed_a_cancelled_one_ends_and_the_next_run_works(
    client, prefect_server, probe_folder, probe_deployment, worker, tmp_path
):
    from prefect.states import Cancelling

    from relay.serve import alive

    outs = {name: tmp_path / f"{name}.json" for name in ("killed", "cancelled")}
    runs = {name: run_probe(client, probe_deployment, out, sleep=600) for name, out in outs.items()}
    records = {
        name: wait_for(
            f"the {name} run to start", lambda o=out: o.exists() and json.loads(o.read_text())
        )
        for name, out in outs.items()
    }
    # Its heartbeats come from the run itself (the lost-run automation of relay/alerts.py).
    wait_for("a heartbeat of the run", lambda: heartbeats(prefect_server, runs["killed"]))
    os.kill(records["killed"]["pid"], signal.SIGKILL)
    client.set_flow_run_state(runs["cancelled"], Cancelling(), force=True)  # the UI's Cancel
    assert wait_final(client, runs["killed"]).state.type.value == "CRASHED"
    assert wait_final(client, runs["cancelled"]).state.type.value == "CANCELLED"
    wait_for("the cancelled run's process to end", lambda: not alive(records["cancelled"]["pid"]))
    assert worker.proc.poll() is None  # the worker lives on

    # The next run works, from the same template, and runs the code the template imported:
    # code changed on disk since is picked up by a restart (the Runner's test below), not here.
    write_probe(probe_folder, 2)
    out = tmp_path / "next.json"
    run = wait_final(client, run_probe(client, probe_deployment, out))
    assert run.state.is_completed()
    record = json.loads(out.read_text())
    assert record["ppid"] == records["killed"]["ppid"] and record["version"] == 1


def heartbeats(env: dict, run_id) -> list[dict]:
    import httpx

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


SERVE = """
import relay
from relay import warm
assert warm.install(["warm_probe"])
from prefect import serve
from warm_probe import probe
serve(probe.to_deployment(name="served"), print_starting_message=False)  # as relay serve does
"""


def test_prefect_serve_forks_each_run_from_the_template_too(
    client, prefect_server, probe_folder, tmp_path
):
    """relay serve's and the benchmarks' Runner: the same warm start, the same guarantees; its
    template, started now, imports the code on disk now (version 2)."""
    from relay.serve import descendants

    write_probe(probe_folder, 2)

    log = (tmp_path / "serve.log").open("w")
    served = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        env={
            **prefect_server,
            "PYTHONPATH": os.pathsep.join([str(probe_folder), str(PROJECT_ROOT)]),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        },
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deployment = wait_for(
            "the served deployment",
            lambda: next((d.id for d in client.read_deployments() if d.name == "served"), None),
        )
        out = tmp_path / "served.json"
        run = wait_final(client, run_probe(client, deployment, out))
        assert run.state.is_completed()
        first = json.loads(out.read_text())
        assert first["ppid"] != served.pid and first["ppid"] in descendants(served.pid)
        assert first["preloaded"]  # (the Runner passes the run in its payload, not in env)
        assert first["api_url"] == prefect_server["PREFECT_API_URL"]
        assert first["version"] == 2  # a restarted serving process runs the code on disk

        out = tmp_path / "served-killed.json"
        killed = run_probe(client, deployment, out, sleep=600)
        record = wait_for("the run to start", lambda: out.exists() and json.loads(out.read_text()))
        assert record["pid"] != first["pid"] and record["runs"] == [record["pid"]]
        os.kill(record["pid"], signal.SIGKILL)
        assert wait_final(client, killed).state.type.value == "CRASHED"
    finally:
        write_probe(probe_folder, 1)
        served.send_signal(signal.SIGINT)
        try:
            served.wait(timeout=60)
        except subprocess.TimeoutExpired:
            served.kill()
            served.wait()
        log.close()
