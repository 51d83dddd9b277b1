"""A machine's name given on the command line must make a work queue, `machine-<name>`.

`relay clinic move north --to "$NEW_HOST"` with the variable unset moved north to '': the move
was recorded (moving_to '', its backup made, its deployments put on queue 'machine-') but no
tick saw a move under way (the empty name reads as none), so the clinic went on sending from
its home, and the move sent on to the right machine afterwards restored the backup made before
those sends (a backup of that generation was already recorded): the new home would send them
again. A name Prefect refuses in a queue's name failed after the clinic was paused and backed up.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tasks.errors import UserFacingError
from tasks.home import Home

from .homes import Store, as_machine

BAD = ["", "   ", " b", "box/2", "a&b"]


class NoClient:
    def __getattr__(self, name):
        raise AssertionError(f"the move reached the Prefect server ({name})")


@pytest.mark.parametrize("to", BAD)
def test_a_move_to_a_name_that_makes_no_queue_is_refused_before_anything(monkeypatch, tmp_path, to):
    import relay.cli.clinic as cli

    database = tmp_path / "north.duckdb"
    database.write_bytes(b"")
    home = Home(machine="a", generation=1, database="l" * 32)
    store = Store(home)
    as_machine(monkeypatch, "a", store, database, client=NoClient())
    with pytest.raises(UserFacingError, match="--to: .*Nothing was moved"):
        cli.move("north", to, backup_root=tmp_path / "backups", wait_seconds=1, echo=print)
    assert store.home == home  # not moving: its ticks go on, and none is refused
    assert not (tmp_path / "backups").exists()


@pytest.mark.parametrize("name", BAD)
def test_deploy_refuses_such_a_home(monkeypatch, name):
    from relay.cli import app

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    result = CliRunner().invoke(app, ["deploy", "--home", name])
    assert result.exit_code == 2, result.output
    assert "--home" in result.output and "No Prefect server" not in result.output


@pytest.mark.parametrize("name", ["b", "box-2", "Box_2.lan", "10.0.0.7"])
def test_ordinary_names_pass(name):
    from tasks.homequeue import machine_problem

    assert machine_problem(name) is None


@pytest.mark.parametrize("name", ["   ", " b", "box/2", "a&b"])
def test_this_machine_refuses_a_name_that_makes_no_queue(monkeypatch, name):
    """RELAY_MACHINE=" b" (a stray space in a unit file) was taken as it was: `relay clinic
    claim` recorded it as the clinic's home and `relay worker` asked for queue 'machine- b',
    which no move or deploy (both refuse such a name) ever puts anything on."""
    from relay.cli import app
    from tasks.home import this_machine

    monkeypatch.setenv("RELAY_MACHINE", name)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    with pytest.raises(UserFacingError, match="This machine's name: .*Nothing was claimed"):
        this_machine()
    result = CliRunner().invoke(app, ["worker"])  # before it asks the server for a queue
    assert isinstance(result.exception, UserFacingError), result.output
    assert "This machine's name" in str(result.exception)
