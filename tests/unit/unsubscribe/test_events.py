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
