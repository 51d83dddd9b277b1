"""One home per clinic on a real Prefect server, two machines on this one (each its own
RELAY_MACHINE and data directory): a tick off the clinic's home plans and sends nothing, fails
saying where home is and emits relay.clinic.misrouted; `relay clinic move` then `relay clinic
restore` carry the clinic, its ledger and its deployment to the other machine, where it ticks
on without sending anything twice, and the old machine is refused from then on."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.home import queue_for, read_home
from tasks.warehouse import open_db

pytestmark = [pytest.mark.prefect]

CLINIC = "homebody"
WELCOME = """triggers:
  - name: welcome
    enabled: true
    event: appointment_booked
    timing: immediately
    channel: email
    template: welcome
    purpose: transactional
"""


def book_now(clinic, n: int) -> list[int]:
    """n appointments booked in the sandbox Cliniko now (its own change engine)."""
    from sandbox.cliniko.clinic import _Changes

    table = clinic.tables["individual_appointments"]
    with clinic.lock:
        before = set(table.rows)
        changes, now = _Changes(clinic), int(time.time())
        for _ in range(n):
            changes.bookings(now)
        return sorted(set(table.rows) - before)


@pytest.fixture
def machines(prefect_server, clinics, monkeypatch, tmp_path):
    """The clinic (no `database:`: each machine's data directory holds its copy) and a function
    that makes this process machine 'one' or 'two'."""
    folder = tmp_path / "clinics"
    (folder / CLINIC).mkdir(parents=True)
    (folder / CLINIC / "clinic.yaml").write_text(
        f"clinic: {CLINIC}\nname: Test clinic {CLINIC}\ncliniko:\n  account: beta-cliniko\n"
        + WELCOME,
        encoding="utf-8",
    )
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(folder))
    monkeypatch.setenv("RELAY_BACKUP_DIR", str(tmp_path / "share"))

    def be(machine: str) -> Path:
        monkeypatch.setenv("RELAY_MACHINE", machine)
        monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / machine))
        return tmp_path / machine / f"{CLINIC}.duckdb"

    return be


@pytest.fixture
def deployment(client):
    """The clinic's tick deployment on machine one's queue, scheduled, in a pool of its own."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    client.create_work_pool(WorkPoolCreate(name="home-test", type="process"), overwrite=True)
    flow_id = client.create_flow_from_name("clinic-tick")
    return client.create_deployment(
        flow_id,
        f"{CLINIC}-tick",
        work_pool_name="home-test",
        work_queue_name=queue_for("one"),
        parameters={"clinic": CLINIC},
        entrypoint="flows/tick.py:clinic_tick",
        schedules=[
            DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(hours=1)))
        ],
    )


def tick():
    from flows.tick import clinic_tick

    return clinic_tick(clinic=CLINIC, return_state=True)


def ledger(path: Path) -> dict[str, str]:
    with open_db(path, read_only=True) as con:
        return dict(con.execute("SELECT send_key, status FROM state.messages").fetchall())


def misrouted(env: dict) -> list[dict]:
    import httpx

    response = httpx.post(
        f"{env['PREFECT_API_URL']}/events/filter",
        json={"filter": {"event": {"name": ["relay.clinic.misrouted"]},
                         "occurred": {"since": "2000-01-01T00:00:00Z"}}},
        timeout=10,
    )  # fmt: skip
    response.raise_for_status()
    return [e for e in response.json()["events"] if e["payload"].get("clinic") == CLINIC]


def test_a_clinic_ticks_only_at_home_and_moves_with_its_ledger(
    prefect_server, client, sandboxes, machines, deployment
):
    from relay.cli.clinic import move, restore

    one = machines("one")
    assert tick().is_completed()  # the first tick anywhere: one becomes the home, generation 1
    book_now(sandboxes["b"].clinic, 4)
    assert tick().is_completed()
    sent_on_one = ledger(one)
    assert "sent" in sent_on_one.values()
    assert read_home(CLINIC).machine == "one"

    # Ticks that wander to the other machine do nothing there, and say why.
    two = machines("two")
    refused = tick()
    assert refused.is_failed()
    assert "ran on machine 'two'" in refused.message and "home is 'one'" in refused.message
    assert ledger(two) == {}
    deadline = time.monotonic() + 30
    while not misrouted(prefect_server) and time.monotonic() < deadline:
        time.sleep(1)
    assert "home is 'one'" in misrouted(prefect_server)[0]["payload"]["reason"]

    # The move, on the old home; run twice, as after a crash: the same state.
    machines("one")
    said: list[str] = []
    for _ in range(2):
        move(CLINIC, "two", backup_root=Path(_backup()), wait_seconds=30, echo=said.append)
    moved = client.read_deployment(deployment)
    assert moved.paused and moved.work_queue_name == "machine-two"
    backups = list(Path(_backup()).rglob("*.duckdb"))
    assert [b.name for b in backups] == [f"{CLINIC}-generation-1.duckdb"]
    in_transit = tick()
    assert in_transit.is_failed() and "being moved from 'one' to 'two'" in in_transit.message

    # The restore, on the new home; again twice.
    machines("two")
    for _ in range(2):
        restore(CLINIC, backup_root=Path(_backup()), echo=said.append)
    home = read_home(CLINIC)
    assert (home.machine, home.generation, home.moving_to) == ("two", 2, None)
    assert not client.read_deployment(deployment).paused
    assert ledger(two) == sent_on_one  # the ledger moved with the clinic

    assert tick().is_completed()
    after = ledger(two)
    assert {k: after[k] for k in sent_on_one} == sent_on_one
    outbox = two.parent / "outbox" / CLINIC
    again = [json.loads(p.read_text())["send_key"] for p in outbox.glob("*.json")]
    assert not set(again) & {k for k, s in sent_on_one.items() if s == "sent"}  # none twice

    machines("one")
    stale = tick()
    assert stale.is_failed() and "home is 'two'" in stale.message


def _backup() -> str:
    import os

    return os.environ["RELAY_BACKUP_DIR"]
