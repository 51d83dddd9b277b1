"""A move or a restore of a clinic at the same moment as another machine's `relay clinic claim
--fresh`, on a real Prefect server, each a `relay` process of its own (its own RELAY_MACHINE and
data directory), both reading the home before either wrote it. The claim compared and wrote the
home under the clinic's claim lock, the move and the restore wrote it without: the last write
stood, and both said the clinic lived with them, exit 0 (the restore on 'x' and the claim on 'c'
each "racer lives on '<me>', generation 2", two databases of generation 2 live at once; the
move's backup record put the home back on 'one', undoing the claim it never saw). The move and
the restore now take the same lock (tasks/homeclaim.py): one wins, the other fails naming it and
leaves nothing of its own half-written."""

from __future__ import annotations

import uuid

import pytest

from tasks.home import Home, Identity, PrefectHomes, backup_database, read_identity, write_identity
from tasks.warehouse import open_db
from tests.flows.races import race

pytestmark = [pytest.mark.prefect]


@pytest.fixture
def racer(tmp_path):
    """A clinic at home on 'one' (generation 1), its database there."""
    clinic = f"racer{uuid.uuid4().hex[:6]}"
    (tmp_path / "clinics" / clinic).mkdir(parents=True)
    (tmp_path / "clinics" / clinic / "clinic.yaml").write_text(
        f"clinic: {clinic}\nname: Test clinic {clinic}\ncliniko:\n  account: beta-cliniko\n",
        encoding="utf-8",
    )
    database = tmp_path / "one" / f"{clinic}.duckdb"
    database.parent.mkdir()
    with open_db(database) as con:
        write_identity(con, Identity(clinic, "1" * 32, 1, "one"))
    return clinic


def _one_won(said: dict, clinic: str) -> tuple[str, str, Home]:
    won = [m for m, (_, code) in said.items() if code == 0]
    assert len(won) == 1, said
    (winner,) = won
    (loser,) = set(said) - {winner}
    text = said[loser][0]
    assert f"'{winner}'" in text and "Traceback" not in text, said
    home = PrefectHomes().read(clinic)
    assert (home.machine, home.generation, home.moving_to) == (winner, 2, None), (home, said)
    return winner, loser, home


def test_a_restore_and_a_fresh_claim_at_once_one_wins_and_the_other_is_told(
    prefect_server, client, tmp_path, racer
):
    clinic = racer
    backup = f"{clinic}/{clinic}-generation-1.duckdb"
    checksum = backup_database(tmp_path / "one" / f"{clinic}.duckdb", tmp_path / "backups" / backup)
    PrefectHomes().create(
        clinic, Home(machine="one", generation=1, database="1" * 32, moving_to="x",
                     backup=backup, backup_sha256=checksum),
    )  # fmt: skip

    said = race(
        prefect_server, tmp_path,
        {"x": ["clinic", "restore", clinic], "c": ["clinic", "claim", clinic, "--fresh"]},
        hold={"x": "restore_database"},
    )  # fmt: skip

    winner, loser, home = _one_won(said, clinic)
    with open_db(tmp_path / winner / f"{clinic}.duckdb", read_only=True) as con:
        assert read_identity(con).database_id == home.database
    assert not (tmp_path / loser / f"{clinic}.duckdb").exists(), said  # nothing written there


def test_a_move_and_a_fresh_claim_at_once_one_wins_and_the_other_is_told(
    prefect_server, client, tmp_path, racer
):
    clinic = racer
    PrefectHomes().create(clinic, Home(machine="one", generation=1, database="1" * 32))

    said = race(
        prefect_server, tmp_path,
        {"one": ["clinic", "move", clinic, "--to", "x", "--no-wait"],
         "c": ["clinic", "claim", clinic, "--fresh"]},
        hold={"one": "backup_database"},
    )  # fmt: skip

    winner, loser, home = _one_won(said, clinic)
    assert winner == "c", said  # a claim during a move ends the move (docs/scaling.md)
    assert "relay clinic home" in said[loser][0], said
    with open_db(tmp_path / "c" / f"{clinic}.duckdb", read_only=True) as con:
        assert read_identity(con).database_id == home.database
