"""`relay clinic move` copies the clinic's current copy only. It trusted the machine's name: run
with RELAY_MACHINE set to the home's name (as docs/scaling.md says for a lost machine's disk
mounted elsewhere) over a data folder holding an old copy, it backed up that copy as the move's
("north-generation-3.duckdb" from a generation-2 file), and its restore made it the clinic's
next generation: everything the home had sent since was forgotten, and sent again. It now
refuses, writing no backup, and gives the clinic back to its home as it was (resumed)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from tasks.home import Home, HomeRefused, Identity, write_identity
from tasks.warehouse import open_db

from .homes import Store, as_machine

LINEAGE = "l" * 32


class FakeClient:
    """north's deployment d1 on ``queue``; the restore runs waiting on queues (``runs``)."""

    def __init__(self, queue: str = "machine-a"):
        self.deployment = SimpleNamespace(
            id="d1", paused=False, work_pool_name="local", work_queue_name=queue,
            parameters={"clinic": "north"},
        )  # fmt: skip
        self.paused: list[str] = []
        self.resumed: list[str] = []
        self.runs: dict = {}

    def read_deployments(self):
        return [self.deployment]

    def update_deployment(self, deployment_id, update):
        self.deployment.work_queue_name = update.work_queue_name

    def create_work_queue(self, name, work_pool_name):
        pass

    def read_flow_runs(self, flow_filter=None, flow_run_filter=None, limit=None):
        return list(self.runs.values())

    def delete_flow_run(self, run_id):
        del self.runs[run_id]

    def pause_deployment(self, deployment_id):
        self.paused.append(deployment_id)

    def resume_deployment(self, deployment_id):
        self.resumed.append(deployment_id)


@pytest.fixture
def move(monkeypatch, tmp_path):
    """north at home on 'a', generation 3; this process says it is 'a', its database is
    ``tmp_path/north.duckdb`` (each test writes what it holds)."""
    import prefect.client.orchestration

    import relay.cli.clinic as cli
    import relay.cli.restore_run as restoring

    store = Store(Home(machine="a", generation=3, database=LINEAGE))
    client = FakeClient()
    deployments = [client.deployment]
    as_machine(monkeypatch, "a", store, tmp_path / "north.duckdb")
    monkeypatch.setattr(
        prefect.client.orchestration, "get_client",
        lambda sync_client=False: contextlib.nullcontext(client),
    )  # fmt: skip
    monkeypatch.setattr(cli, "clinic_deployments", lambda client, clinic: deployments)
    monkeypatch.setattr(cli, "wait_for_ticks", lambda *args: [])
    monkeypatch.setattr(cli, "put_on_queue", lambda client, deployments, queue: ([], []))
    monkeypatch.setattr(restoring, "start_restore", lambda *args: None)

    def run(identity: Identity | None):
        with open_db(tmp_path / "north.duckdb") as con:
            if identity is not None:
                write_identity(con, identity)
        said: list[str] = []
        cli.move("north", "b", backup_root=tmp_path / "backups", wait_seconds=1,
                 echo=said.append, restore_wait=None)  # fmt: skip
        return said

    return SimpleNamespace(run=run, store=store, client=client, backups=tmp_path / "backups")


def test_an_old_copy_is_not_moved_and_the_clinic_stays_home(move):
    with pytest.raises(HomeRefused) as refused:
        move.run(Identity("north", LINEAGE, 2, "b"))

    said = str(refused.value)
    assert "generation 2 of north, the home's is generation 3" in said, said
    assert not list(move.backups.rglob("*.duckdb"))  # no backup the restore could take
    assert move.store.home == Home(machine="a", generation=3, database=LINEAGE)
    assert move.client.resumed == move.client.paused == ["d1"]  # back as it was


@pytest.mark.parametrize(
    "identity, why",
    [(None, "this database is new"), (Identity("north", "m" * 32, 3, "a"), "started on its own")],
)
def test_a_fresh_database_or_one_of_its_own_is_not_moved(move, identity, why):
    with pytest.raises(HomeRefused, match=why):
        move.run(identity)
    assert not list(move.backups.rglob("*.duckdb"))
    assert move.store.home.moving_to is None


def test_the_current_copy_is_moved(move):
    said = move.run(Identity("north", LINEAGE, 3, "a"))

    assert (move.backups / "north" / "north-generation-3.duckdb").exists()
    assert move.store.home.moving_to == "b" and move.store.home.backup_sha256
    assert any(line.startswith("2/4 backed up") for line in said), said
    made = (move.backups / "north" / "north-generation-3.duckdb").stat().st_mtime_ns
    again = move.run(Identity("north", LINEAGE, 3, "a"))  # the same command again: not redone
    assert any(line.startswith("2/4 kept the backup") for line in again), again
    assert (move.backups / "north" / "north-generation-3.duckdb").stat().st_mtime_ns == made


def test_a_move_run_again_over_a_backup_of_an_old_copy_gives_the_clinic_back(move):
    """A move that made its backup from an old copy before this check (its restore waiting on
    the target's queue): run again, it restores nothing of it; the clinic stays home, resumed."""
    import tasks.home

    backup = move.backups / "north" / "north-generation-3.duckdb"
    backup.parent.mkdir(parents=True)
    backup.write_bytes(b"the old copy")
    move.store.home = Home(
        machine="a", generation=3, database=LINEAGE, moving_to="b",
        backup="north/north-generation-3.duckdb", backup_sha256=tasks.home.sha256(backup),
        paused=["d1"],
    )  # fmt: skip
    move.client.deployment.work_queue_name = "machine-b"  # its step 3 was done
    restore = SimpleNamespace(
        id="r1", name="restore-north", work_queue_name="machine-b",
        parameters={"clinic": "north"},
        state=SimpleNamespace(type=SimpleNamespace(value="SCHEDULED"), name="Scheduled"),
    )  # fmt: skip
    move.client.runs = {"r1": restore}
    with pytest.raises(HomeRefused, match="generation 2 of north"):
        move.run(Identity("north", LINEAGE, 2, "b"))
    assert move.store.home == Home(machine="a", generation=3, database=LINEAGE)
    assert move.client.resumed == ["d1"]
    assert move.client.deployment.work_queue_name == "machine-a"  # ticks where it lives
    assert move.client.runs == {}  # its restore of the old copy will never run
