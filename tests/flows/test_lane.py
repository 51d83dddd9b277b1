"""The fast lane on a real Prefect server: a tick deployment's run, picked up by a real worker,
stays on after its summary and welcomes a booking made then, before the run ends; the next full
tick sends nothing again (the same send keys, the same ledger). Deployed with `relay deploy`
like every test clinic (tests/flows/conftest.py)."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.flows.conftest import MACHINE, PROJECT_ROOT, RELAY, WELCOME, clinic_yaml, unschedule
from tests.flows.test_deployments import run_deployment, wait_for

pytestmark = [pytest.mark.prefect]

LANE = "fast_lane:\n  enabled: true\n  every_seconds: 2\n"
SCHEDULE = "schedule:\n  tick_every_minutes: 3\n"  # a run's lane ends ~3 min after it starts


@pytest.fixture(scope="module")
def lane_clinic(prefect_server, client, worker):
    """Clinic 'lane' (its own sandbox, its clock still: only the test's bookings), deployed."""
    from pydantic import SecretStr

    from blocks.cliniko import ClinikoAccount
    from sandbox.cliniko import SandboxClinic, SandboxServer

    sandbox = SandboxClinic.generate(seed=16, patients=120, start=datetime.now(UTC))
    with SandboxServer(sandbox, rate_limit=None) as server:
        ClinikoAccount(
            api_key=SecretStr(sandbox.api_key), contact_email="tests@example.com",
            base_url=server.base_url, requests_per_minute=100000,
        ).save("lane-cliniko", overwrite=True)  # fmt: skip
        folder = Path(prefect_server["RELAY_CLINICS_DIR"])
        path = clinic_yaml(folder, "lane", "lane-cliniko", WELCOME + LANE + SCHEDULE)
        result = subprocess.run(
            [RELAY, "deploy", "--home", MACHINE],
            env=prefect_server, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, f"relay deploy failed:\n{result.stdout}\n{result.stderr}"
        unschedule(client)
        yield server, path


def summary_published(client, run_id) -> bool:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    )
    return any(a.key == "tick-lane" for a in found)


def book(sandbox, n: int) -> list[int]:
    from sandbox.cliniko.clinic import _Changes

    table = sandbox.clinic.tables["individual_appointments"]
    with sandbox.clinic.lock:
        before = set(table.rows)
        changes = _Changes(sandbox.clinic)
        for _ in range(n):
            changes.bookings(int(time.time()))
        return sorted(set(table.rows) - before)


def test_the_tick_welcomes_a_booking_in_its_fast_lane_and_the_next_tick_sends_nothing_again(
    client, worker, lane_clinic, prefect_server
):
    from tasks.providers.outbox import list_messages
    from tasks.warehouse import open_db

    server, path = lane_clinic
    outbox = Path(prefect_server["RELAY_DATA_DIR"]) / "outbox" / "lane"
    run_id = run_deployment(client, "clinic-tick/lane-tick")
    deadline = time.monotonic() + 150
    while not summary_published(client, run_id):  # the full pass is done: the lane is on
        run = client.read_flow_run(run_id)
        assert not run.state.is_final(), f"the tick ended before its lane: {run.state.name}"
        assert time.monotonic() < deadline, "no tick summary after 150 s"
        time.sleep(1)
    time.sleep(1.1)  # bookings from the second after the trigger went live
    booked = book(server, 6)
    # Once the lane has sent, pausing the deployment ends it (its watch asks every 10 s) instead
    # of waiting out the rest of its window; resumed before the next tick.
    deadline = time.monotonic() + 150
    while not list_messages(outbox):
        run = client.read_flow_run(run_id)
        assert not run.state.is_final(), f"the tick ended before its lane sent: {run.state.name}"
        assert time.monotonic() < deadline, "the lane sent nothing within 150 s of the bookings"
        time.sleep(1)
    time.sleep(5)  # the lane's next polls: any booking it was still sending
    deployment = client.read_deployment_by_name("clinic-tick/lane-tick")
    client.pause_deployment(deployment.id)
    try:
        (first,) = wait_for(client, [run_id], timeout=120, worker_log=worker)
    finally:
        client.resume_deployment(deployment.id)
    assert first.state.is_completed(), first.state.message
    by_lane = {m["send_key"]: m for m in list_messages(outbox)}
    assert by_lane, "the lane welcomed the bookings made after the tick's summary"
    assert {int(k.rsplit(":", 1)[1]) for k in by_lane} <= set(booked)

    # The next tick, lane off: a full pass over the same bookings sends none of them again.
    path.write_text(path.read_text().replace("enabled: true\n  every", "enabled: false\n  every"))
    (second,) = wait_for(client, [run_deployment(client, "clinic-tick/lane-tick")], timeout=240)
    assert second.state.is_completed(), second.state.message
    after = {m["send_key"]: m for m in list_messages(outbox)}
    assert {k: after[k]["stem"] for k in by_lane} == {k: m["stem"] for k, m in by_lane.items()}
    with open_db(path.parent / "clinic.duckdb", read_only=True) as con:
        rows = con.execute(
            "SELECT send_key, status, sent_at FROM state.messages "
            "WHERE send_key IN (SELECT unnest(?))",
            [list(by_lane)],
        ).fetchall()
    assert sorted(k for k, _, _ in rows) == sorted(by_lane)  # one ledger row per key
    assert all(status == "sent" and sent < first.end_time for _, status, sent in rows)
