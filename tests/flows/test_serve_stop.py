"""Ctrl-C stops everything `relay serve` started, quietly, even while a tick is in its fast lane:
the real command in a process group of its own (as a terminal runs it), with the demo's lane on
and ticks a minute apart, SIGINT to the whole group once the tick's ``fast-lane`` task is running
(as Ctrl-C sends it); then every process of its tree is gone, no process anywhere still runs
with this session's Prefect home (a run that escaped the tree would), and nothing printed a
traceback. The time it took is printed by `relay serve` ("Stopped: ... (N s)"), not asserted.

``test_a_process_orphaned_while_stopping_is_stopped_too`` is the same stop on a tree of its own
making: a process that starts another as it shuts down and exits at once (as a Runner may start
a run while it stops), leaving that one re-parented; it must still be found and stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("relay"))


STOPS = {
    # what Ctrl-C does: SIGINT to the whole foreground group
    "ctrl-c": lambda relay, serving: os.killpg(relay, signal.SIGINT),
    # systemd's stop, `kill PID`: SIGTERM to relay's pid alone
    "sigterm": lambda relay, serving: os.kill(relay, signal.SIGTERM),
    # the terminal closed, the SSH connection dropped: SIGHUP to relay
    "sighup": lambda relay, serving: os.kill(relay, signal.SIGHUP),
    # the serving process (python -m relay.serve) told to stop on its own
    "serving-sigterm": lambda relay, serving: os.kill(serving, signal.SIGTERM),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_every_stop_stops_every_process_quietly_with_a_tick_in_its_fast_lane(tmp_path, stop):
    """Ctrl-C, SIGTERM or SIGHUP to `relay serve`, or SIGTERM to its serving process alone: the
    same stop, every process gone, within seconds (the serving process does not wait for the tick
    in its fast lane: before, it ignored its SIGTERM for 40 s and more). Its outbox is a new run:
    an earlier session's files are gone and the index says which run it holds."""
    from relay.serve import alive, descendants

    port, home, env = serve_env(tmp_path)
    # An earlier session's outbox (`make demo`): a message stored under a send key this session
    # may use again, and the run it was.
    outbox = tmp_path / "data" / "outbox" / "demo"
    outbox.mkdir(parents=True)
    (outbox / "run.json").write_text('{"label": "relay demo --seed 1", "started_at": "x"}')
    (outbox / "0123456789abcdef01234567.json").write_text("{}")
    out = tmp_path / "terminal.txt"
    with out.open("w") as terminal:
        proc = start_serve(port, env, terminal)
        try:
            wait_for_fast_lane(f"http://127.0.0.1:{port}/api", proc, out)
            tree = descendants(proc.pid)
            (serving,) = [pid for pid in tree if b"\0-m\0relay.serve\0" in cmdline(pid)]
            run = json.loads((outbox / "run.json").read_text())
            stopped_at = time.monotonic()
            STOPS[stop](proc.pid, serving)
            code = proc.wait(timeout=120)
            took = time.monotonic() - stopped_at
            while [pid for pid in tree if alive(pid)] and time.monotonic() - stopped_at < 60:
                time.sleep(0.1)  # the serving process alone: relay sees it end as it ends
            took_all = time.monotonic() - stopped_at
        finally:
            left = reap(proc, home)
    text = out.read_text()
    assert code == 0, text
    assert len(tree) >= 3, tree  # the serving process, the Prefect server, the tick's run
    assert not [pid for pid in tree if alive(pid)], text
    assert not left, (left, text)
    assert "Traceback" not in text, text
    assert "stopped by itself" not in text, text  # the server stopped by us, not a crash
    if stop != "serving-sigterm":  # relay itself was told: it says so, in one line
        assert "Stopped: server, sandbox and runs" in text, text
    # Bounded, not waiting on the tick in its fast lane (a minute apart here). The grace is 3 s;
    # the rest is a shared machine's slack.
    assert took < 30 and took_all < 30, (took, took_all, text)
    assert run["label"].startswith("relay serve "), run
    assert not (outbox / "0123456789abcdef01234567.json").exists()


def reap(proc: subprocess.Popen, home: Path) -> list[int]:
    """What a test leaves: `relay serve`'s group killed if it still runs, and every process
    still running with this session's Prefect home (a run that escaped the tree) killed, so
    none is left for the next test; returns those."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = with_home(home)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def test_a_prefect_server_that_dies_stops_relay_serve_saying_so(tmp_path):
    """The Prefect server killed under `relay serve` (the OOM killer, a stray kill -9): nothing
    can run or be seen any more. Before, `relay serve` went on for ever serving nothing, its
    runner printing a screenful of traceback to the terminal; now it says so in one line, stops
    the rest (the tick in its fast lane too) and exits with an error."""
    from relay.serve import alive, descendants

    port, home, env = serve_env(tmp_path)
    out = tmp_path / "terminal.txt"
    with out.open("w") as terminal:
        proc = start_serve(port, env, terminal)
        try:
            wait_for_fast_lane(f"http://127.0.0.1:{port}/api", proc, out)
            tree = descendants(proc.pid)
            (server,) = [pid for pid in tree if b"\0-m\0relay.prefect_server\0" in cmdline(pid)]
            os.kill(server, signal.SIGKILL)
            code = proc.wait(timeout=120)
            deadline = time.monotonic() + 60
            while [pid for pid in tree if alive(pid)] and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            left = reap(proc, home)
    text = out.read_text()
    assert code == 1, text
    assert "The Prefect server stopped by itself (signal SIGKILL" in text, text
    assert "Start relay serve again." in text, text
    assert "Traceback" not in text, text
    assert not [pid for pid in tree if alive(pid)], text
    assert not left, (left, text)


def serve_env(tmp_path: Path) -> tuple[int, Path, dict[str, str]]:
    """A port, a Prefect home and the environment of a `relay serve` of the demo in tmp_path."""
    from relay.serve import free_port

    clinics = tmp_path / "clinics"
    shutil.copytree(PROJECT_ROOT / "clinics" / "demo", clinics / "demo")
    config = clinics / "demo" / "clinic.yaml"
    text = config.read_text(encoding="utf-8")
    assert "fast_lane:\n  enabled: true" in text  # the demo's lane is on: the case to prove
    # The demo's unsubscribe link port may be taken on a shared machine: a free one.
    config.write_text(text.replace("127.0.0.1:8765", f"127.0.0.1:{free_port()}"), encoding="utf-8")
    home = tmp_path / "prefect"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "RELAY_CLINICS_DIR": str(clinics),
        "RELAY_DATA_DIR": str(tmp_path / "data"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    env.pop("PREFECT_API_URL", None)
    return free_port(), home, env


def start_serve(port: int, env: dict[str, str], terminal) -> subprocess.Popen:
    """`relay serve` of the demo, as a terminal runs it, a tick a minute."""
    return subprocess.Popen(
        [RELAY, "serve", "--port", str(port), "--every", "1", "--patients", "50"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=terminal,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_for_fast_lane(api: str, proc: subprocess.Popen, out: Path, timeout: float = 300):
    """Until the served tick's run is in its fast lane (its ``fast-lane`` task running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        try:
            runs = httpx.post(
                f"{api}/task_runs/filter",
                json={"task_runs": {"state": {"type": {"any_": ["RUNNING"]}}}},
                timeout=5,
            ).json()
        except (httpx.HTTPError, ValueError):
            runs = []
        if any(r["name"] == "fast-lane" for r in runs):
            return
        time.sleep(0.5)
    pytest.fail(f"no tick reached its fast lane: {out.read_text()}")


def with_home(home: Path) -> list[int]:
    """Processes of ours, anywhere, still running with PREFECT_HOME=home (a server or a run)."""
    wanted = f"PREFECT_HOME={home}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes() + b"\0":
                    found.append(int(entry.name))
            except OSError:
                continue
    from relay.serve import alive

    return [pid for pid in found if alive(pid)]


# A process that, told to stop, starts one more (which ignores SIGTERM) and exits at once.
TREE = """
import os, signal, subprocess, sys, time
out = sys.argv[1]
def stop(*_):
    late = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(out + ".late", "w") as f:
        f.write(str(late.pid))
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
with open(out, "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""

SUPERVISOR = """
import sys
from pathlib import Path
from relay.serve import supervise_command
sys.exit(supervise_command([sys.executable, "-c", sys.argv[1], sys.argv[2]], print, Path(sys.argv[3])))
"""


def start_supervisor(tmp_path: Path, tree: str, **popen) -> subprocess.Popen:
    pids, out = tmp_path / "pids", tmp_path / "out.txt"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, textwrap.dedent(tree), str(pids), str(tmp_path / "log")],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=out.open("w"),
        start_new_session=True,
        **popen,
    )
    deadline = time.monotonic() + 60
    while not pids.exists() or not pids.read_text():
        assert supervisor.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return supervisor


SUPERVISOR_STOPS = {
    "ctrl-c": lambda pid: os.killpg(pid, signal.SIGINT),
    "sigterm": lambda pid: os.kill(pid, signal.SIGTERM),
    "sighup": lambda pid: os.kill(pid, signal.SIGHUP),
}


@pytest.mark.parametrize("stop", list(SUPERVISOR_STOPS))
def test_a_process_orphaned_while_stopping_is_stopped_too(tmp_path, stop):
    """Every stop signal to the supervisor alone (not its group, as `kill` sends it) stops the
    tree the way Ctrl-C does, with the same line."""
    from relay.serve import alive

    late = None
    supervisor = start_supervisor(tmp_path, TREE)
    try:
        SUPERVISOR_STOPS[stop](supervisor.pid)
        assert supervisor.wait(timeout=60) == 0, (tmp_path / "out.txt").read_text()
        late = int((tmp_path / "pids.late").read_text())
        assert "Stopped: server, sandbox and runs (" in (tmp_path / "out.txt").read_text()
        assert not alive(late)  # found below the supervisor (re-parented there) and killed
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        if late is not None and alive(late):
            os.kill(late, signal.SIGKILL)
        first = int((tmp_path / "pids").read_text())
        if alive(first):  # a supervisor that left it running (the failure this test is for)
            os.kill(first, signal.SIGKILL)


# A process that stops at once on SIGTERM.
SLEEPER = """
import sys, time
with open(sys.argv[1], "w") as f:
    f.write(__import__("os").getpid().__str__())
time.sleep(600)
"""


def test_the_command_does_not_outlive_its_supervisor_killed(tmp_path):
    """The supervisor SIGKILLed (nothing of it runs to stop anything): its command, in a session
    of its own, is told to stop all the same (PR_SET_PDEATHSIG)."""
    from relay.serve import alive

    supervisor = start_supervisor(tmp_path, SLEEPER)
    child = int((tmp_path / "pids").read_text())
    try:
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_nohup_keeps_it_running_when_the_terminal_goes(tmp_path):
    """Started with SIGHUP ignored (`nohup relay serve`): a hangup changes nothing; SIGTERM
    still stops it."""
    from relay.serve import alive

    supervisor = start_supervisor(
        tmp_path, SLEEPER, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
    )
    child = int((tmp_path / "pids").read_text())
    try:
        os.kill(supervisor.pid, signal.SIGHUP)
        time.sleep(1)
        assert supervisor.poll() is None and alive(child)
        os.kill(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert not alive(child)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        if alive(child):
            os.kill(child, signal.SIGKILL)
