"""The home guard (tasks/home.py) on real DuckDB files, with the home record kept in a dict where
the Prefect server would keep it (tests/flows/test_home.py runs it against a real server): the
first tick claims the home, and a tick off the home, during a move, or against a database that is
not the clinic's current copy refuses, saying why and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks import home
from tasks.home import Home, HomeRefused, Identity, guard, read_identity
from tasks.warehouse import open_db


class Store:
    """Home records as the server keeps them: create only when none exists."""

    def __init__(self):
        self.homes: dict[str, Home] = {}

    def read(self, clinic):
        return self.homes.get(clinic)

    def create(self, clinic, wanted):
        return self.homes.setdefault(clinic, wanted)

    def write(self, clinic, value):
        self.homes[clinic] = value


def tick(path, store, machine, clinic="acme"):
    with open_db(path) as con:
        return guard(con, clinic, machine=machine, store=store)


def test_the_first_tick_claims_the_home_and_names_the_database(tmp_path):
    store = Store()
    claimed = tick(tmp_path / "a.duckdb", store, "one")
    with open_db(tmp_path / "a.duckdb") as con:
        identity = read_identity(con)
    assert claimed == Home(machine="one", generation=1, database=identity.database_id)
    assert (identity.clinic, identity.generation, identity.machine) == ("acme", 1, "one")
    assert tick(tmp_path / "a.duckdb", store, "one") == claimed  # and goes on ticking


def test_a_tick_on_another_machine_refuses_and_says_where_home_is(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one")
    with pytest.raises(HomeRefused) as refused:
        tick(tmp_path / "b.duckdb", store, "two")
    message = str(refused.value)
    assert "ran on machine 'two'" in message and "home is 'one'" in message
    assert "machine-one" in message and "relay clinic move acme --to two" in message
    # the deployment may be on the right queue and the worker the one at fault
    assert "the worker on 'two' serves that queue: give it only 'machine-two'" in message


def test_a_tick_off_its_home_refuses_before_it_makes_a_database_there(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one")
    elsewhere = tmp_path / "machine-two" / "acme.duckdb"
    with pytest.raises(HomeRefused, match="home is 'one'"):
        home.refuse_elsewhere("acme", machine="two", store=store)
    assert not elsewhere.exists() and not elsewhere.parent.exists()
    home.refuse_elsewhere("acme", machine="one", store=store)  # at home: on to the guard
    home.refuse_elsewhere("never-ticked", machine="two", store=store)  # no home yet: claims


def test_a_fresh_database_on_the_home_machine_refuses_when_the_clinic_has_history(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one")
    with pytest.raises(HomeRefused, match="this database is new, but acme's home on 'one'"):
        tick(tmp_path / "lost-and-recreated.duckdb", store, "one")


def test_a_second_machine_under_the_homes_name_is_told_so_not_to_claim_afresh(tmp_path):
    """Two hosts with the same name (a cloned VM, RELAY_MACHINE copied) serve one queue: the one
    without the database was refused with only "run `relay clinic claim --fresh` on this
    machine", which would take the clinic from the machine that has its ledger."""
    store = Store()
    tick(tmp_path / "one" / "a.duckdb", store, "one")
    with pytest.raises(HomeRefused) as refused:
        tick(tmp_path / "clone" / "a.duckdb", store, "one")
    message = str(refused.value)
    assert "If another machine is also named 'one'" in message
    assert "give each its own RELAY_MACHINE and stop this one's worker" in message
    assert message.index("also named") < message.index("--fresh")


def test_an_old_copy_and_a_copy_of_another_lineage_refuse(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one")
    current = store.homes["acme"]
    store.homes["acme"] = Home("one", 2, database=current.database)  # moved since
    with pytest.raises(HomeRefused, match="generation 1 of acme, the home's is generation 2"):
        tick(tmp_path / "a.duckdb", store, "one")
    store.homes["acme"] = Home("one", 1, database="f" * 32)
    with pytest.raises(HomeRefused, match="not acme's: it was started on its own"):
        tick(tmp_path / "a.duckdb", store, "one")


def test_nothing_runs_anywhere_while_the_clinic_is_being_moved(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one")
    store.homes["acme"] = Home("one", 1, database=store.homes["acme"].database, moving_to="two")
    for machine in ("one", "two"):
        with pytest.raises(HomeRefused, match="being moved from 'one' to 'two'"):
            tick(tmp_path / "a.duckdb", store, machine)


def test_a_database_of_another_clinic_refuses(tmp_path):
    store = Store()
    tick(tmp_path / "a.duckdb", store, "one", clinic="acme")
    with pytest.raises(HomeRefused, match="holds clinic 'acme', not 'beta'"):
        tick(tmp_path / "a.duckdb", store, "one", clinic="beta")


def test_two_machines_claiming_at_once_leave_one_home(tmp_path):
    store = Store()
    store.create("acme", Home("two", 1, database="b" * 32))  # two won the race
    with pytest.raises(HomeRefused, match="home is 'two'"):
        tick(tmp_path / "a.duckdb", store, "one")
    with open_db(tmp_path / "a.duckdb") as con:
        assert read_identity(con) is None  # the loser's database was not made the clinic's


class Killed(BaseException):
    """SIGKILL's effect on the tick: nothing after this point runs."""


class KilledAtTheClaim(Store):
    """The server takes the claim (``lands``) or not, and the run is killed there."""

    def __init__(self, lands: bool):
        super().__init__()
        self.lands = lands

    def create(self, clinic, wanted):
        if self.lands:
            super().create(clinic, wanted)
        raise Killed


@pytest.mark.parametrize("lands", [True, False], ids=["after-the-server-took-it", "before"])
def test_a_first_tick_killed_at_its_claim_leaves_a_clinic_the_next_tick_runs(tmp_path, lands):
    """A kill at any moment of the first tick: the next tick at home goes on (it was refused as
    a fresh database with history when the record was made before the database was named)."""
    store = KilledAtTheClaim(lands)
    with pytest.raises(Killed):
        tick(tmp_path / "a.duckdb", store, "one")
    assert ("acme" in store.homes) is lands
    later = Store()
    later.homes = store.homes
    claimed = tick(tmp_path / "a.duckdb", later, "one")
    with open_db(tmp_path / "a.duckdb") as con:
        identity = read_identity(con)
    assert claimed == Home(machine="one", generation=1, database=identity.database_id)
    assert later.homes["acme"] == claimed


def test_without_a_shared_server_the_database_gets_its_identity_and_nothing_is_refused(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(home, "shared_server", lambda: False)
    with open_db(tmp_path / "a.duckdb") as con:
        assert guard(con, "acme", machine="one") is None
        assert read_identity(con).generation == 1
    with open_db(tmp_path / "b.duckdb") as con:
        assert guard(con, "acme", machine="two") is None


def test_a_home_claimed_before_any_tick_takes_the_first_database_that_ticks_there(tmp_path):
    store = Store()
    store.create("acme", Home("one", 1))  # claim_home when deploying: no database bound yet
    with pytest.raises(HomeRefused, match="home is 'one'"):
        tick(tmp_path / "b.duckdb", store, "two")
    bound = tick(tmp_path / "a.duckdb", store, "one")
    with open_db(tmp_path / "a.duckdb") as con:
        assert bound == Home("one", 1, database=read_identity(con).database_id)
    assert store.homes["acme"] == bound
    with pytest.raises(HomeRefused, match="this database is new"):
        tick(tmp_path / "c.duckdb", store, "one")


def test_names_of_queues_and_variables():
    assert home.queue_for("box-2") == "machine-box-2"
    assert home.variable_name("Acme-Physio.2") == "relay_home_acme_physio_2"
    assert Home.from_json(Home("one", 3, moved_at="2026-12-01T00:00:00+00:00").to_json()) == Home(
        "one", 3, moved_at="2026-12-01T00:00:00+00:00"
    )


def test_a_backup_restored_elsewhere_is_the_next_generation_and_a_rerun_keeps_it(tmp_path):
    store = Store()
    source = tmp_path / "one" / "acme.duckdb"
    tick(source, store, "one")
    checksum = home.backup_database(source, tmp_path / "backups" / "acme-g1.duckdb")
    target = tmp_path / "two" / "acme.duckdb"
    target.parent.mkdir()
    target.write_bytes(b"something else")  # set aside, never deleted
    restored = home.restore_database(
        tmp_path / "backups" / "acme-g1.duckdb", target, "acme",
        generation=2, machine="two", checksum=checksum,
    )  # fmt: skip
    assert (restored.generation, restored.machine) == (2, "two")
    assert (tmp_path / "two" / "acme.duckdb.before-g2").read_bytes() == b"something else"
    again = home.restore_database(
        tmp_path / "missing.duckdb", target, "acme", generation=2, machine="two", checksum=None
    )
    assert again == restored  # already restored: nothing copied, nothing asked of the backup
    store.homes["acme"] = Home("two", 2, database=restored.database_id)
    assert tick(target, store, "two").machine == "two"
    with pytest.raises(HomeRefused, match="home is 'two'"):
        tick(source, store, "one")


def test_the_restore_runs_only_on_the_machine_the_clinic_moves_to(tmp_path):
    """restore_home (relay clinic restore and the clinic-restore flow a move starts): anywhere
    but the move's target it refuses, saying where it must run, and changes nothing; there it
    restores generation n + 1 and makes that machine the home; again, it changes nothing."""
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.homerestore import restore_home

    store = Store()
    source = tmp_path / "one" / "acme.duckdb"
    tick(source, store, "one")
    checksum = home.backup_database(source, tmp_path / "backups" / "acme" / "g1.duckdb")
    target = tmp_path / "two" / "acme.duckdb"
    yaml = tmp_path / "acme" / "clinic.yaml"
    yaml.parent.mkdir()
    yaml.write_text(
        f"clinic: acme\nname: Acme\ndatabase: {target}\ncliniko:\n  account: acme\n",
        encoding="utf-8",
    )
    moving = Home("one", 1, database=store.homes["acme"].database, moving_to="two",
                  backup="acme/g1.duckdb", backup_sha256=checksum)  # fmt: skip
    store.homes["acme"] = moving
    said: list[str] = []

    def restore(machine):
        return restore_home(
            load_clinic(yaml),
            backup_root=tmp_path / "backups",
            echo=said.append,
            machine=machine,
            store=store,
        )

    for wrong in ("one", "three"):
        with pytest.raises(UserFacingError, match="not to this machine") as refused:
            restore(wrong)
        assert "machine-two" in str(refused.value)
    assert store.homes["acme"] == moving and not target.exists()

    done = restore("two")
    assert (done.machine, done.generation, done.moving_to) == ("two", 2, None)
    assert store.homes["acme"] == done and tick(target, store, "two") == done
    assert restore("two") == done  # again: nothing changes
    with pytest.raises(HomeRefused, match="home is 'two'"):
        tick(source, store, "one")


def test_an_operator_reads_the_home_and_identity_in_words():
    """`relay clinic home` prints these: no dataclass reprs, a move under way said plainly."""
    home = Home(
        machine="b",
        generation=3,
        moved_at="2026-12-01T10:00:00+00:00",
        database="abc123",
        moving_to="c",
        paused=["tick/north"],
    )
    said = home.describe()
    assert said.startswith("machine 'b', generation 3, database abc123, since 2026-12-01")
    assert "MOVING to 'c'" in said and "relay clinic restore" in said and "tick/north" in said
    assert "Home(" not in said
    assert Home(machine="a", generation=1).describe() == "machine 'a', generation 1"
    identity = Identity("north", "abc123", 3, "b")
    assert identity.describe() == ("clinic 'north', database abc123, generation 3, written on 'b'")


def test_relay_clinic_backup_copies_the_database_whole_and_says_where(data_dir, tmp_path):
    """`relay clinic backup`: a copy under the lock, CHECKPOINTed (nothing left in a .wal), named
    by the time, with its sha256; a clinic with no database here is a clear error."""
    from typer.testing import CliRunner

    from relay.cli.clinic import clinic_app
    from tasks.config import load_clinic

    runner = CliRunner()
    missing = runner.invoke(clinic_app, ["backup", "demo", "--to", str(tmp_path / "b")])
    assert missing.exit_code != 0 and "no database on this machine" in str(missing.exception)
    path = load_clinic("demo").database_path
    with open_db(path) as con:
        con.execute("CREATE TABLE state.kept AS SELECT 42 AS answer")
    out = runner.invoke(clinic_app, ["backup", "demo", "--to", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    (copy,) = (tmp_path / "b").glob("demo-*.duckdb")
    assert str(copy) in out.output and home.sha256(copy) in out.output
    with open_db(copy, read_only=True) as con:
        assert con.execute("SELECT answer FROM state.kept").fetchall() == [(42,)]


def test_a_backup_folder_it_cannot_make_is_one_clear_error_naming_it(tmp_path):
    """docs/scaling.md, Backups: any error fails the command, saying so; not a traceback of
    FileNotFoundError from mkdir (/proc takes no folders)."""
    from tasks.errors import UserFacingError

    source = tmp_path / "acme.duckdb"
    tick(source, Store(), "one")
    with pytest.raises(UserFacingError, match=r"could not be written to /proc/bk: No such file"):
        home.backup_database(source, Path("/proc/bk/acme.duckdb"))


def test_a_copy_that_fails_halfway_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A disk that fills during the copy: the partial file is removed, and the error names the
    folder and the reason."""
    import errno

    from tasks.errors import UserFacingError

    source = tmp_path / "acme.duckdb"
    tick(source, Store(), "one")

    def half_then_full(src, dst):
        Path(dst).write_bytes(b"half a database")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(home.shutil, "copyfile", half_then_full)
    backups = tmp_path / "backups"
    with pytest.raises(UserFacingError, match=f"written to {backups}: No space left on device"):
        home.backup_database(source, backups / "acme-g1.duckdb")
    assert list(backups.iterdir()) == []  # no .partial, no copy


def test_a_database_it_cannot_open_is_named_not_the_backup_folder(tmp_path):
    """The database's own folder refusing the backup's lock (a dead machine's disk mounted
    read-only, as docs/scaling.md's "A lost machine" has `relay clinic move` run "with that disk
    mounted"; here its lock file is a folder): the error said "The backup could not be written to
    <backup folder>", a folder with nothing wrong; it names the database's side and what a backup
    needs."""
    from tasks.errors import UserFacingError

    source = tmp_path / "data" / "acme.duckdb"
    tick(source, Store(), "one")
    (tmp_path / "data" / "acme.duckdb.lock").unlink()
    (tmp_path / "data" / "acme.duckdb.lock").mkdir()
    backups = tmp_path / "backups"
    with pytest.raises(UserFacingError) as refused:
        home.backup_database(source, backups / "acme-g1.duckdb")
    said = str(refused.value)
    assert "could not be written" not in said and f"{source}.lock: Is a directory" in said, said
    assert "writable" in said and not list(backups.glob("*")), said
