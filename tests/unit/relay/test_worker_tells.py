"""relay/worker.py's ``Stopping`` tells each run itself that its worker is stopping, whatever
Prefect's teardown of the worker does: here a worker whose teardown never tells its runs (the
cancel of its task does nothing). A run is a process in a session of its own, as the worker's
are; nothing else below this process is looked at (``runs_below`` is emptied)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

# A run: says it is ready, ends cleanly on SIGTERM (told: "told"), or by itself when its stop
# file appears (a run in its fast lane ending by itself: "lane").
RUN = """
import os, signal, sys, time
ready, said, stop = sys.argv[1:4]
def told(*_):
    open(said, "w").write("told")
    sys.exit(0)
signal.signal(signal.SIGTERM, told)
open(ready, "w").write("ready")
for _ in range(6000):
    if os.path.exists(stop):
        open(said, "w").write("lane")
        sys.exit(0)
    time.sleep(0.1)
"""


class _Untold:
    """The worker's task, cancelled on the stop signal: its teardown tells no run."""

    def cancel(self) -> None:
        pass


@pytest.fixture
def stop_runs(tmp_path, monkeypatch):
    from relay import worker

    monkeypatch.setattr(worker, "runs_below", lambda pid: set())
    monkeypatch.setattr(worker, "WORKER_GRACE", 1.0)
    started: list[subprocess.Popen] = []

    def run(in_lane: bool):
        stop = tmp_path / "run-stop"
        if in_lane:
            (tmp_path / "run-stop.lane").touch()
        ready, said = tmp_path / "ready", tmp_path / "said"
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN, str(ready), str(said), str(stop)],
            start_new_session=True,  # as the worker's runs
        )
        started.append(proc)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        said_ = []
        ended = threading.Event()

        class Quiet(worker.Stopping):
            def _exit(self, code: int) -> None:  # not this test process
                ended.set()

        stopping = Quiet(
            said_.append,
            running={proc.pid: ("probe (1)", str(stop) + ".lane")},
            grace=60.0,  # never reached: the run is told long before
            deadline=0.0,
        )
        stopping._signalled(signal.SIGHUP, _Untold())
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run was not told to stop: {said_}")
        assert ended.wait(30), said_
        return code, said.read_text(), said_

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_run_is_told_to_stop_even_when_the_workers_teardown_does_not(stop_runs):
    code, said, messages = stop_runs(in_lane=False)
    assert (code, said) == (0, "told"), messages
    assert not any("Killed" in text for text in messages), messages


def test_a_run_in_its_lane_is_told_by_its_stop_file_and_ends_by_itself(stop_runs):
    code, said, messages = stop_runs(in_lane=True)
    assert (code, said) == (0, "lane"), messages
    assert not any("Killed" in text for text in messages), messages
