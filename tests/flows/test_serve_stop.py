"""Ctrl-C stops everything `relay serve` started, quietly: the real command in a process group of
its own (as a terminal runs it), SIGINT to the whole group once the first tick is running (as
Ctrl-C sends it), then every process of its tree is gone and nothing printed a traceback. The
time it took is printed by `relay serve` ("Stopped: ... (N s)"), not asserted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("relay"))


def test_ctrl_c_stops_every_process_quietly(tmp_path):
    from relay.serve import alive, descendants, free_port

    clinics = tmp_path / "clinics"
    shutil.copytree(PROJECT_ROOT / "clinics" / "demo", clinics / "demo")
    config = clinics / "demo" / "clinic.yaml"
    # The demo's unsubscribe link port may be taken on a shared machine: a free one.
    config.write_text(
        config.read_text(encoding="utf-8").replace("127.0.0.1:8765", f"127.0.0.1:{free_port()}"),
        encoding="utf-8",
    )
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "RELAY_CLINICS_DIR": str(clinics),
        "RELAY_DATA_DIR": str(tmp_path / "data"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "terminal.txt"
    with out.open("w") as terminal:
        proc = subprocess.Popen(
            [RELAY, "serve", "--port", str(port), "--every", "1", "--patients", "50"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=terminal,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
        try:
            wait_for_running_tick(f"http://127.0.0.1:{port}/api", proc, out)
            tree = descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = out.read_text()
    assert code == 0, text
    assert len(tree) >= 3, tree  # the serving process, the Prefect server, the tick's run
    assert not [pid for pid in tree if alive(pid)], text
    assert "Traceback" not in text, text
    assert "Stopped: server, sandbox and runs" in text, text


def wait_for_running_tick(api: str, proc: subprocess.Popen, out: Path, timeout: float = 300):
    """Until the served tick's first run is Running (its own process, below the runner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        try:
            runs = httpx.post(
                f"{api}/flow_runs/filter",
                json={"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}},
                timeout=5,
            ).json()
        except (httpx.HTTPError, ValueError):
            runs = []
        if any(r["name"] == "tick-demo" for r in runs):
            return
        time.sleep(0.5)
    pytest.fail(f"no tick ran: {out.read_text()}")
