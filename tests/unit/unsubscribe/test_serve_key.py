"""`relay serve-unsubscribe` checks its signing key before it serves: on a machine of a fleet
without the shared key it used to start, say "Serving unsubscribes", and answer every click 500
(Internal Server Error to the patient, the reason only in a traceback in its output)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


@pytest.fixture
def served(monkeypatch, tmp_path):
    """The command with uvicorn replaced: what it would have served, if anything."""
    import uvicorn

    clinics = tmp_path / "clinics" / "acme"
    clinics.mkdir(parents=True)
    (clinics / "clinic.yaml").write_text("clinic: acme\nname: Acme Physio\n")
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("RELAY_UNSUBSCRIBE_SECRET", raising=False)
    started: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(app))
    return started


def _run():
    from relay.cli import app

    return CliRunner().invoke(app, ["serve-unsubscribe", "--port", "18999"])


def test_no_shared_key_in_a_fleet_refuses_to_start_saying_what_to_do(served, monkeypatch):
    from tasks.unsubscribe import tokens

    def missing() -> bytes:
        raise tokens.MissingSharedSecret(f"no key is shared: save one in '{tokens.SECRET_BLOCK}'")

    monkeypatch.setattr(tokens, "secret_key", missing)
    result = _run()
    assert served == []  # never served a click it could only answer 500
    assert isinstance(result.exception, tokens.MissingSharedSecret), result.output
    assert "Serving unsubscribes" not in result.output


def test_with_a_key_it_serves(served, monkeypatch):
    monkeypatch.setenv("RELAY_UNSUBSCRIBE_SECRET", "one key for every machine")
    result = _run()
    assert result.exit_code == 0, result.output
    assert len(served) == 1 and "Serving unsubscribes" in result.output
