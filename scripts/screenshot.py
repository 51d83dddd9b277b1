"""Screenshots of the Prefect UI for the README, from a real run (not part of CI).

Starts ``relay serve`` (its own Prefect home and data folder in a temp directory, so nothing of
yours is touched), waits for a demo tick to complete with its summary artifact, then has headless
Chromium photograph the deployments page, the tick's run, its Logs tab and its summary artifact,
the owner's weekly report (its deployment run once, then its artifact) and the local outbox's
index into docs/. Only the sandbox's generated patients exist there; the pages shot show counts,
send keys and file names.

    .venv/bin/python scripts/screenshot.py        # needs chromium (Debian: apt-get install chromium)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from relay.serve import _die_with_parent, free_port  # noqa: E402

DOCS = PROJECT_ROOT / "docs"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    sys.exit("No Chromium found: apt-get install chromium (Debian), then run this again.")


def shoot(browser: str, url: str, out: Path, height: int = 900) -> None:
    subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size=1440,{height}", "--virtual-time-budget=15000",
            f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    print(f"wrote {out.relative_to(PROJECT_ROOT)}")


def wait_for_tick(api: str, timeout: float = 600) -> tuple[dict, dict]:
    """The first completed tick run of the demo clinic, and its summary artifact."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = httpx.post(
                f"{api}/flow_runs/filter",
                json={
                    "flow_runs": {
                        "name": {"any_": ["tick-demo"]},
                        "state": {"type": {"any_": ["COMPLETED"]}},
                    }
                },
                timeout=10,
            ).json()
            for run in runs:
                artifacts = httpx.post(
                    f"{api}/artifacts/filter",
                    json={
                        "artifacts": {
                            "flow_run_id": {"any_": [run["id"]]},
                            "key": {"like_": "tick-"},
                        }
                    },
                    timeout=10,
                ).json()
                if artifacts:
                    return run, artifacts[0]
        except httpx.HTTPError:
            pass
        time.sleep(3)
    sys.exit("No tick completed in time; run `relay serve` by hand and look at its output.")


def run_report(api: str, timeout: float = 300) -> dict:
    """Run the demo's owner-report deployment once and return its artifact when it is written."""
    deployment = httpx.get(f"{api}/deployments/name/owner-report/demo-report", timeout=10)
    deployment.raise_for_status()
    httpx.post(
        f"{api}/deployments/{deployment.json()['id']}/create_flow_run", json={}, timeout=10
    ).raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["relay-report-demo"]}}},
            timeout=10,
        ).json()
        if found:
            return found[0]
        time.sleep(3)
    sys.exit("The owner report did not complete in time; look at its run in the UI.")


def main() -> None:
    browser = chromium()
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="relay-screenshot-") as tmp:
        env = {
            **os.environ,
            "PREFECT_HOME": f"{tmp}/prefect",
            "RELAY_DATA_DIR": f"{tmp}/data",
            "PREFECT_LOGGING_LEVEL": "ERROR",
        }
        env.pop("PREFECT_API_URL", None)

        def child() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _die_with_parent()

        relay = str(Path(sys.executable).with_name("relay"))
        serve = subprocess.Popen(
            [relay, "serve", "--port", str(port), "--every", "1", "--patients", "300"],
            env=env, cwd=PROJECT_ROOT, preexec_fn=child,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            run, artifact = wait_for_tick(f"{ui}/api")
            time.sleep(5)  # let the UI's own caches catch up
            shoot(browser, f"{ui}/deployments", DOCS / "ui-deployments.png", height=700)
            shoot(browser, f"{ui}/runs/flow-run/{run['id']}", DOCS / "ui-tick-run.png")
            shoot(
                browser,
                f"{ui}/artifacts/artifact/{artifact['id']}",
                DOCS / "ui-tick-summary.png",
                height=1400,
            )
            # the Logs tab of the tick's planning step: its INFO lines, a count per trigger
            plan = httpx.post(
                f"{ui}/api/flow_runs/filter",
                json={"flow_runs": {"name": {"any_": ["plan-demo"]}}, "limit": 1},
                timeout=10,
            ).json()
            shoot(
                browser,
                f"{ui}/runs/flow-run/{(plan[0] if plan else run)['id']}?tab=Logs",
                DOCS / "ui-tick-logs.png",
                height=1000,
            )
            report = run_report(f"{ui}/api")
            time.sleep(3)
            shoot(
                browser,
                f"{ui}/artifacts/artifact/{report['id']}",
                DOCS / "ui-owner-report.png",
                height=1400,
            )
            index = Path(tmp) / "data" / "outbox" / "demo" / "index.html"
            shoot(browser, index.as_uri(), DOCS / "outbox-index.png", height=800)
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()


if __name__ == "__main__":
    main()
