"""One home per clinic on a real Prefect server, two machines on this one (each its own
RELAY_MACHINE and data directory): a tick off the clinic's home plans and sends nothing, fails
saying where home is and emits relay.clinic.misrouted; one `relay clinic move`, run on the old
home, carries the clinic, its ledger and its deployment to the other machine (its restore runs
there, started by the move on that machine's work queue and run by that machine's own worker),
where it ticks on without sending anything twice, and the old machine is refused from then on."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.home import queue_for, read_home
from tasks.warehouse import open_db

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POOL = "home-test"

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
    """The clinic's tick deployment on machine one's queue, scheduled, in a pool of its own, and
    the pool's clinic-restore deployment as `relay deploy` makes it."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    from relay.cli.deploy import apply, plan_restore

    client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    apply(client, plan_restore(POOL), POOL, "default")
    flow_id = client.create_flow_from_name("clinic-tick")
    return client.create_deployment(
        flow_id,
        f"{CLINIC}-tick",
        work_pool_name=POOL,
        work_queue_name=queue_for("one"),
        parameters={"clinic": CLINIC},
        entrypoint="flows/tick.py:clinic_tick",
        schedules=[
            DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(hours=1)))
        ],
    )


@contextlib.contextmanager
def worker_of(machine: str, env: dict, tmp_path: Path):
    """Machine ``machine``'s own process worker on its queue, with its RELAY_MACHINE and data
    directory (this checkout's code: PYTHONPATH, as its own `make install` would give it)."""
    log = tmp_path / f"worker-{machine}.log"
    own = {
        **env,
        "RELAY_MACHINE": machine,
        "RELAY_DATA_DIR": str(tmp_path / machine),
        "RELAY_BACKUP_DIR": str(tmp_path / "share"),
        "RELAY_CLINICS_DIR": str(tmp_path / "clinics"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [prefect, "worker", "start", "--pool", POOL, "--work-queue", queue_for(machine)],
            env=own, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGINT)  # the worker ignores SIGTERM for long (prefect.md)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def restore_runs(client) -> list:
    from prefect.client.schemas import filters

    restore = client.read_deployment_by_name(f"clinic-restore/{POOL}")
    return client.read_flow_runs(
        flow_run_filter=filters.FlowRunFilter(
            deployment_id=filters.FlowRunFilterDeploymentId(any_=[restore.id])
        )
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
    prefect_server, client, sandboxes, machines, deployment, tmp_path
):
    from relay.cli.clinic import move
    from tasks.errors import UserFacingError

    one = machines("one")
    assert tick().is_completed()  # the first tick anywhere: one becomes the home, generation 1
    time.sleep(1.1)  # bookings from the second after the welcome went live (that second is history)
    book_now(sandboxes["b"].clinic, 4)
    assert tick().is_completed()
    sent_on_one = ledger(one)
    assert "sent" in sent_on_one.values()
    before_the_move = read_home(CLINIC)
    assert before_the_move.machine == "one"

    # Ticks that wander to the other machine do nothing there, and say why.
    two = machines("two")
    refused = tick()
    # Failed, named so: its event is prefect.flow-run.Refused, so only the misrouted alert fires
    assert refused.is_failed() and refused.name == "Refused"
    assert "ran on machine 'two'" in refused.message and "home is 'one'" in refused.message
    assert not two.exists()  # refused before its database was even made there
    deadline = time.monotonic() + 30
    while not misrouted(prefect_server) and time.monotonic() < deadline:
        time.sleep(1)
    assert "home is 'one'" in misrouted(prefect_server)[0]["payload"]["reason"]

    # The move, from the old home, while no worker serves 'two': it says so after its timeout,
    # leaving the clinic paused and its restore queued there; every tick refuses meanwhile.
    machines("one")
    said: list[str] = []
    with pytest.raises(UserFacingError, match="no worker on 'two' took up its restore"):
        move(CLINIC, "two", backup_root=Path(_backup()), wait_seconds=30, echo=said.append,
             restore_wait=2)  # fmt: skip
    moved = client.read_deployment(deployment)
    assert moved.paused and moved.work_queue_name == "machine-two"
    (queued,) = restore_runs(client)
    assert queued.work_queue_name == "machine-two" and queued.state.is_scheduled()
    backups = list(Path(_backup()).rglob("*.duckdb"))
    assert [b.name for b in backups] == [f"{CLINIC}-generation-1.duckdb"]
    in_transit = tick()
    assert in_transit.is_failed() and "being moved from 'one' to 'two'" in in_transit.message
    from flows.restore import clinic_restore

    elsewhere = clinic_restore(clinic=CLINIC, return_state=True)  # the restore, on 'one'
    assert elsewhere.is_failed() and "not to this machine ('one')" in elsewhere.message
    assert read_home(CLINIC).moving_to == "two"

    # Machine two's worker starts; the same command again (safe) waits for the same run, which
    # restores the clinic there. Once more: it lives there already, nothing changes.
    with worker_of("two", prefect_server, tmp_path) as log:
        for _ in range(2):
            move(CLINIC, "two", backup_root=Path(_backup()), wait_seconds=30,
                 echo=said.append, restore_wait=120)  # fmt: skip
    (done,) = restore_runs(client)
    assert done.id == queued.id and done.state.is_completed(), log.read_text()[-3000:]
    assert f"{CLINIC} lives on 'two' now" in "\n".join(said)
    home = read_home(CLINIC)
    assert (home.machine, home.generation, home.moving_to) == ("two", 2, None)
    assert not client.read_deployment(deployment).paused
    assert ledger(two) == sent_on_one  # the ledger moved with the clinic

    machines("two")
    assert tick().is_completed()
    after = ledger(two)
    assert {k: after[k] for k in sent_on_one} == sent_on_one
    outbox = two.parent / "outbox" / CLINIC
    again = [json.loads(p.read_text())["send_key"] for p in outbox.glob("*.json")]
    assert not set(again) & {k for k, s in sent_on_one.items() if s == "sent"}  # none twice

    machines("one")
    stale = tick()
    assert stale.is_failed() and "home is 'two'" in stale.message

    # The server's database put back from a backup taken before the move: its record names 'one'
    # again, at the generation of the copy left there. That copy was marked when the move's
    # restore ended: it plans and sends nothing (it would send again what 'two' sent).
    assert "the copy left at" in "\n".join(said)
    from tasks.home import PrefectHomes

    PrefectHomes().write(CLINIC, before_the_move)
    outbox_one = one.parent / "outbox" / CLINIC
    sent_from_one = sorted(p.name for p in outbox_one.glob("*.json"))
    book_now(sandboxes["b"].clinic, 2)
    put_back = tick()
    assert put_back.is_failed() and "this is an old copy of homebody" in put_back.message
    assert "on 'two' run `relay clinic claim homebody --fresh`" in put_back.message
    assert sorted(p.name for p in outbox_one.glob("*.json")) == sent_from_one
    assert ledger(one) == sent_on_one


def _backup() -> str:
    import os

    return os.environ["RELAY_BACKUP_DIR"]
