"""`relay connect` beside what already exists. A database synced from one Cliniko account must
not be handed to another (a `--force` reconnect with another account's key, or a clinic folder
removed and connected again): the sync would read the new account only from the old account's
watermarks, most of its patients never, beside the old account's patients. And the blocks
another clinic's file names are never saved over. Over real HTTP against two sandbox clinics."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from relay.cli import app
from sandbox.cliniko import SandboxClinic, SandboxServer
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient
from tasks.connect import ConnectFailed
from tasks.warehouse import open_db
from tests.unit.test_analyst import held_elsewhere  # another process holding the database

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


def test_a_run_holding_the_database_is_named_and_a_check_only_goes_on(
    accounts, tmp_path, monkeypatch
):
    """`relay connect CLINIC --check-only` re-checks a live clinic's accounts (docs/connect.md):
    a tick holding its database does not stop that; a save waits for it, then stops."""
    from relay.cli import connect
    from tasks.dblock import DatabaseBusy

    first, _second = accounts
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(connect, "CHECK_WAIT", 0.5)
    monkeypatch.setattr(connect, "SAVE_WAIT", 0.5)
    database = tmp_path / "data" / "acme.duckdb"
    _synced(database, first)
    with held_elsewhere(database, 60):
        checked = _connect(first)
        assert checked.exit_code == 0, checked.output + repr(checked.exception)
        output = " ".join(checked.output.split())
        assert "database was not checked" in output and "in use by" in output
        result = _connect(first, check_only=False)
        assert isinstance(result.exception, DatabaseBusy), result.output
        assert not (tmp_path / "clinics" / "acme").exists()


@pytest.mark.parametrize("other", ["acme-north", "acme-old"])
def test_connect_never_saves_over_the_blocks_another_clinic_names(
    accounts, tmp_path, monkeypatch, other
):
    """Block names come from the clinic's name with '_' as '-': `acme_north` gets the blocks of
    `acme-north`; and a clinic folder renamed (`acme` kept as `acme-old`) keeps naming `acme`'s
    blocks. Connect said "Pass --force to replace them", which gave the other clinic this
    account's credentials: its ticks then synced this account into its database."""
    first, _second = accounts
    clinics = tmp_path / "clinics"
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(clinics))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    name = "acme_north" if other == "acme-north" else "acme"
    block = name.replace("_", "-")
    (clinics / other).mkdir(parents=True)
    existing = clinics / other / "clinic.yaml"
    existing.write_text(
        f"clinic: {other.replace('-', '_')}\nname: Other\ntime_zone: Australia/Sydney\n"
        f"cliniko:\n  account: {block}-cliniko\n",
        encoding="utf-8",
    )
    clinic, url = first
    for force in ([], ["--force"]):
        result = CliRunner().invoke(
            app,
            ["connect", name, "--cliniko-key", clinic.api_key, "--contact-email", CONTACT,
             "--cliniko-base-url", url, "--no-email", "--no-sms", *force],
        )  # fmt: skip
        assert isinstance(result.exception, ConnectFailed), result.output
        assert result.exception.problem == "block_of_another_clinic"
        message = " ".join(str(result.exception).split())
        assert f"{block}-cliniko" in message and str(existing) in message
        assert "--force" not in message.replace("even with --force", "")
    assert sorted(p.name for p in clinics.iterdir()) == [other]
