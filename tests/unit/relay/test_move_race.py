"""`relay clinic move` and `relay clinic restore` beside a claim on another machine (issue 14:
one home per clinic). The claim compared and wrote the home under the clinic's claim lock; the
move and the restore wrote it without, each from what it had read earlier: a `relay clinic claim
--fresh` on 'c' while south's move from 'b' waited for its tick was undone by the move's next
write (the home back on 'b', moving to 'x'), and the move then put the deployments on x's queue
and started the restore there; both commands said they had the clinic. Each step of a move now
writes only if the home is still what it last read or wrote, under the lock, and a restore reads,
restores and writes under it whole (tests/flows/test_move_race.py races them for real)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from tasks.errors import UserFacingError
from tasks.home import Home, Identity, write_identity
from tasks.warehouse import open_db

from .homes import D1, D2, Store, as_machine, deployments_on
from .test_claim_follows import FakeClient

MOVING = Home(machine="b", generation=2, database="l" * 32)
CLAIMED = Home(machine="c", generation=3, database="c" * 32, moved_at="2026-12-05T09:00:00+00:00")


class MoveClient(FakeClient):
    def __init__(self, deployments):
        super().__init__(deployments, [])
        self.paused: list[str] = []

    def pause_deployment(self, deployment_id):
        self.paused.append(deployment_id)


class WatchedStore(Store):
    """The home record, with every write kept; ``claim()`` is c's claim landing."""

    def __init__(self, home):
        super().__init__(home)
        self.writes: list[Home] = []

    def write(self, clinic, home):
        self.writes.append(home)
        super().write(clinic, home)

    def claim(self):
        self.home = CLAIMED  # `relay clinic claim south --fresh` on 'c', under the lock


@pytest.fixture
def moving(monkeypatch, tmp_path):
    """south at home on 'b' (this process), its two deployments on b's queue."""
    import relay.cli.clinic as cli
    import relay.cli.restore_run as restoring
    import tasks.home

    database = tmp_path / "south.duckdb"
    with open_db(database) as con:  # the home's copy (the move checks it is, before its backup)
        write_identity(con, Identity("south", "l" * 32, 2, "b"))
    deployments = [SimpleNamespace(**vars(d), paused=False) for d in deployments_on("machine-b")]
    store, client, started = WatchedStore(MOVING), MoveClient(deployments), []
    as_machine(monkeypatch, "b", store, database, client=client, shared=True)
    monkeypatch.setattr(tasks.home, "backup_database", lambda db, dest: "abc")
    monkeypatch.setattr(
        restoring, "start_restore",
        lambda client, clinic, home, pool, to: started.append(to) or SimpleNamespace(
            id="r", name="restore-south"),
    )  # fmt: skip
    waited = SimpleNamespace(then=lambda: None)

    def wait_for_ticks(*args):
        waited.then()
        return []

    monkeypatch.setattr(cli, "wait_for_ticks", wait_for_ticks)

    def move():
        said: list[str] = []
        with pytest.raises(UserFacingError) as refused:
            cli.move("south", "x", backup_root=tmp_path, wait_seconds=1, echo=said.append,
                     restore_wait=None)  # fmt: skip
        return str(refused.value), said

    return SimpleNamespace(move=move, store=store, client=client, started=started, waited=waited)


def test_a_move_that_a_claim_elsewhere_beat_to_its_first_step_does_nothing(moving, monkeypatch):
    first = moving.store.read

    def read_then_claimed(clinic):  # c's claim lands just after the move's first read
        found = first(clinic)
        moving.store.claim()
        return found

    monkeypatch.setattr(moving.store, "read", read_then_claimed)

    message, said = moving.move()

    assert "'c'" in message and "generation 3" in message, message
    assert "relay clinic home south" in message and "relay clinic move south --to x" in message
    assert moving.store.writes == [] and moving.store.home == CLAIMED
    assert moving.client.paused == [] and moving.client.queues == {}
    assert moving.started == [] and said == []


def test_a_move_that_a_claim_elsewhere_ended_while_it_waited_stops_there(moving):
    moving.waited.then = moving.store.claim  # c's claim lands while the move waits for the tick

    message, said = moving.move()

    assert "'c'" in message and "relay clinic home south" in message, message
    (step1,) = moving.store.writes  # its first step's record, nothing after the claim
    assert (step1.machine, step1.moving_to) == ("b", "x")
    assert moving.store.home == CLAIMED
    assert moving.client.paused == [str(D1), str(D2)]  # step 1 (the claim resumed them)
    assert moving.client.queues == {} and moving.started == []  # no step 3, no restore on 'x'
    assert said == ["1/4 paused 2 deployment(s) of south"]


def test_a_restore_reads_restores_and_writes_under_the_claim_lock(tmp_path, monkeypatch):
    import tasks.home
    import tasks.homeclaim
    from tasks.config import load_clinic
    from tasks.homerestore import restore_home

    source = tmp_path / "b" / "south.duckdb"
    with open_db(source) as con:
        write_identity(con, Identity("south", "l" * 32, 2, "b"))
    checksum = tasks.home.backup_database(source, tmp_path / "backups" / "south" / "g2.duckdb")
    yaml = tmp_path / "south" / "clinic.yaml"
    yaml.parent.mkdir()
    yaml.write_text(
        f"clinic: south\nname: South\ndatabase: {tmp_path / 'x' / 'south.duckdb'}\n"
        "cliniko:\n  account: south\n",
        encoding="utf-8",
    )
    done: list[str] = []

    @contextlib.contextmanager
    def claim_lock(clinic, **_):
        done.append(f"lock {clinic}")
        yield
        done.append("unlock")

    class Recorded(Store):
        def read(self, clinic):
            done.append("read")
            return super().read(clinic)

        def write(self, clinic, home):
            done.append(f"write {home.machine}")
            super().write(clinic, home)

    restore = tasks.home.restore_database
    monkeypatch.setattr(tasks.homeclaim, "claim_lock", claim_lock)
    monkeypatch.setattr(
        tasks.home, "restore_database", lambda *a, **k: done.append("restore") or restore(*a, **k)
    )
    store = Recorded(Home("b", 2, database="l" * 32, moving_to="x", backup="south/g2.duckdb",
                          backup_sha256=checksum))  # fmt: skip

    new = restore_home(load_clinic(yaml), backup_root=tmp_path / "backups", echo=lambda _: None,
                       machine="x", store=store)  # fmt: skip

    assert (new.machine, new.generation) == ("x", 3)
    assert done == ["lock south", "read", "restore", "write x", "unlock"]
