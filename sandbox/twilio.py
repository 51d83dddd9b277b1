"""A Twilio Messaging stand-in: create, list and fetch Messages under ``/2010-04-01/Accounts/{sid}``.

The real client reaches it through a redirecting http client (tasks/providers/twilio.py).
Recipients trigger errors like Twilio's test-credential magic numbers: ``+15005550004`` replied
STOP (21610), ``+15005550001`` is invalid (21211), ``+15005550009`` is not a mobile (21614), and so
does anything in the sets you pass; a To that is not E.164 is 21211. ``faults`` injects 5xx, 429
(code 20429), slowness, "timeout after receipt" and "500 after receipt" (the message created,
the answer Twilio's 20500). ``accepted`` records every message created.

Delivery, as Twilio reports it (Message resource ``status`` and ``error_code``): an accepted
message moves over the sandbox's ``clock`` from ``queued`` to ``sending`` to ``sent`` (handed to
the carrier) to ``delivered``, each after ``progression`` from its creation. A To in
``delivery_errors`` (number -> Twilio error code) ends ``undelivered`` with that code instead, as
the carrier reports it (30003 unreachable handset, 30005 unknown handset, 30006 landline or
unreachable carrier, 30007 filtered, 30008 unknown), or ``failed`` for the codes Twilio gives
before the carrier is reached (30001 queue overflow, 30002 account suspended, 30500 and up). A To
in ``no_receipt`` stays ``sent`` for ever: carriers that send no delivery receipt. The defaults
are a few magic numbers (``DELIVERY_ERRORS``), Australian landlines among them: Twilio attempts
delivery to landlines in the US, Canada and the UK and reports 30006 afterwards. When a message
was created with a ``StatusCallback``, ``deliver_callbacks()`` POSTs each status change to it,
form-encoded and signed with ``X-Twilio-Signature`` (HMAC-SHA1 of the URL and the sorted
parameters, keyed by the auth token), as Twilio does.

Replies: ``receive(from_, "STOP")`` records an inbound message (direction ``inbound``) that the
Messages list returns with the rest, newest first, filtered by To, From and DateSent (``DateSent>``
and ``DateSent<`` take a day or a full UTC time). As at Twilio, a STOP blocks later sends to that
number (21610) and a START lifts the block.

Read-only account settings (last block of the class): the account (``account_status``,
``account_type``), its phone numbers (``numbers``: number -> SMS capable) and its messaging
services (``services``, served at ``/v1/Services/{sid}`` as on messaging.twilio.com) with their
Sender Pools (``service_senders``: ``/v1/Services/{sid}/PhoneNumbers``, ``ShortCodes``,
``AlphaSenders``; empty for a new service, as in the Console).

Senders are checked against them as Twilio checks them (``_refuse_sender``): a ``From`` number the
account does not own is 21606 (owned but not SMS capable: 21661), a ``From`` that is neither a
number nor an alphanumeric ID is 21212, an unknown ``MessagingServiceSid`` is 21701 (21705 if it
is not even an MG SID). A Trial account sends only to its ``verified`` numbers (21608 otherwise).
Each is a 400 with Twilio's JSON error body, and no Message is created.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.server import Faults, ThreadedServer, after, guard
from sandbox.twilio_settings import AccountSettings
from sandbox.twilio_settings import error as _error

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "sandbox-twilio-token"
STOPPED = frozenset({"+15005550004"})
INVALID = frozenset({"+15005550001"})
LANDLINE = frozenset({"+15005550009"})
# Twilio's default opt-out words, REVOKE and OPTOUT included since 2025
# (https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out)
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
# Accepted, then reported by the carrier (error codes: https://www.twilio.com/docs/api/errors).
DELIVERY_ERRORS: Mapping[str, int] = {
    "+15005550030": 30003,  # unreachable handset (switched off, no signal)
    "+15005550031": 30005,  # unknown handset: the number is no longer in service
    "+15005550032": 30006,  # landline (Twilio tries US/CA/UK landlines, then reports 30006)
    "+15005550033": 30007,  # filtered by the carrier
    "+15005550034": 30008,  # unknown error
    "+15005550035": 30001,  # queue overflow: failed before reaching the carrier
    "+61255550006": 30006,  # an Australian landline
}
NO_RECEIPT: frozenset[str] = frozenset({"+15005550036"})
# Codes Twilio reports as ``failed`` (the message never reached a carrier); the rest undelivered.
FAILED_CODES = frozenset({30001, 30002, 30500, 30501, 30502, 30503})
# queued -> sending -> sent -> final, each this long after creation.
PROGRESSION = (timedelta(seconds=1), timedelta(seconds=2), timedelta(seconds=5))
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
BASE = "/2010-04-01/Accounts/{sid}"


class TwilioSandbox(AccountSettings):
    def __init__(
        self,
        *,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        stopped: set[str] | frozenset[str] = STOPPED,
        invalid: set[str] | frozenset[str] = INVALID,
        landline: set[str] | frozenset[str] = LANDLINE,
        delivery_errors: Mapping[str, int] = DELIVERY_ERRORS,
        no_receipt: set[str] | frozenset[str] = NO_RECEIPT,
        progression: tuple[timedelta, timedelta, timedelta] = PROGRESSION,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.stopped, self.invalid, self.landline = set(stopped), set(invalid), set(landline)
        self.delivery_errors, self.no_receipt = dict(delivery_errors), set(no_receipt)
        self.progression = progression
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.callbacks: list[dict] = []  # status callbacks POSTed: url, params, signature, answer
        self.faults = Faults()
        self.accepted: list[dict] = []
        self.inbound: list[dict] = []  # replies from patients, recorded with receive()
        self.rejected: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        # read-only account settings (see the last block of the class)
        self.account_status, self.account_type = "active", "Full"
        self.numbers: dict[str, bool] = {"+61400000000": True}  # owned number -> SMS capable
        self.services: dict[str, str] = {}  # messaging service SID -> friendly name
        # a messaging service's Sender Pool: its numbers (E.164), short codes (digits) and
        # alphanumeric sender IDs; a service made in the Console starts with none
        self.service_senders: dict[str, list[str]] = {}
        self.verified: set[str] = set()  # a Trial account's verified numbers (the only To)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route(BASE + "/Messages.json", self._create, methods=["POST"]),
                Route(BASE + "/Messages.json", self._list, methods=["GET"]),
                Route(BASE + "/Messages/{msid}.json", self._fetch, methods=["GET"]),
                Route(BASE + ".json", self._account, methods=["GET"]),
                Route(BASE + "/IncomingPhoneNumbers.json", self._numbers, methods=["GET"]),
                Route("/v1/Services/{service}", self._service, methods=["GET"]),
                Route("/v1/Services/{service}/{kind}", self._service_senders, methods=["GET"]),
            ]
        )

    def body_counts(self) -> Counter:
        """How many times each (To, Body) arrived: a repeated pair is a double send."""
        return Counter((m["to"], m["body"]) for m in self.accepted)

    def serve(self) -> ThreadedServer:
        return ThreadedServer(self.app)

    def receive(
        self, from_: str, body: str, *, to: str = "+61400000000", at: datetime | None = None
    ) -> str:
        """A patient's SMS to our number; returns its SID."""
        at = at or self.clock()
        stamp = format_datetime(at.astimezone(UTC), usegmt=True)
        sid = "SM" + uuid.uuid4().hex
        message = {
            "sid": sid, "account_sid": self.account_sid, "to": to, "from": from_, "body": body,
            "status": "received", "num_segments": "1", "direction": "inbound",
            "date_created": stamp, "date_updated": stamp, "date_sent": stamp,
            "error_code": None, "error_message": None, "price": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json", "_created": at,
        }  # fmt: skip
        keyword = body.strip().upper()
        with self._lock:
            self.inbound.append(message)
            # Twilio's default opt-out handling: later sends to a number that said STOP get 21610
            if keyword in OPT_OUT:
                self.stopped.add(from_)
            elif keyword in OPT_IN:
                self.stopped.discard(from_)
        return sid

    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (
            request.headers.get("Authorization") == f"Basic {expected}"
            and request.path_params.get("sid") == self.account_sid
        )

    async def _guard(self, request: Request):
        return await guard(
            request, self.requests, self.faults, authorised=self._authorised(request),
            rate_limited=_error(20429, "Too Many Requests", 429), unauthorised=_error(20003, "Authenticate", 401),
        )  # fmt: skip

    async def _create(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        if not (sender or service):
            return _error(21603, "A 'From' phone number is required.")
        if not body:
            return _error(21602, "Message body is required.")
        refused = self._refuse_sender(sender, service) or self._refuse_trial(to)
        if refused is not None:
            code, what = refused
            with self._lock:
                self.rejected.append({"to": to, "code": code})
            return _error(code, what)
        for numbers, code, what in (
            (self.stopped, 21610, "Attempt to send to unsubscribed recipient"),
            (self.landline, 21614, f"'To' number {to} is not a valid mobile number"),
            (self.invalid, 21211, f"The 'To' number {to} is not a valid phone number."),
        ):
            if to in numbers or (code == 21211 and not E164.match(to)):
                with self._lock:
                    self.rejected.append({"to": to, "code": code})
                return _error(code, what)
        now = self.clock()
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": self.account_sid,
            "to": to,
            "from": str(sender) if sender else "+61400000000",
            "messaging_service_sid": str(service) if service else None,
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": format_datetime(now, usegmt=True),
            "date_updated": format_datetime(now, usegmt=True),
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "price": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/SM.json",
            "_created": now,
            "_callback": form.get("StatusCallback"),
            "_reported": "queued",  # the last status a callback told
        }
        message["uri"] = message["uri"].replace("SM.json", f"{message['sid']}.json")
        with self._lock:
            self.accepted.append(message)
        await after(fault)
        if fault is not None and fault.kind == "500_after_receipt":  # created, yet answered 500
            return _error(20500, "Internal Server Error", status=500)
        return JSONResponse(_public(self._now(message, now)), status_code=201)

    def _refuse_sender(self, sender: str | None, service: str | None) -> tuple[int, str] | None:
        """Twilio's answer to a sender this account cannot send from, else None. Twilio creates
        no Message for a refused request: nothing is queued, nothing appears in the list.

        - ``MessagingServiceSid`` not of the MG pattern: 21705; not a service of this account
          (deleted, another account's, a typo): 21701 (https://www.twilio.com/docs/api/errors/
          21701, "does not exist or does not match the Account SID").
        - ``From`` a number this account does not own (released, ported away, another
          account's, a typo): 21606, "not a valid message-capable Twilio phone number for this
          destination/account"; owned but not SMS capable: 21661.
        - ``From`` neither a number nor an alphanumeric sender ID: 21212 (invalid From).
        """
        if service:
            if not SERVICE_SID.match(service):
                return 21705, "The Messaging Service is invalid"
            if service not in self.services:
                return 21701, "The Messaging Service does not exist"
        if not sender:
            return None
        if E164.match(sender):
            if sender not in self.numbers:
                return 21606, (
                    f"The From phone number {sender} is not a valid, SMS-capable inbound phone "
                    "number or short code for your account."
                )
            if not self.numbers[sender]:
                return 21661, "'From' number is not SMS-capable"
            return None
        if ALPHANUMERIC.match(sender):
            return None  # an alphanumeric sender ID (registration per country not modelled)
        return 21212, (
            f"The 'From' number {sender} is not a valid phone number, shortcode, or "
            "alphanumeric sender ID."
        )

    def _refuse_trial(self, to: str) -> tuple[int, str] | None:
        """A Trial account sends only to its verified numbers (``verified``): 21608."""
        if self.account_type == "Trial" and to not in self.verified:
            return 21608, (
                f"The number {to} is unverified. Trial accounts cannot send messages to "
                "unverified numbers; verify it at twilio.com/user/account/phone-numbers/"
                "verified, or purchase a Twilio number to send messages to unverified numbers."
            )
        return None

    async def _list(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        size = min(int(q.get("PageSize", 50)), 1000)
        page = int(q.get("Page", 0))
        after, before = _day_or_time(q.get("DateSent>")), _day_or_time(q.get("DateSent<"))
        now = self.clock()
        with self._lock:
            found = [
                m
                for m in (
                    self._now(m, now)
                    for m in sorted(self.accepted + self.inbound, key=lambda m: m["_created"])[::-1]
                )
                if (not q.get("To") or m["to"] == q["To"])
                and (not q.get("From") or m["from"] == q["From"])
                and (after is None or (m["date_sent"] and m["_created"] >= after))
                and (before is None or (m["date_sent"] and m["_created"] <= before))
            ]
        chunk = found[page * size : (page + 1) * size]
        path = request.url.path
        more = (page + 1) * size < len(found)
        filters = {k: v for k, v in q.items() if k in ("To", "From", "DateSent>", "DateSent<")}

        def page_uri(n: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': size, 'Page': n})}"

        return JSONResponse(
            {
                "messages": [_public(m) for m in chunk],
                "page": page,
                "page_size": size,
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if more else None,
                "previous_page_uri": None,
                "uri": page_uri(page),
                "start": page * size,
                "end": page * size + len(chunk),
            }
        )

    async def _fetch(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        now = self.clock()
        for m in self.accepted + self.inbound:
            if m["sid"] == request.path_params["msid"]:
                return JSONResponse(_public(self._now(m, now)))
        return _error(20404, "The requested resource was not found", 404)

    # --- delivery ----------------------------------------------------------------------------

    def _now(self, message: dict, now: datetime) -> dict:
        """The message as Twilio would show it at ``now``: status, error code, dates."""
        if message["direction"] != "outbound-api":
            return message
        age = now - message["_created"]
        to_sending, to_sent, to_final = self.progression
        code = self.delivery_errors.get(message["to"])
        steps = [("queued", message["_created"])]
        if code in FAILED_CODES:
            if age >= to_sent:
                steps.append(("failed", message["_created"] + to_sent))
        else:
            if age >= to_sending:
                steps.append(("sending", message["_created"] + to_sending))
            if age >= to_sent:
                steps.append(("sent", message["_created"] + to_sent))
            if age >= to_final and message["to"] not in self.no_receipt:
                final = "undelivered" if code else "delivered"
                steps.append((final, message["_created"] + to_final))
        status, at = steps[-1]
        final = status in ("delivered", "undelivered", "failed")
        view = {**message, "status": status, "date_updated": format_datetime(at, usegmt=True),
                "_status_at": at}  # fmt: skip
        if any(s == "sent" for s, _ in steps):
            view["date_sent"] = format_datetime(message["_created"] + to_sent, usegmt=True)
        if final and code:
            view["error_code"] = code
            view["error_message"] = None  # Twilio leaves it empty; the code says it
        view["_steps"] = steps
        return view

    def status_of(self, sid: str) -> tuple[str, int | None]:
        """(status, error_code) of an accepted message now, by the sandbox's clock."""
        now = self.clock()
        with self._lock:
            message = next(m for m in self.accepted if m["sid"] == sid)
        view = self._now(message, now)
        return view["status"], view["error_code"]

    def signature(self, url: str, params: Mapping[str, str]) -> str:
        """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by each parameter's name and
        value, sorted by name, keyed by the auth token (Twilio's webhook security)."""
        data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
        mac = hmac.new(self.auth_token.encode(), data.encode("utf-8"), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode()

    def deliver_callbacks(self, timeout: float = 5.0) -> int:
        """POST every status change not yet told to its message's StatusCallback, in order, as
        Twilio does (MessageSid, MessageStatus, ErrorCode when there is one...); how many.
        An answer that is not 2xx is not retried (Twilio does not retry status callbacks)."""
        now = self.clock()
        with self._lock:
            pending = [m for m in self.accepted if m["_callback"]]
        posted = 0
        for message in pending:
            view = self._now(message, now)
            names = [s for s, _ in view["_steps"]]
            start = names.index(message["_reported"]) + 1 if message["_reported"] in names else 0
            for status in names[start:]:
                params = {
                    "AccountSid": self.account_sid, "ApiVersion": "2010-04-01",
                    "From": view["from"], "To": view["to"], "MessageSid": view["sid"],
                    "SmsSid": view["sid"], "MessageStatus": status, "SmsStatus": status,
                }  # fmt: skip
                if status in ("undelivered", "failed") and view["error_code"]:
                    params["ErrorCode"] = str(view["error_code"])
                signature = self.signature(message["_callback"], params)
                try:
                    answer = httpx.post(
                        message["_callback"],
                        data=params,
                        timeout=timeout,
                        headers={"X-Twilio-Signature": signature},
                    ).status_code
                except httpx.HTTPError:
                    answer = None
                message["_reported"] = status
                self.callbacks.append({"url": message["_callback"], "params": params,
                                       "signature": signature, "answer": answer})  # fmt: skip
                posted += 1
        return posted


def _day_or_time(text: str | None) -> datetime | None:
    """``2026-03-01`` (start of that UTC day) or ``2026-03-01T09:00:00Z``."""
    if not text:
        return None
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _public(message: dict) -> dict:
    return {k: v for k, v in message.items() if not k.startswith("_")}
