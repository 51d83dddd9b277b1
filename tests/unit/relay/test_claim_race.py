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
