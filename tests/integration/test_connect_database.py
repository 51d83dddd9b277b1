"""`relay connect` against a clinic whose database already exists: a database synced from one
Cliniko account must not be handed to another (a `--force` reconnect with another account's
key, or a clinic folder removed and connected again). The sync would read the new account only
from the old account's watermarks: most of its patients never, and the old account's patients
would stay beside them. Over real HTTP against two sandbox clinics."""

from __future__ import annotations

import time

import pytest

from sandbox.cliniko import SandboxClinic, SandboxServer
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient
from tasks.connect import ConnectFailed
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

CONTACT = "owner@acme-physio.com.au"


@pytest.fixture(scope="module")
def accounts():
    """The account first connected (and synced), and the one connected after it."""
    first = SandboxClinic.generate(seed=21, patients=8, appointments_per_patient=1)
    second = SandboxClinic.generate(seed=22, patients=8, appointments_per_patient=1)
    with (
        SandboxServer(first, rate_limit=None) as one,
        SandboxServer(second, rate_limit=None) as two,
    ):
        yield (first, one.base_url), (second, two.base_url)


def _synced(database, account) -> None:
    clinic, url = account
    with open_db(database) as con, ClinikoClient(clinic.api_key, CONTACT, url, pace=None) as c:
        extract.run_sync(con, c)


def _connect(account, *extra: str, check_only: bool = True):
    from typer.testing import CliRunner

    from relay.cli import app

    clinic, url = account
    business = clinic.snapshot("businesses", url)
    args = ["connect", "acme", "--cliniko-key", clinic.api_key, "--contact-email", CONTACT,
            "--business", str(min(business)), "--cliniko-base-url", url, "--no-email",
            "--no-sms", *(["--check-only"] if check_only else []), *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_connect_refuses_a_database_synced_from_another_cliniko_account(
    accounts, tmp_path, monkeypatch
):
    first, second = accounts
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    database = tmp_path / "data" / "acme.duckdb"
    _synced(database, first)

    # the same account again (a new key, another user of it): its database is its own
    same = _connect(first)
    assert same.exit_code == 0, same.output + repr(same.exception)

    other = _connect(second, "--force")
    assert isinstance(other.exception, ConnectFailed), other.output
    assert other.exception.problem == "other_account"
    message = " ".join(str(other.exception).split())
    assert str(database) in message and "another Cliniko account" in message
    assert "Move" in message  # what to do about it
    assert not (tmp_path / "clinics" / "acme").exists()  # nothing written or left behind


def test_connect_takes_a_database_never_synced(accounts, tmp_path, monkeypatch):
    _first, second = accounts
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    with open_db(tmp_path / "data" / "acme.duckdb"):
        pass  # created with its tables, nothing synced into it
    result = _connect(second)
    assert result.exit_code == 0, result.output + repr(result.exception)


def _hold_for(path, seconds, ready):
    with open_db(path):
        ready.set()
        time.sleep(seconds)


def test_a_run_holding_the_database_is_named_and_a_check_only_goes_on(
    accounts, tmp_path, monkeypatch
):
    """`relay connect CLINIC --check-only` re-checks a live clinic's accounts (docs/connect.md):
    a tick holding its database does not stop that; a save waits for it, then stops."""
    import multiprocessing

    from relay.cli import connect
    from tasks.dblock import DatabaseBusy

    first, _second = accounts
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(connect, "CHECK_WAIT", 0.5)
    monkeypatch.setattr(connect, "SAVE_WAIT", 0.5)
    database = tmp_path / "data" / "acme.duckdb"
    _synced(database, first)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_for, args=(database, 60, ready))
    holder.start()
    try:
        assert ready.wait(60)
        checked = _connect(first)
        assert checked.exit_code == 0, checked.output + repr(checked.exception)
        output = " ".join(checked.output.split())
        assert "database was not checked" in output and "in use by" in output
        result = _connect(first, check_only=False)
        assert isinstance(result.exception, DatabaseBusy), result.output
        assert not (tmp_path / "clinics" / "acme").exists()
    finally:
        holder.terminate()
        holder.join()
