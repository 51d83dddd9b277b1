"""Commands that change a clinic's state outside its tick refuse an old copy (tasks/homecopy.py).

On a machine the clinic moved away from, its database stays behind one generation older. `relay
campaign cancel` there said "Cancelled ...: 2 planned messages will not be sent" while the home
sent them; `relay import-unsubscribes` recorded suppressions the home never read. Each now
refuses, naming the home; on the current copy it goes on, whatever RELAY_MACHINE says."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tasks import homecopy
from tasks.home import Home, HomeRefused, Identity, write_identity
from tasks.warehouse import open_db


class Store:
    def __init__(self, home):
        self.home = home

    def read(self, clinic):
        return self.home


@pytest.fixture
def demo_copy(data_dir, monkeypatch):
    """The demo clinic's database on this machine, lineage L, generation 1; the home record is
    set by each test (a shared server, as far as the commands can tell)."""
    from tasks.config import load_clinic

    with open_db(load_clinic("demo").database_path) as con:
        write_identity(con, Identity("demo", "l" * 32, 1, "one"))
    store = Store(None)
    monkeypatch.setattr(homecopy, "shared_server", lambda: True)
    monkeypatch.setattr(homecopy, "PrefectHomes", lambda: store)
    monkeypatch.delenv("RELAY_MACHINE", raising=False)
    return store


def _run(args):
    from relay.cli import app

    return CliRunner().invoke(app, args)


MOVED = Home("two", 2, database="l" * 32, moved_at="2026-12-05T04:10:22+00:00")


def test_cancelling_a_campaign_on_an_old_copy_refuses_and_names_the_home(demo_copy):
    demo_copy.home = MOVED
    out = _run(["campaign", "cancel", "recall-90-179", "--clinic", "demo"])
    assert out.exit_code != 0
    message = str(out.exception)
    assert isinstance(out.exception, HomeRefused), out.output
    assert "nothing changed" in message and "generation 1 of demo, the home's is generation 2" in (
        message
    )
    assert "Run this command on 'two'" in message


def test_importing_unsubscribes_on_an_old_copy_records_nothing(demo_copy, tmp_path):
    demo_copy.home = MOVED
    csv = tmp_path / "unsubscribed.csv"
    csv.write_text("email\nsomeone@example.com\n")
    out = _run(["import-unsubscribes", str(csv), "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    assert "Run this command on 'two'" in str(out.exception)


def test_an_opt_in_on_an_old_copy_records_nothing(demo_copy):
    demo_copy.home = MOVED
    out = _run(["patients", "opt-in", "someone@example.com", "--channel", "email",
                "--clinic", "demo", "--evidence", "asked at the desk"])  # fmt: skip
    assert isinstance(out.exception, HomeRefused), out.output
    assert "Run this command on 'two'" in str(out.exception)


def test_resolving_a_message_during_a_move_refuses(demo_copy):
    demo_copy.home = Home("one", 1, database="l" * 32, moving_to="two")
    out = _run(["ledger", "resolve", "some-key", "--sent", "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    assert "being moved from 'one' to 'two'" in str(out.exception)


def test_the_current_copy_goes_on_whatever_this_machine_is_called(demo_copy):
    """The home is 'one'; this shell has no RELAY_MACHINE (the host name): not refused."""
    demo_copy.home = Home("one", 1, database="l" * 32)
    out = _run(["campaign", "cancel", "recall-90-179", "--clinic", "demo"])
    assert not isinstance(out.exception, HomeRefused)
    assert "was never confirmed" in str(out.exception)  # the command's own answer


def test_a_database_of_its_own_refuses(tmp_path):
    with open_db(tmp_path / "demo.duckdb") as con:
        write_identity(con, Identity("demo", "m" * 32, 1, "one"))
        store = Store(Home("one", 1, database="y" * 32))
        with pytest.raises(HomeRefused, match="started on its own"):
            homecopy.require_current_copy(con, "demo", store=store)


def test_a_machine_without_the_clinics_database_is_sent_to_the_home(tmp_path):
    with open_db(tmp_path / "demo.duckdb") as con:
        with pytest.raises(HomeRefused) as refused:
            homecopy.require_current_copy(con, "demo", store=Store(MOVED))
    assert "this database is new: demo's is on 'two'. Run this command on 'two'" in str(
        refused.value
    )


def test_a_backup_of_an_old_copy_refuses_and_leaves_no_file(demo_copy, tmp_path):
    """A nightly `relay clinic backup` left on the machine the clinic moved away from went on
    copying its old copy, named by the time like any backup: the newest file in the backup
    folder was then generation 1, and the doc's recovery (put the last backup in place, claim
    it --fresh) would forget everything sent since the move, and send it again."""
    demo_copy.home = MOVED
    out = _run(["clinic", "backup", "demo", "--to", str(tmp_path / "nightly")])
    assert isinstance(out.exception, HomeRefused), out.output
    said = str(out.exception)
    assert said.startswith("demo: nothing backed up: this database is generation 1 of demo, "
                           "the home's is generation 2"), said  # fmt: skip
    assert "Run this command on 'two'" in said
    assert not list((tmp_path / "nightly").glob("*"))


def test_a_backup_of_the_current_copy_goes_on(demo_copy, tmp_path):
    demo_copy.home = Home("one", 1, database="l" * 32)
    out = _run(["clinic", "backup", "demo", "--to", str(tmp_path / "nightly")])
    assert out.exit_code == 0, out.output
    assert len(list((tmp_path / "nightly").glob("demo-*.duckdb"))) == 1


def test_a_backup_with_the_server_down_goes_on_saying_it_could_not_check(
    demo_copy, tmp_path, monkeypatch
):
    """A backup is the safety net: the server being away does not stop it."""
    import httpx

    def down(clinic):
        raise httpx.ConnectError("Connection refused")

    monkeypatch.setattr(demo_copy, "read", down)
    out = _run(["clinic", "backup", "demo", "--to", str(tmp_path / "nightly")])
    assert out.exit_code == 0, out.output
    assert "could not check" in out.output
    assert len(list((tmp_path / "nightly").glob("demo-*.duckdb"))) == 1


# The tick's steps run by hand write the database of the machine they run on, as the commands
# above do: run where the clinic does not live they wrote a copy the home never reads.


def test_a_sync_on_an_old_copy_refuses_before_reading_cliniko(demo_copy):
    """`relay sync` on the machine the clinic moved away from synced its old copy: the run said
    what it read while the home's copy, the one the ticks plan from, stayed as it was."""
    demo_copy.home = MOVED
    out = _run(["sync", "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    said = str(out.exception)
    assert said.startswith("demo: nothing synced: this database is generation 1"), said
    assert "Run this command on 'two'" in said


def test_a_sync_on_a_machine_that_is_not_the_home_makes_no_database(data_dir, monkeypatch):
    """`relay sync` on a machine without the clinic's database (its home is another) made one
    there: a second copy of the clinic's patients, on a machine that is not its home."""
    from tasks.config import load_clinic

    monkeypatch.setattr(homecopy, "shared_server", lambda: True)
    monkeypatch.setattr(homecopy, "PrefectHomes", lambda: Store(MOVED))
    monkeypatch.setenv("RELAY_MACHINE", "one")
    out = _run(["sync", "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    said = str(out.exception)
    assert said.startswith("demo: nothing synced: this machine ('one') has no database of demo"), (
        said
    )
    assert "Run this command on 'two'" in said
    assert not load_clinic("demo").database_path.exists()
    assert not list(data_dir.iterdir())


def test_feedback_on_an_old_copy_refuses(demo_copy):
    """`relay feedback` there recorded bounces and STOP replies the home never read, and said
    "N items recorded"."""
    demo_copy.home = MOVED
    out = _run(["feedback", "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    assert str(out.exception).startswith("demo: nothing recorded: this database is generation 1")
    assert "Run this command on 'two'" in str(out.exception)


def test_a_models_build_during_a_move_refuses(demo_copy):
    demo_copy.home = Home("one", 1, database="l" * 32, moving_to="two")
    out = _run(["models", "build", "--clinic", "demo"])
    assert isinstance(out.exception, HomeRefused), out.output
    assert "being moved from 'one' to 'two'" in str(out.exception)


def test_a_models_build_on_the_current_copy_goes_on(demo_copy):
    demo_copy.home = Home("one", 1, database="l" * 32)
    out = _run(["models", "build", "--clinic", "demo"])
    assert out.exit_code == 0, out.output
    assert "Built " in out.output


def test_a_sync_into_another_clinics_database_refuses_with_or_without_a_server(
    data_dir, monkeypatch
):
    """Two clinic.yaml naming one file (a folder copied with its `database:` line): `relay sync`
    of the copy wrote its Cliniko rows into the first clinic's database, whose next tick planned
    messages to them (only the copy's ticks were refused)."""
    from tasks.config import load_clinic

    with open_db(load_clinic("demo").database_path) as con:
        write_identity(con, Identity("acme", "a" * 32, 1, "one"))
    home = Home("one", 1, database="d" * 32)  # demo's home on record: the held check says it
    for server, store in ((False, Store(None)), (True, Store(None)), (True, Store(home))):
        monkeypatch.setattr(homecopy, "shared_server", lambda server=server: server)
        monkeypatch.setattr(homecopy, "PrefectHomes", lambda store=store: store)
        monkeypatch.setenv("RELAY_MACHINE", "one")
        for command, nothing in (("sync", "nothing synced"), ("feedback", "nothing recorded")):
            out = _run([command, "--clinic", "demo"])
            assert isinstance(out.exception, HomeRefused), out.output
            assert str(out.exception).startswith(
                f"demo: {nothing}: this database holds clinic 'acme', not 'demo'"
            ), str(out.exception)
