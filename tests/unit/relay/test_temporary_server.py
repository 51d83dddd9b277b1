"""A one-shot command without PREFECT_API_URL (`relay sync`, `relay feedback`, `relay campaign
send`, `relay demo`) runs its flow on a temporary Prefect server, a child process that Prefect
stops at exit. Killed with SIGKILL, the command left that server running, for good, on its port
(found by the issue 14 re-check). ``flowrun.prepare`` ties the server to the command's process:
it gets SIGTERM when the command dies (relay/tree.py's ``_die_with``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
import relay
from relay.cli import flowrun
flowrun.prepare()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start()
print(server.server_process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def _command(tmp_path, monkeypatch, **popen):
    """A command started as the SCRIPT above, and its temporary server's pid; both killed at
    the end whatever happened."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    root = str(Path(__file__).resolve().parents[3])
    command = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(root=root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
        **popen,
    )
    server = 0
    try:
        assert command.stdout is not None
        server = int(command.stdout.readline())
        assert _alive(server)
        yield command, server
    finally:
        command.kill()
        if server and _alive(server):
            os.kill(server, signal.SIGKILL)


def _gone_within_a_minute(pid: int) -> bool:
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl: Linux only")
def test_a_killed_command_takes_its_temporary_server_with_it(tmp_path, monkeypatch):
    with _command(tmp_path, monkeypatch) as (command, server):
        command.send_signal(signal.SIGKILL)
        command.wait()
        assert _gone_within_a_minute(server), (
            "the temporary server outlived the command killed by SIGKILL"
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl: Linux only")
def test_ctrl_c_at_the_terminal_is_the_commands_not_its_temporary_servers(tmp_path, monkeypatch):
    """The terminal's Ctrl-C goes to its whole foreground process group. The temporary server,
    in the command's group, died of it at once while the command, interrupted in a flow, reported
    the crash to it and retried for minutes (`make demo` stopped in step 5 ran on past 60 s, its
    log filling with events it could not send). The server is in a session of its own: the
    command stops, and its server with it."""
    # as a terminal starts a foreground command: a process group of its own
    with _command(tmp_path, monkeypatch, start_new_session=True) as (command, server):
        assert os.getpgid(server) != os.getpgid(command.pid)
        os.killpg(command.pid, signal.SIGINT)  # Ctrl-C
        command.wait(timeout=60)
        assert _gone_within_a_minute(server), "the temporary server outlived its command"
