"""The Prefect server may be named in Prefect's profile (`prefect config set PREFECT_API_URL=...`,
as Prefect's docs set it up), not in the environment. The unsubscribe key and the endpoint's
events used to look at the environment only: such a machine of a fleet signed and checked links
with a key of its own (data/secrets/unsubscribe.key) and recorded clicks in a database that is
not the clinic's, while its ticks and `relay clinic` commands used the shared server."""

from __future__ import annotations

import pytest

UNREACHABLE = "http://127.0.0.1:9/api"  # the discard port: nothing answers


@pytest.fixture
def profile_server(monkeypatch, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.unsubscribe import tokens

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("RELAY_UNSUBSCRIBE_SECRET", raising=False)
    tokens._from_server.cache_clear()
    with temporary_settings(updates={PREFECT_API_URL: UNREACHABLE}):
        yield tmp_path
    tokens._from_server.cache_clear()


def test_the_key_comes_from_the_profiles_server_never_a_local_one(profile_server):
    from tasks.unsubscribe import tokens

    with pytest.raises(tokens.MissingSharedSecret, match="Cannot read the unsubscribe key"):
        tokens.secret_key()
    assert not (profile_server / "secrets" / "unsubscribe.key").exists()


def test_the_endpoint_sends_clicks_to_the_profiles_server(profile_server):
    from tasks.unsubscribe.app import endpoint_events

    events = endpoint_events()
    assert events is not None
    assert events.spool == profile_server / "unsubscribe-events.jsonl"
