"""Postmark's open and link tracking, for the Postmark sandbox (sandbox/postmark.py mixes it in).

As Postmark documents it (https://postmarkapp.com/developer/user-guide/tracking-opens,
.../tracking-links, https://postmarkapp.com/developer/api/messages-api):

- Off unless switched on. Opens: a message's ``TrackOpens: true``, or the server's "Open
  tracking" setting (``track_opens`` here, shown by ``GET /server``), which forces it on for every
  message. Links: a message's ``TrackLinks`` (``None``, ``HtmlAndText``, ``HtmlOnly``,
  ``TextOnly``) wins over the server's ``track_links`` when present.
- Opens are a pixel in the HTML body: a plain-text email never has an open, even when asked.
  Links are rewritten only in the parts ``TrackLinks`` names, so a text-only message can have
  clicks and no open.
- A recipient may open a message many times: every open is listed, the first with
  ``FirstOpen: true``, the rest false. Clicks repeat too (the same link clicked twice).
- ``GET /messages/outbound/opens`` and ``/messages/outbound/clicks``: ``count`` (1 to 500) and
  ``offset`` are required and ``count + offset`` may not pass 10,000 (nothing deeper can be
  read); newest first (``ReceivedAt`` descending); ``recipient``, ``tag`` and ``messagestream``
  filters. Like the outbound search, a request without ``messagestream`` reads the transactional
  stream only (the conservative reading: a client that names the stream works either way).

Activity happens along the sandbox clock: with ``open_rate``/``click_rate`` above zero, each
tracked message is given (from ``seed`` and the order it was accepted in) a first open some
minutes to two days after it was received, maybe repeated opens, and, when its links are
tracked, maybe clicks; an event is listed once the clock has passed it. ``open_message`` and
``click_message`` record one event now (or at ``at``), for tests that want exact counts; both
return False, recording nothing, for a message that is not tracked that way.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse

TRACK_LINKS = ("None", "HtmlAndText", "HtmlOnly", "TextOnly")
MAX_DEPTH = 10_000  # count + offset
_LINK = re.compile(r"https?://[^\s\"'<>]+")


class TrackingMixin:
    """Settings, simulated activity and the two Messages API routes. The host class provides
    ``accepted``, ``clock``, ``_lock``, ``_guard``, ``_error`` and ``DEFAULT_STREAM``."""

    def _init_tracking(self) -> None:
        self.track_opens = False  # the server's "Open tracking" setting
        self.track_links = "None"  # the server's "Link tracking" setting
        self.open_rate = 0.0  # share of tracked messages opened (simulated along the clock)
        self.click_rate = 0.0  # share of link-tracked messages clicked
        self.seed = 1
        self.opens: list[dict] = []  # every open event, with its "_at" time
        self.clicks: list[dict] = []

    # -- what a message gets -----------------------------------------------------------------

    def _tracking_of(self, item: dict) -> tuple[bool, list[tuple[str, str]]]:
        """(opens tracked, [(location, link)] of tracked links) for a message as sent."""
        html, text = item.get("HtmlBody") or "", item.get("TextBody") or ""
        opens = bool(item.get("TrackOpens") or self.track_opens) and bool(html)
        mode = item.get("TrackLinks")
        mode = mode if mode in TRACK_LINKS else self.track_links
        links = []
        if mode in ("HtmlAndText", "HtmlOnly"):
            links += [("HTML", u) for u in _LINK.findall(html)]
        if mode in ("HtmlAndText", "TextOnly"):
            links += [("Text", u) for u in _LINK.findall(text)]
        return opens, links

    def _plan_activity(self, message: dict, ordinal: int) -> None:
        """Give a newly accepted message its simulated opens and clicks (future events)."""
        opens, links = self._tracking_of(message)
        if not (opens or links) or not (self.open_rate or self.click_rate):
            return
        rng = random.Random(f"{self.seed}:{ordinal}")
        start: datetime = message["ReceivedAt"]
        first = start + timedelta(minutes=rng.uniform(2, 48 * 60))
        if opens and rng.random() < self.open_rate:
            self._record_open(message, first, True)
            for _ in range(rng.choice((0, 0, 1, 2))):  # some people open it again
                self._record_open(message, first + timedelta(hours=rng.uniform(1, 24)), False)
        if links and rng.random() < self.click_rate:
            location, link = rng.choice(links)
            at = first + timedelta(minutes=rng.uniform(0, 30))
            for _ in range(rng.choice((1, 1, 2))):
                self._record_click(message, location, link, at)
                at += timedelta(minutes=rng.uniform(1, 60))

    def open_message(self, message_id: str, at: datetime | None = None) -> bool:
        message = self._message(message_id)
        if not self._tracking_of(message)[0]:
            return False
        with self._lock:
            first = not any(o["MessageID"] == message_id for o in self.opens)
        self._record_open(message, at or self.clock(), first)
        return True

    def click_message(self, message_id: str, at: datetime | None = None) -> bool:
        message = self._message(message_id)
        links = self._tracking_of(message)[1]
        if not links:
            return False
        self._record_click(message, *links[0], at or self.clock())
        return True

    def _message(self, message_id: str) -> dict:
        return next(m for m in self.accepted if m["MessageID"] == message_id)

    def _event(self, message: dict, kind: str, at: datetime) -> dict:
        return {"RecordType": kind, "MessageID": message["MessageID"],
                "MessageStream": message.get("MessageStream") or self.DEFAULT_STREAM,
                "Recipient": message["To"], "Tag": message.get("Tag"),
                "ReceivedAt": at.isoformat(), "Platform": "Desktop",
                "Client": {"Name": "Apple Mail", "Company": "Apple", "Family": "Apple Mail"},
                "OS": {"Name": "macOS", "Company": "Apple", "Family": "OS X"},
                "UserAgent": "Mozilla/5.0", "Geo": {}, "_at": at}  # fmt: skip

    def _record_open(self, message: dict, at: datetime, first: bool) -> None:
        with self._lock:
            self.opens.append({**self._event(message, "Open", at), "FirstOpen": first,
                               "ReadSeconds": 12})  # fmt: skip

    def _record_click(self, message: dict, location: str, link: str, at: datetime) -> None:
        with self._lock:
            self.clicks.append(
                {**self._event(message, "Click", at), "ClickLocation": location,
                 "OriginalLink": link}
            )  # fmt: skip

    # -- the API ---------------------------------------------------------------------------

    async def _opens(self, request: Request):
        return await self._events(request, self.opens, "Opens")

    async def _clicks(self, request: Request):
        return await self._events(request, self.clicks, "Clicks")

    async def _events(self, request: Request, events: list[dict], key: str):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        try:
            count, offset = int(q["count"]), int(q["offset"])
        except (KeyError, ValueError):
            return self._error(300, "The 'count' and 'offset' parameters are required.")
        if not 1 <= count <= 500 or offset < 0:
            return self._error(300, "count must be between 1 and 500, offset 0 or more.")
        if count + offset > MAX_DEPTH:
            return self._error(300, f"count + offset may not exceed {MAX_DEPTH}.")
        stream = q.get("messagestream") or self.DEFAULT_STREAM
        now = self.clock()
        with self._lock:
            found = sorted(
                (e for e in events
                 if e["_at"] <= now and e["MessageStream"] == stream
                 and (not q.get("recipient") or e["Recipient"].lower() == q["recipient"].lower())
                 and (not q.get("tag") or e["Tag"] == q["tag"])),
                key=lambda e: e["_at"], reverse=True,
            )  # fmt: skip
        page = [{k: v for k, v in e.items() if not k.startswith("_")} for e in found]
        return JSONResponse({"TotalCount": len(found), key: page[offset : offset + count]})
