"""Nothing local that should be shared (issue 14 §2), on a real Prefect server:

- an unsubscribe click on an endpoint with no clinic database (another machine) becomes a
  ``relay.unsubscribe`` event, and the clinic's feedback step on its home records it once,
  however often it re-reads;
- a click while the server is down is spooled and sent when it is back: nothing is lost;
- the signing key is the server's shared Secret block on every machine; a server that keeps
  clinic home records and has none is an error that says what to do, never a local key.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tasks import feedback_events
from tasks.config import ClinicConfig
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.unsubscribe.app import create_app
from tasks.unsubscribe.events import server_events
from tasks.unsubscribe.tokens import sign
from tasks.warehouse import open_db

pytestmark = [pytest.mark.prefect]

KEY = b"fleet-test-unsubscribe-key"
ADDRESS = "pat.fleet@example.com"


@pytest.fixture
def home(tmp_path):
    """The clinic's home: its database, with a marketing email sent to patient 7."""
    clinic = f"evt-{uuid.uuid4().hex[:8]}"  # its own events: tests never see each other's
    config = ClinicConfig(clinic=clinic, name="Fleet Physio", database=tmp_path / "home.duckdb")
    now = datetime.now(UTC)
    key = make_send_key("campaign", "spring", 7, "2026-03")
    with open_db(config.database_path) as con:
        ledger.insert_planned(
            con, [PlannedMessage(key, "campaign", "spring", 7, "email", "marketing", "recall",
                                 now - timedelta(hours=1))], now - timedelta(hours=2),
        )  # fmt: skip
        message_id = ledger.get(con, key).message_id
        ledger.transition(con, [message_id], "planned", "sending", now,
                          values={"to_address": [ADDRESS]})  # fmt: skip
        ledger.transition(con, [message_id], "sending", "sent", now)
    return config, message_id


def endpoint(config: ClinicConfig, api: str, spool: Path):
    """The endpoint on another machine: the clinic's settings, but no database file there."""
    from sandbox.server import ThreadedServer

    elsewhere = config.model_copy(update={"database": spool.parent / "not-here.duckdb"})
    events = server_events(api, spool)
    return ThreadedServer(create_app({config.clinic: elsewhere}, key=KEY, events=events)), events


def pull(client, config: ClinicConfig) -> dict:
    """The feedback step's events pull on the clinic's home."""
    with open_db(config.database_path) as con:
        return dict(
            feedback_events.pull_unsubscribe_events(
                con, config.clinic, datetime.now(UTC),
                post=lambda path, body: client.request("POST", path, json=body).json(),
                get=lambda url: client.request("GET", url).json(),
            )
        )  # fmt: skip


def suppressions(config: ClinicConfig) -> list[tuple]:
    with open_db(config.database_path, read_only=True) as con:
        return con.execute("SELECT address, scope, source FROM state.suppressions").fetchall()


def wait_recorded(client, config) -> dict:
    """Events are stored by the server a moment after it accepts them: pull until one lands."""
    import time

    deadline = time.monotonic() + 60
    while not (pulled := pull(client, config)):
        assert time.monotonic() < deadline, "the click's event never reached the server"
        time.sleep(0.5)
    return pulled


def test_a_click_elsewhere_reaches_the_clinics_home_as_an_event_and_is_recorded_once(
    prefect_server, client, home, tmp_path
):
    config, message_id = home
    server, _ = endpoint(config, prefect_server["PREFECT_API_URL"], tmp_path / "spool.jsonl")
    token = sign(config.clinic, 7, message_id, "email", key=KEY)
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        reply = http.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert reply.status_code == 202 and "received" in reply.text
    assert not (tmp_path / "not-here.duckdb").exists()  # the endpoint holds no clinic database

    assert wait_recorded(client, config) == {"unsubscribe_suppress": 1}
    assert suppressions(config) == [(ADDRESS, "marketing", "unsubscribe_link")]
    # Re-reading (the overlap, a crash before the cursor moved) records nothing twice.
    assert pull(client, config) == {}
    with open_db(config.database_path) as con:
        con.execute("DELETE FROM state.feedback_cursors WHERE feed = 'events'")
    assert pull(client, config) == {}
    assert len(suppressions(config)) == 1


def test_a_click_while_the_server_is_down_is_spooled_and_sent_when_it_is_back(
    prefect_server, client, home, tmp_path
):
    from relay.serve import free_port

    config, message_id = home
    spool = tmp_path / "spool.jsonl"
    down = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    server, events = endpoint(config, down, spool)
    token = sign(config.clinic, 7, message_id, "email", key=KEY)
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        reply = http.post(f"/unsubscribe/{token}")
    assert reply.status_code == 202  # the person is told it is received, as always
    assert events.pending() == 1 and ADDRESS not in spool.read_text()

    back = server_events(prefect_server["PREFECT_API_URL"], spool)  # the server answers again
    assert back.flush() == 1 and back.pending() == 0
    assert wait_recorded(client, config) == {"unsubscribe_suppress": 1}


def test_the_key_is_the_servers_shared_secret_and_its_absence_with_homes_is_an_error(
    prefect_server, client, monkeypatch
):
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    from tasks.unsubscribe import tokens

    monkeypatch.delenv("RELAY_UNSUBSCRIBE_SECRET", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server["PREFECT_API_URL"])
    tokens._from_server.cache_clear()
    Variable.set("relay_home_fleettest", {"machine": "m1", "generation": 1}, overwrite=True)
    try:
        with pytest.raises(tokens.MissingSharedSecret, match=tokens.SECRET_BLOCK):
            tokens.secret_key()

        Secret(value="one key for every machine").save(tokens.SECRET_BLOCK, overwrite=True)
        tokens._from_server.cache_clear()
        assert tokens.secret_key() == b"one key for every machine"
    finally:
        Variable.unset("relay_home_fleettest")
        client.delete_block_document(Secret.load(tokens.SECRET_BLOCK)._block_document_id)
        tokens._from_server.cache_clear()
