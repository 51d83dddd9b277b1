"""Unsubscribe clicks as Prefect events: how a click reaches its clinic's home from wherever the
endpoint runs, with no clinic database on the endpoint's machine.

The endpoint verifies the link and emits ``relay.unsubscribe`` about the resource
``relay.clinic.<clinic>`` (payload: patient id, message id, channel, a click id and when it was
clicked; never an address) with ``POST /api/events``; the clinic's tick reads the events since
its cursor (tasks/feedback_events.py) and records them.

A click is never lost when the server is briefly down: the endpoint then appends the event to a
local spool file (fsynced, owner-only: ids only) and answers "received" as usual; every later
click, and a background thread every ``RETRY_SECONDS``, sends what the spool holds, oldest first,
and empties it. A spooled event is sent with ``occurred`` set when it is sent (the click's own
time stays in its payload), so a tick's cursor, which follows ``occurred``, never passes over it.
The click id is the event id, so an event sent twice (a crash between sending and emptying the
spool) is recorded once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tasks.unsubscribe.tokens import UnsubscribeClaim

EVENT = "relay.unsubscribe"
RETRY_SECONDS = 30.0
log = logging.getLogger("relay.unsubscribe")


def resource_id(clinic: str) -> str:
    return f"relay.clinic.{clinic}"


def click_event(claim: UnsubscribeClaim, at: datetime) -> dict:
    """The event of one verified click (ids only); its id is the click's id."""
    click = str(uuid.uuid4())
    return {
        "id": click,
        "event": EVENT,
        "occurred": at.isoformat(),
        "resource": {"prefect.resource.id": resource_id(claim.clinic),
                     "prefect.resource.name": claim.clinic},
        "payload": {"click": click, "patient_id": claim.patient_id,
                    "message_id": claim.message_id, "channel": claim.channel,
                    "at": at.isoformat()},
        "related": [],
    }  # fmt: skip


class PrefectEvents:
    """Where the endpoint sends clicks: the Prefect server's events API, or the local spool
    while it cannot be reached. ``post(events)`` sends a batch and raises on any failure."""

    def __init__(
        self,
        spool: Path,
        post: Callable[[list[dict]], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.spool, self.post, self.clock = spool, post, clock
        self._stop = threading.Event()
        self._refused: str | None = None  # why the last send failed (None: it did not)

    def send(self, claim: UnsubscribeClaim, at: datetime) -> str:
        """Emit the click's event (after whatever the spool holds); 'sent' or 'spooled'."""
        event = click_event(claim, at)
        with self._locked():
            try:
                self._flush_locked()
                self.post([event])
                return "sent"
            except (httpx.HTTPError, OSError) as exc:
                self._refused = why_not_sent(exc)
                log.warning("%s: %s; click spooled (sent with the next click, or within %.0f s)",
                            claim.clinic, self._refused, RETRY_SECONDS)  # fmt: skip
                self._append(event)
                return "spooled"

    def flush(self) -> int:
        """Send what the spool holds; how many went (0 while the server is still down)."""
        with self._locked():
            try:
                return self._flush_locked()
            except (httpx.HTTPError, OSError) as exc:
                if (why := why_not_sent(exc)) != self._refused:  # said once, not every retry
                    self._refused = why
                    log.warning("%d spooled unsubscribe click(s) not sent: %s", len(self._read()),
                                why)  # fmt: skip
                return 0

    def pending(self) -> int:
        with self._locked():
            return len(self._read())

    @contextlib.contextmanager
    def retrying(self, every: float = RETRY_SECONDS) -> Iterator[PrefectEvents]:
        """A background thread that flushes the spool every ``every`` seconds meanwhile."""

        def loop() -> None:
            while not self._stop.wait(every):
                self.flush()

        self._stop.clear()
        thread = threading.Thread(target=loop, name="unsubscribe-spool", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)

    # --- the spool -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool.with_name(self.spool.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[dict]:
        if not self.spool.exists():
            return []
        events = []
        for line in self.spool.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a crash mid-write
                events.append(json.loads(line))
        return events

    def _append(self, event: dict) -> None:
        fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(event) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _flush_locked(self) -> int:
        events = self._read()
        if not events:
            return 0
        now = self.clock().isoformat()
        self.post([{**e, "occurred": now} for e in events])
        os.truncate(self.spool, 0)
        self._refused = None
        log.info("sent %d spooled unsubscribe clicks", len(events))
        return len(events)


def why_not_sent(exc: BaseException) -> str:
    """What stopped an event reaching the Prefect server, and what to check: a server that
    answered (with an HTTP status) is not "unreachable". Names no URL, header or patient."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status in (401, 403):
            return (
                f"the Prefect server refused the endpoint's credentials (HTTP {status}): "
                "set PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING (a server "
                "with basic auth) where the endpoint runs, as the server expects"
            )
        if status == 404:
            return (
                "the Prefect server has no events API at PREFECT_API_URL (HTTP 404): it "
                "should be the API's address, ending in /api"
            )
        if status >= 500:
            return f"the Prefect server failed (HTTP {status})"
        return f"the Prefect server refused the event (HTTP {status})"
    return f"the Prefect server is unreachable ({type(exc).__name__})"


def prefect_poster(api_url: str, headers: dict[str, str] | None = None, timeout: float = 5.0):
    """``post(events)`` for ``POST <api>/events`` (Prefect's "record a batch of events")."""

    def post(events: list[dict]) -> None:
        response = httpx.post(
            f"{api_url.rstrip('/')}/events", json=events, headers=headers or {}, timeout=timeout
        )
        response.raise_for_status()

    return post


def server_events(api_url: str, spool: Path) -> PrefectEvents:
    """The endpoint's events for the Prefect server at ``api_url``, authenticated as Prefect's
    own client is (PREFECT_API_KEY or PREFECT_API_AUTH_STRING), with a short timeout: a click
    never waits on Prefect's retries, it is spooled instead."""
    import base64

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    def plain(value) -> str:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)

    headers = {}
    if key := PREFECT_API_KEY.value():
        headers["Authorization"] = f"Bearer {plain(key)}"
    elif auth := PREFECT_API_AUTH_STRING.value():
        headers["Authorization"] = "Basic " + base64.b64encode(plain(auth).encode()).decode()
    return PrefectEvents(spool, prefect_poster(api_url, headers))
