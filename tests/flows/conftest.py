"""A real Prefect server for the behaviour that is Prefect's (deployments, schedules, concurrency).

Started once per session on a free loopback port with its own PREFECT_HOME, as an operator would
run it (`prefect server start`), not the in-process test harness: what we test is how our
deployments and flows behave on a server. Deployments are made with `relay deploy` from the test
clinics' folder, as docs/scaling.md tells an operator, and runs are executed by a real process
worker on the test machine's queue (``machine-test``).

The sandbox Cliniko servers run in this process (threads); the flow runs reach them over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """Yield an environment dict pointing at a fresh Prefect server; the server stops at the end."""
    from relay.serve import free_port, prefect_server

    home = tmp_path_factory.mktemp("prefect-server-home")
    data = tmp_path_factory.mktemp("relay-data")
    clinics = tmp_path_factory.mktemp("clinics")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "RELAY_DATA_DIR": str(data),
        "RELAY_CLINICS_DIR": str(clinics),  # the test clinics, by name, as an operator's own
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick runs up within a second, not ten
        # A busy SQLite server answers 503 "database is locked" for a while: wait it out longer
        # than the default 5 retries before a run fails on it.
        "PREFECT_CLIENT_MAX_RETRIES": "10",
    }
    with prefect_server(free_port(), home=home, ui=False) as api:
        env["PREFECT_API_URL"] = api
        yield env


@pytest.fixture
def prefect_cli(prefect_server):
    """Run the prefect CLI from the project root against the test server; fail with its output."""
    return lambda *args, timeout=120: _prefect_cli(prefect_server, *args, timeout=timeout)


def _prefect_cli(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="session")
def client(prefect_server):
    """A Prefect client in this process, talking to the test server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
        get_client(sync_client=True) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def sandboxes():
    """Two sandbox Cliniko accounts on 127.0.0.1: 'a' and 'b' (each its own server and key)."""
    from sandbox.cliniko import SandboxClinic, SandboxServer

    start = datetime.now(UTC).replace(microsecond=0)
    clinics = {
        name: SandboxClinic.generate(
            seed=seed, patients=150, start=start, appointments_per_patient=6
        )
        for name, seed in (("a", 11), ("b", 12))
    }
    with (
        SandboxServer(clinics["a"], rate_limit=None) as a,
        SandboxServer(clinics["b"], rate_limit=None) as b,
    ):
        yield {"a": a, "b": b}


def clinic_yaml(folder: Path, name: str, account: str, extra: str = "") -> Path:
    """A clinic configuration with its own database and Cliniko block, like an operator's."""
    path = folder / name / "clinic.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"clinic: {name}\nname: Test clinic {name}\ndatabase: {folder / name / 'clinic.duckdb'}\n"
        f"cliniko:\n  account: {account}\n{extra}",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def clinics(prefect_server, client, sandboxes):
    """Test clinics, each with a ClinikoAccount block saved on the server:
    alpha and beta (good keys), broken (a key Cliniko refuses), stale (its sync fails too, and
    its last good data is an hour old: see make_stale)."""
    from pydantic import SecretStr

    from blocks.cliniko import ClinikoAccount

    folder = Path(prefect_server["RELAY_CLINICS_DIR"])
    accounts = {
        "alpha": (sandboxes["a"].clinic.api_key, sandboxes["a"].base_url),
        "beta": (sandboxes["b"].clinic.api_key, sandboxes["b"].base_url),
        "broken": ("sbx" + "0" * 32 + "-au1", sandboxes["b"].base_url),
        "stale": ("sbx" + "1" * 32 + "-au1", sandboxes["a"].base_url),
    }
    paths = {}
    for name, (key, url) in accounts.items():
        ClinikoAccount(
            api_key=SecretStr(key), contact_email="tests@example.com", base_url=url,
            requests_per_minute=100000,
        ).save(f"{name}-cliniko", overwrite=True)  # fmt: skip
        paths[name] = clinic_yaml(
            folder, name, f"{name}-cliniko", WELCOME if name == "alpha" else ""
        )
    return paths


# A welcome email for every booking: alpha's ledger rows are then exactly its new bookings.
WELCOME = """triggers:
  - name: welcome
    enabled: true
    event: appointment_booked
    timing: immediately
    channel: email
    template: welcome
    purpose: transactional
"""


MACHINE = "test"  # the machine the test clinics are deployed to (relay deploy --home)
RELAY = str(Path(sys.executable).with_name("relay"))


@pytest.fixture(scope="session")
def deployed(prefect_server, clinics, client):
    """`relay deploy` of the test clinics, as documented; their schedules then switched off (and
    any run they already scheduled deleted) so that the tests' runs are the only ones."""
    env = prefect_server
    result = subprocess.run(
        [RELAY, "deploy", "--home", MACHINE],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"relay deploy failed:\n{result.stdout}\n{result.stderr}"
    unschedule(client)
    return env


def unschedule(client) -> None:
    """Every deployment's schedules inactive, and the runs they scheduled deleted."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    for deployment in client.read_deployments():
        for schedule in deployment.schedules:
            client.update_deployment_schedule(  # (parameters again: the server resets them)
                deployment.id, schedule.id, active=False, parameters=schedule.parameters
            )
    scheduled = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        )
    )
    for run in scheduled:  # made by the scheduler before the schedules went off
        client.delete_flow_run(run.id)


@pytest.fixture(scope="session")
def worker(deployed, tmp_path_factory):
    """A process worker on the 'local' pool; each flow run is its own subprocess."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                PREFECT,
                "worker",
                "start",
                "--pool",
                "local",
                "--limit",
                "6",
                "--work-queue",
                f"machine-{MACHINE}",
            ],  # fmt: skip
            env=deployed,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            # The worker ignores SIGTERM for a long time; SIGINT stops it (prefect.md §2).
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
