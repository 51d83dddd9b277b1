"""The endpoint's events: a click is an event with ids only, and a click while the server
cannot be reached waits in the spool (nothing lost), then goes first, re-dated to when it is
sent so no tick's cursor has passed it. The real server: tests/flows/test_unsubscribe_events.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx

from tasks.unsubscribe.events import EVENT, PrefectEvents
from tasks.unsubscribe.tokens import UnsubscribeClaim

CLICKED = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
CLAIM = UnsubscribeClaim("acme", 7, 42, "email")


class Server:
    """Stands in for POST /api/events: down until told otherwise."""

    def __init__(self) -> None:
        self.up, self.received = False, []

    def post(self, events: list[dict]) -> None:
        if not self.up:
            raise httpx.ConnectError("connection refused")
        self.received += events


def test_a_click_is_an_event_about_its_clinic_with_ids_only(tmp_path):
    server = Server()
    server.up = True
    events = PrefectEvents(tmp_path / "spool.jsonl", server.post)

    assert events.send(CLAIM, CLICKED) == "sent"
    [event] = server.received
    assert event["event"] == EVENT
    assert event["resource"]["prefect.resource.id"] == "relay.clinic.acme"
    assert event["payload"] == {"click": event["id"], "patient_id": 7, "message_id": 42,
                                "channel": "email", "at": CLICKED.isoformat()}  # fmt: skip


def test_while_the_server_is_down_clicks_wait_in_the_spool_and_go_first_when_it_is_back(tmp_path):
    server, later = Server(), CLICKED + timedelta(minutes=20)
    spool = tmp_path / "spool.jsonl"
    events = PrefectEvents(spool, server.post, clock=lambda: later)

    assert events.send(CLAIM, CLICKED) == "spooled"
    assert events.flush() == 0 and events.pending() == 1  # still down: kept
    spool.write_text(spool.read_text() + '{"cut short', encoding="utf-8")  # a torn last line

    server.up = True
    other = UnsubscribeClaim("acme", 8, 43, "sms")
    assert events.send(other, later) == "sent"
    first, second = server.received
    assert first["payload"]["patient_id"] == 7 and second["payload"]["patient_id"] == 8
    assert first["occurred"] == later.isoformat()  # re-dated: after any tick's cursor
    assert first["payload"]["at"] == CLICKED.isoformat()  # the click's own time is kept
    assert events.pending() == 0 and spool.read_text() == ""


def test_the_spool_holds_no_address(tmp_path):
    spool = tmp_path / "spool.jsonl"
    PrefectEvents(spool, Server().post).send(CLAIM, CLICKED)
    line = json.loads(spool.read_text())
    assert set(line["payload"]) == {"click", "patient_id", "message_id", "channel", "at"}


def test_a_server_that_answers_with_an_error_is_named_for_what_it_said_not_unreachable(
    tmp_path, caplog
):
    """A 401 is a key to set, a 404 an address to fix: "unreachable" sent operators to look at
    the network. The click is spooled either way (nothing lost), the background retry says a
    new reason once, not every 30 s, and no log line names an address or a URL."""
    url = "http://127.0.0.1:4200/api/events"
    answer = {"status": 401}

    def post(events: list[dict]) -> None:
        response = httpx.Response(answer["status"], request=httpx.Request("POST", url))
        response.raise_for_status()

    events = PrefectEvents(tmp_path / "spool.jsonl", post)
    with caplog.at_level("WARNING", logger="relay.unsubscribe"):
        assert events.send(CLAIM, CLICKED) == "spooled"
        assert events.flush() == 0 and events.flush() == 0  # same reason: not said again
        answer["status"] = 404
        assert events.flush() == 0
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "HTTP 401" in said[0] and "PREFECT_API_KEY" in said[0]
    assert "HTTP 404" in said[1] and "/api" in said[1]
    assert not any("unreachable" in line or url in line for line in said)
    assert events.pending() == 1

    caplog.clear()
    with caplog.at_level("WARNING", logger="relay.unsubscribe"):
        events.post = Server().post  # down: refused connection
        assert events.send(UnsubscribeClaim("acme", 8, 43, "sms"), CLICKED) == "spooled"
    assert "unreachable (ConnectError)" in caplog.records[0].getMessage()
