"""`relay clinic claim` on two machines at once (issue 14, two machines claiming one clinic):
the server lets one create the home record; the other's claim used to end with exit 0, "south
lives on 'b', generation 1." and "its deployments are on work queue 'machine-b' now", its own
database left named as the clinic's (another lineage). A script's `relay clinic claim south &&
...` on the losing machine went on as if it were home. It now fails, saying which machine won,
and leaves its database unnamed, as a tick that loses the first claim does (tasks/home.guard)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tasks.home import Home, read_identity
from tasks.warehouse import open_db

from .homes import as_machine


class RacedStore:
    """The server as machine 'a' sees it: no home when it reads, and b's when it creates."""

    def __init__(self):
        self.home = None
        self.creates = 0

    def read(self, clinic):
        return self.home

    def create(self, clinic, wanted):
        self.creates += 1
        self.home = Home(machine="b", generation=1, database="b" * 32)  # b was first
        return self.home

    def write(self, clinic, home):
        raise AssertionError("the loser must not write the home")


@pytest.fixture
def raced(monkeypatch, tmp_path):

    store = RacedStore()
    touched = []
    client = SimpleNamespace(read_deployments=lambda: touched.append("read") or [])
    as_machine(monkeypatch, "a", store, lambda name: tmp_path / f"{name}.duckdb", client=client,
               shared=True)  # fmt: skip
    return SimpleNamespace(store=store, touched=touched, db=tmp_path / "south.duckdb")


def test_the_machine_that_lost_the_claim_is_told_and_its_database_is_not_the_clinics(raced):
    from relay.cli.clinic import clinic_app

    result = CliRunner().invoke(clinic_app, ["claim", "south"])

    assert result.exit_code != 0, result.output
    message = str(result.exception) + result.output
    assert "'b'" in message and "first" in message, message
    assert raced.store.creates == 1
    assert raced.touched == []  # the deployments are the winner's to place
    with open_db(raced.db) as con:
        assert read_identity(con) is None


class FreshRacedStore:
    """The server as machine 'a' sees it during `claim --fresh`: the home on 'c' (generation 2)
    at its first read, and b's fresh claim (generation 3) at every read after: b claimed afresh
    while a's claim ran."""

    def __init__(self):
        self.reads, self.writes = 0, []
        self.first = Home(machine="c", generation=2, database="c" * 32)
        self.home = Home(machine="b", generation=3, database="b" * 32)

    def read(self, clinic):
        self.reads += 1
        return self.first if self.reads == 1 else self.home

    def create(self, clinic, wanted):
        raise AssertionError("the clinic has a home: nothing to create")

    def write(self, clinic, home):
        self.writes.append(home)


def test_a_fresh_claim_that_another_machine_beat_fails_and_writes_nothing(monkeypatch, tmp_path):
    """Two `relay clinic claim --fresh` at once (issue 14): both read generation 2, both wrote
    generation 3, each its own lineage, and both said "south lives on '<me>'"; the last write
    stood. Under the claim lock a claim reads the home again: the one that finds another's
    claim there fails, naming it, and writes neither the home nor its own database."""
    from relay.cli.clinic import clinic_app
    from tasks.home import Identity, write_identity

    store, touched = FreshRacedStore(), []
    db = tmp_path / "south.duckdb"
    with open_db(db) as con:  # an old copy of south's on 'a'
        write_identity(con, Identity("south", "a" * 32, 1, "a"))
    client = SimpleNamespace(read_deployments=lambda: touched.append("read") or [])
    as_machine(monkeypatch, "a", store, db, client=client, shared=True)

    result = CliRunner().invoke(clinic_app, ["claim", "south", "--fresh"])

    assert result.exit_code != 0, result.output
    message = str(result.exception) + result.output
    assert "'b'" in message and "generation 3" in message, message
    assert "relay clinic move south --to a" in message and "--fresh" in message, message
    assert store.writes == [] and touched == []  # the home and the deployments are b's
    with open_db(db) as con:
        assert read_identity(con) == Identity("south", "a" * 32, 1, "a")
