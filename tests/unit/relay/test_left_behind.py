"""A copy a move left behind stays an old one, whatever the server's record says later.

After `relay clinic move north --to b` the old machine 'a' keeps its copy (generation 3); the
record says 'b', generation 4, and 'a' is refused because it is not the home. The Prefect
server's database put back from a backup taken before the move brought the record back to 'a',
generation 3: the old copy matched it again, and its next tick sent again everything 'b' had
sent since the move (its ledger has none of it). The move now marks the copy it leaves (as does
any command that finds a copy behind the record); a marked copy refuses, saying which machine
holds the newer generation and what to run there."""

from __future__ import annotations

import contextlib
from pathlib import Path

import duckdb
import pytest

from tasks.home import Home, HomeRefused, Identity, guard, read_identity, write_identity
from tasks.homecopy import left_behind, note_superseded, require_current_copy
from tasks.warehouse import open_db

from .homes import Store, as_machine

LINEAGE = "l" * 32
BEFORE = Home(machine="a", generation=3, database=LINEAGE)  # the record before the move
AFTER = Home(machine="b", generation=4, database=LINEAGE, moved_at="2026-12-05T10:00:00+00:00")


def old_copy(path: Path) -> None:
    with open_db(path) as con:
        write_identity(con, Identity("north", LINEAGE, 3, "a"))


def identity_of(path: Path) -> Identity:
    with open_db(path, read_only=True) as con:
        return read_identity(con)


def test_a_copy_the_move_left_refuses_a_record_put_back_to_before_the_move(tmp_path):
    db, said = tmp_path / "north.duckdb", []
    old_copy(db)
    with open_db(db) as con:  # before the fix: the put-back record was this copy's own
        assert guard(con, "north", machine="a", store=Store(BEFORE)) == BEFORE

    left_behind(db, "north", Store(AFTER), said.append)  # the move, once its restore is done

    marked = identity_of(db)
    assert (marked.generation, marked.superseded_by, marked.superseded_on) == (3, 4, "b")
    assert said == [
        f"the copy left at {db} (generation 3) is marked as an old one: it plans and sends "
        "nothing, whatever the server's record says later."
    ]
    with open_db(db) as con, pytest.raises(HomeRefused) as refused:
        guard(con, "north", machine="a", store=Store(BEFORE))
    why = str(refused.value)
    assert why.startswith("north: nothing planned or sent: this is an old copy of north")
    assert "generation 4 went live on 'b'" in why and "generation 3 on 'a'" in why
    assert "on 'b' run `relay clinic claim north --fresh`" in why
    assert "an old copy: generation 4 went live on 'b'" in marked.describe()  # relay clinic home


def test_a_command_run_on_the_old_machine_marks_its_copy_too(tmp_path):
    """`relay ledger resolve` and the like, run on 'a' after a move made with --no-wait: they are
    refused (an old copy) and the copy remembers why."""
    db = tmp_path / "north.duckdb"
    old_copy(db)
    with open_db(db) as con, pytest.raises(HomeRefused, match="generation 3 of north"):
        require_current_copy(con, "north", store=Store(AFTER))
    assert identity_of(db).superseded_by == 4
    with open_db(db) as con, pytest.raises(HomeRefused, match="this is an old copy of north"):
        require_current_copy(con, "north", store=Store(BEFORE))


@pytest.mark.parametrize(
    "clinic, home",
    [
        ("north", BEFORE),  # the record this copy belongs to
        ("north", Home(machine="a", generation=3, database=LINEAGE, moving_to="b")),  # moving
        ("north", Home(machine="a", generation=2, database=LINEAGE)),  # an older record
        ("south", AFTER),  # another clinic's record: this file is not south's
    ],
)
def test_only_a_record_of_the_clinic_ahead_of_the_copy_marks_it(tmp_path, clinic, home):
    db = tmp_path / "north.duckdb"
    old_copy(db)
    with open_db(db) as con:
        identity = read_identity(con)
        assert note_superseded(con, clinic, identity, home) is identity
    assert identity_of(db).superseded_by is None


def test_a_restore_or_a_claim_makes_a_copy_current_again(tmp_path):
    """Writing an identity (a restore of a backup, `relay clinic claim --fresh`) clears the mark:
    the copy is then the clinic's on purpose."""
    db = tmp_path / "north.duckdb"
    old_copy(db)
    left_behind(db, "north", Store(AFTER), lambda line: None)
    with open_db(db) as con:
        write_identity(con, Identity("north", "n" * 32, 5, "a"))
        assert read_identity(con) == Identity("north", "n" * 32, 5, "a")
        home = Home(machine="a", generation=5, database="n" * 32)
        assert guard(con, "north", machine="a", store=Store(home)) == home


def test_a_read_only_command_is_refused_all_the_same(tmp_path):
    """A read-only open cannot store the mark; the check still refuses as an old copy would be."""
    db = tmp_path / "north.duckdb"
    old_copy(db)
    with open_db(db, read_only=True) as con:
        with pytest.raises(HomeRefused, match="generation 3 of north"):
            require_current_copy(con, "north", store=Store(AFTER))
    assert identity_of(db).superseded_by is None


def test_an_older_database_without_the_columns_reads_its_identity(tmp_path):
    """A database made before the mark existed, opened read-only (`relay clinic home`), where
    the schema is not brought up to date."""
    db = tmp_path / "north.duckdb"
    with contextlib.closing(duckdb.connect(str(db))) as con:
        con.execute("CREATE SCHEMA state")
        con.execute(
            "CREATE TABLE state.clinic_identity (clinic VARCHAR PRIMARY KEY, database_id VARCHAR "
            "NOT NULL, generation INTEGER NOT NULL, machine VARCHAR NOT NULL, created_at "
            "TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
        )
        con.execute(f"INSERT INTO state.clinic_identity VALUES ('north', '{LINEAGE}', 3, 'a', "
                    "now(), now())")  # fmt: skip
    assert identity_of(db) == Identity("north", LINEAGE, 3, "a")
    with open_db(db) as con:  # a writer brings the schema up to date
        left = note_superseded(con, "north", read_identity(con), AFTER)
    assert left.superseded_by == 4 and identity_of(db).superseded_by == 4


def test_the_move_run_again_after_its_restore_marks_the_copy_here(monkeypatch, tmp_path):
    """`relay clinic move north --to b` once more on 'a' (after a move with --no-wait, or one
    whose copy could not be opened): the clinic lives on 'b' already; the copy here is marked."""
    from relay.cli.clinic import move

    db = tmp_path / "north.duckdb"
    old_copy(db)
    as_machine(monkeypatch, "a", Store(AFTER), db)
    said: list[str] = []
    move("north", "b", backup_root=tmp_path / "backups", wait_seconds=1, echo=said.append)
    assert said[0] == "north already lives on 'b' (generation 4)."
    assert "is marked as an old one" in said[1]
    assert identity_of(db).superseded_by == 4


def test_claiming_a_copy_marked_old_is_refused_unless_said_so(monkeypatch, tmp_path):
    """Two moves (a -> b -> c), then the server's record put back to before both: on 'a' the
    refusal names 'b'; 'b''s copy is old too (marked by the move to 'c'). `relay clinic claim
    --fresh` there would make a home whose ledger lacks what 'c' sent: refused, naming 'c', and
    nothing written; with --old-copy (c lost for good) it claims, and the mark goes."""
    from typer.testing import CliRunner

    from relay.cli import clinic as cli
    from tasks.errors import UserFacingError

    db = tmp_path / "north.duckdb"
    with open_db(db) as con:
        write_identity(con, Identity("north", LINEAGE, 4, "b"))
    left_behind(db, "north", Store(Home(machine="c", generation=5, database=LINEAGE)), print)
    store = Store(BEFORE)
    as_machine(monkeypatch, "b", store, db, shared=True)
    monkeypatch.setattr(cli, "follow_home", lambda *args: None)

    refused = CliRunner().invoke(cli.clinic_app, ["claim", "north", "--fresh"])
    assert isinstance(refused.exception, UserFacingError)  # relay's CLI prints it, exit 1
    said = str(refused.exception)
    assert "nothing claimed: this database is an old copy (generation 4)" in said, said
    assert "generation 5 went live on 'c'" in said and "--old-copy" in said
    assert store.home == BEFORE and identity_of(db).superseded_by == 5  # nothing written

    claimed = CliRunner().invoke(cli.clinic_app, ["claim", "north", "--fresh", "--old-copy"])
    assert claimed.exit_code == 0, claimed.output
    assert (store.home.machine, store.home.generation) == ("b", 4)
    assert identity_of(db).superseded_by is None
