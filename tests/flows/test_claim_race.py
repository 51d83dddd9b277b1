"""Two `relay clinic claim --fresh` of one clinic at the same moment, from two machines, on a real
Prefect server: each a `relay` process of its own (its own RELAY_MACHINE and data directory).
Both read the home (generation 1, on machine 'one') before either wrote it, and both then wrote
generation 2 with their own database's lineage: each said "racer lives on '<me>'", exit 0, and
the last write stood. One claim now wins; the other fails, naming it, and leaves its database as
it found it (tasks/homeclaim.py: the claim lock, a Prefect global concurrency limit)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks.home import Home, Identity, PrefectHomes, read_identity, write_identity
from tasks.warehouse import open_db
from tests.flows.races import race

pytestmark = [pytest.mark.prefect]


def _database(root: Path, machine: str, clinic: str) -> Path:
    return root / machine / f"{clinic}.duckdb"


def test_two_fresh_claims_at_once_one_wins_and_the_other_is_told(prefect_server, client, tmp_path):
    clinic = f"racer{uuid.uuid4().hex[:6]}"
    (tmp_path / "clinics" / clinic).mkdir(parents=True)
    (tmp_path / "clinics" / clinic / "clinic.yaml").write_text(
        f"clinic: {clinic}\nname: Test clinic {clinic}\ncliniko:\n  account: beta-cliniko\n",
        encoding="utf-8",
    )
    PrefectHomes().create(clinic, Home(machine="one", generation=1, database="1" * 32))
    # 'two' has a copy of its own (an old backup, say); 'three' has none
    before = {"two": Identity(clinic, "2" * 32, 1, "two"), "three": None}
    path = _database(tmp_path, "two", clinic)
    path.parent.mkdir(parents=True)
    with open_db(path) as con:
        write_identity(con, before["two"])
    fresh = ["clinic", "claim", clinic, "--fresh"]
    said = race(prefect_server, tmp_path, {"two": fresh, "three": fresh}, {})

    won = [m for m, (_, code) in said.items() if code == 0]
    assert len(won) == 1, said
    (winner,) = won
    (loser,) = set(said) - {winner}
    home = PrefectHomes().read(clinic)
    assert (home.machine, home.generation) == (winner, 2), (home, said)
    with open_db(_database(tmp_path, winner, clinic), read_only=True) as con:
        assert read_identity(con).database_id == home.database
    text = said[loser][0]
    assert f"'{winner}'" in text and f"relay clinic move {clinic} --to {loser}" in text, text
    assert "Traceback" not in text, text
    path = _database(tmp_path, loser, clinic)
    if before[loser] is None:
        assert not path.exists(), "the claim that lost made a database"
    else:
        with open_db(path, read_only=True) as con:
            assert read_identity(con) == before[loser]


def test_a_claim_that_finds_the_lock_held_waits_then_says_so_and_the_lock_comes_back(
    prefect_server, client
):
    from tasks.errors import UserFacingError
    from tasks.homeclaim import claim_lock

    clinic = f"locked{uuid.uuid4().hex[:6]}"
    with claim_lock(clinic):
        with pytest.raises(UserFacingError) as refused, claim_lock(clinic, wait=2):
            pytest.fail("two claims held the lock at once")
        slots = client.read_global_concurrency_limit_by_name(f"relay_home_{clinic}").active_slots
        assert slots == 1
    assert f"relay_home_{clinic}" in str(refused.value) and "nothing was changed" in str(
        refused.value
    )
    assert client.read_global_concurrency_limit_by_name(f"relay_home_{clinic}").active_slots == 0
    with claim_lock(clinic, wait=2):  # free again
        pass
