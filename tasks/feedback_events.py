"""Unsubscribe clicks that arrived as Prefect events (tasks/unsubscribe/events.py), recorded by
the clinic's own tick, on its home machine.

Each pull asks the server for the clinic's ``relay.unsubscribe`` events that occurred since the
feed's cursor (``state.feedback_cursors``: unsubscribe_link / events) minus ``OVERLAP``, oldest
first, page by page, and records them through ``feedback.record_clicks`` in ONE transaction with
the cursor moved to the newest event read. A pull killed at any moment loses nothing (the cursor
did not move, the next pull reads the same events again) and records nothing twice (click ids
are item keys). The overlap covers events that reach the server a little after others that
occurred later (another machine's clock, a slow network). A clinic's first pull reads
everything the server keeps (Prefect keeps events ``PREFECT_EVENTS_RETENTION_PERIOD``, 7 days
by default: a clinic whose ticks stop for longer loses older clicks).

``post(path, body)`` and ``get(url)`` reach the Prefect API (the flow passes its client's); this
module imports nothing of Prefect. Nothing here logs or returns an address: results are counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb

from tasks import feedback
from tasks.unsubscribe.events import EVENT, resource_id

OVERLAP = timedelta(minutes=10)
FIRST_PULL = datetime(2000, 1, 1, tzinfo=UTC)
PAGE = 50  # the server's page size for /events/filter (its maximum)
FEED = "events"


def pull_unsubscribe_events(
    con: duckdb.DuckDBPyConnection,
    clinic: str,
    now: datetime,
    post: Callable[[str, dict], dict],
    get: Callable[[str], dict],
) -> Counter:
    """Record the clinic's unsubscribe events since the cursor; counts by outcome."""
    last = feedback.cursor(con, "unsubscribe_link", FEED)
    since = (last - OVERLAP) if last else FIRST_PULL
    try:
        events = read_events(clinic, since, now, post, get)
    except Exception as exc:  # the server's client raises its own HTTP errors
        raise feedback.FeedbackUnavailable(
            f"unsubscribe events could not be read from the Prefect server "
            f"({type(exc).__name__}); they stay there for the next tick"
        ) from None
    if not events:
        return Counter()
    clicks = [e["payload"] for e in events if _valid(e.get("payload"))]
    newest = max((feedback.parse_time(e["occurred"]) for e in events), default=None)
    counts = feedback.record_clicks(con, clicks, now, cursor_feed=FEED, cursor_at=newest)
    counts["unsubscribe_events_unreadable"] += len(events) - len(clicks)
    return +counts


def read_events(
    clinic: str, since: datetime, until: datetime, post: Callable, get: Callable
) -> list[dict]:
    """Every relay.unsubscribe event about the clinic that occurred in [since, until]."""
    page = post(
        "/events/filter",
        {
            "filter": {
                "occurred": {"since": since.isoformat(), "until": until.isoformat()},
                "event": {"name": [EVENT]},
                "resource": {"id": [resource_id(clinic)]},
                "order": "ASC",
            },
            "limit": PAGE,
        },
    )
    events = list(page["events"])
    while page.get("next_page"):
        page = get(page["next_page"])
        events += page["events"]
    return events


def _valid(payload) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("click"), str)
        and str(payload.get("patient_id", "")).isdigit()
        and str(payload.get("message_id", "")).isdigit()
        and payload.get("channel") in ("email", "sms")
        and isinstance(payload.get("at"), str)
    )
