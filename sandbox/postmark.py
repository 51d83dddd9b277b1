"""A Postmark stand-in: the parts of the server API clinic-relay uses, served at ``/`` (postmarker
joins endpoint paths to the root, so a path prefix would be dropped).

- ``POST /email`` and ``POST /email/batch`` (per-item ``ErrorCode``; HTTP 200 even when items fail)
- ``GET /messages/outbound`` with ``count``/``offset``/``recipient``/``tag``/``metadata_<key>``/
  ``messagestream`` filters, and ``/messages/outbound/{id}/details``
- ``GET /bounces`` (and ``/bounces/``) with ``type``/``emailFilter``/``fromdate``/``todate``/
  ``messagestream`` filters, ``GET /message-streams/{stream}/suppressions/dump`` with ``fromdate``/
  ``todate``/``EmailAddress``/``SuppressionReason`` filters, and ``POST .../suppressions/delete``
  (reactivation: a ``SpamComplaint`` is refused, as Postmark's API refuses it)
- ``GET /messages/outbound/opens`` and ``/messages/outbound/clicks``: open and link tracking
  (sandbox/postmark_tracking.py: off unless switched on, no open for plain text, repeated opens,
  ``count + offset`` at most 10,000)
- ``GET /message-streams/{stream}``: the stream, with its
  ``SubscriptionManagementConfiguration.UnsubscribeHandlingType``
- read-only settings (last block of the class): ``GET /server`` (``server_name``,
  ``delivery_type``: ``Live``, or ``Sandbox`` for a server that delivers nothing) and
  ``GET /message-streams`` (``MessageStreamType``, ``IncludeArchivedStreams``; streams in
  ``archived_streams`` carry their ``ArchivedAt``). A new server's streams: ``outbound``
  (Transactional), ``inbound`` (Inbound: the email it receives) and ``broadcast``.

As in Postmark, the outbound search and the bounce list read one stream: the one named by
``messagestream``, else the transactional stream ``outbound``
(https://postmarkapp.com/developer/api/messages-api, .../bounce-api).

Streams (``streams``): ``outbound`` (Transactional, unsubscribes ``None``) and ``broadcast``
(Broadcasts, unsubscribes ``Postmark``, Postmark's default). On a stream whose unsubscribes Postmark
manages, what a recipient gets (``delivered(message_id)``) carries Postmark's own unsubscribe link
(in place of a ``{{{ pm:unsubscribe }}}`` placeholder, else appended as a footer) and its own RFC
8058 headers, replacing any the sender set (they cannot be edited); a one-click POST to that link
suppresses the address on the stream (``ManualSuppression``, origin ``Recipient``), as Postmark's
page does. ``Custom`` (or ``None``): the mail goes as sent.

Suppressions are kept per message stream, as Postmark keeps them ("manage view, create, and delete
suppressions in your Message Stream. If an address is suppressed it means it's not currently
active for sending to": https://postmarkapp.com/developer/api/suppressions-api; an unsubscribe
"will unsubscribe their email address from your Message Stream":
https://postmarkapp.com/support/article/1208-how-to-add-an-unsubscribe-link). A send to an
address suppressed on the message's own stream (``MessageStream``, else ``outbound``) gets 406
"inactive recipient", whatever the reason (hard bounce, spam complaint, manual suppression or
unsubscribe: the 406 does not say which); the same address on another stream goes through.

The sender is checked before the recipient, item by item (a batch still answers 200): a From that
is no address is 300 "Invalid 'From' address"; with ``sender_signatures`` set (confirmed addresses,
or ``@domain`` for a verified domain; None, the default, confirms every sender), a From outside
them is 400 "not a Sender Signature on your account" (postmark.js issue #47: the batch endpoint
reports it per message); a ``MessageStream`` the server lacks is 1235.

Recipients trigger errors, like Twilio's magic numbers: anything in ``inactive`` is suppressed on
every stream (a HardBounce in each stream's dump, one hard bounce listed on ``outbound``) and gets
406 on all of them; anything in ``invalid`` or without an ``@`` gets 300.
``faults`` injects 5xx (a 503 before processing), 429, slowness, "timeout after receipt" and
"500 after receipt" (the batch taken, the answer a 500). ``accepted`` records every
message accepted, so tests can assert each send key arrived at most once.

Feedback: ``bounce(email, "SoftBounce")`` records a bounce of any Postmark type (a hard bounce or
spam complaint also deactivates the address and suppresses it on its stream, as Postmark does);
``suppress(email, stream)`` records a suppression such as a recipient's own unsubscribe. Either
makes the address inactive on that stream only.
Addresses in ``inactive`` are listed as hard bounces with ids derived from the address (stable).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from sandbox.postmark_tracking import TrackingMixin
from sandbox.server import Faults, ThreadedServer, after, guard

INACTIVE = frozenset({"inactive@sandbox.example.com"})
DEFAULT_STREAM = "outbound"  # what search and bounces read when no messagestream is named
UNSUBSCRIBE_PLACEHOLDER = "{{{ pm:unsubscribe }}}"
UNSUBSCRIBE_HANDLING = ("None", "Postmark", "Custom")
INVALID = frozenset({"invalid@sandbox.example.com"})


def _error(code: int, message: str, status: int = 422) -> JSONResponse:
    return JSONResponse({"ErrorCode": code, "Message": message}, status_code=status)


def _server_error() -> PlainTextResponse:
    """Postmark's 500: "an issue with Postmark's servers processing your request. In most cases
    the message is lost" (API overview, HTTP response codes): in most, not all."""
    return PlainTextResponse("Internal Server Error", status_code=500)


# Postmark's bounce types and their TypeCodes (its Bounce API documentation, "Bounce types").
BOUNCE_TYPE_CODES = {"HardBounce": 1, "Transient": 2, "Unsubscribe": 16, "AutoResponder": 64,
                     "DnsError": 256, "SpamNotification": 512, "SoftBounce": 4096,
                     "BadEmailAddress": 100000, "SpamComplaint": 100001,
                     "ManuallyDeactivated": 100002, "Blocked": 100006}  # fmt: skip


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_stamp(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _in_dates(at: str, q, low: str, high: str) -> bool:
    """Postmark's fromdate/todate: inclusive; a bare date covers its whole day."""
    when = _parse_stamp(at)
    if q.get(low) and when < _parse_stamp(q[low]):
        return False
    if q.get(high):
        end = _parse_stamp(q[high])
        if len(q[high]) == 10:
            end += timedelta(days=1)
            return when < end
        return when <= end
    return True


class PostmarkSandbox(TrackingMixin):
    DEFAULT_STREAM = DEFAULT_STREAM
    _error = staticmethod(_error)

    def __init__(
        self,
        *,
        server_token: str = "sandbox-postmark-token",
        inactive: set[str] | frozenset[str] = INACTIVE,
        invalid: set[str] | frozenset[str] = INVALID,
        sender_signatures: set[str] | None = None,
    ) -> None:
        self.server_token = server_token
        # confirmed sender signatures: addresses, or "@domain" for a verified domain; None: any
        self.sender_signatures = sender_signatures
        self.inactive = {a.lower() for a in inactive}
        self.invalid = {a.lower() for a in invalid}
        self.faults = Faults()
        self.accepted: list[dict] = []  # every message accepted, in order
        self.rejected: list[dict] = []  # {"To", "ErrorCode", "send_key"} for each refused item
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.bounces: list[dict] = []  # recorded with bounce(), as GET /bounces returns them
        self.suppressions: list[dict] = []  # recorded with suppress(), each with its stream
        self._bounce_ids = itertools.count(1_000_000)
        # stream id -> (MessageStreamType, UnsubscribeHandlingType), as a new Postmark server has
        self.streams: dict[str, tuple[str, str]] = {
            "outbound": ("Transactional", "None"),
            "inbound": ("Inbound", "None"),  # every server has one: email it receives
            "broadcast": ("Broadcasts", "Postmark"),
        }
        self.server_name = "Sandbox Clinic"  # GET /server's Name
        # (ErrorCode, Message) every send is refused with (422), as Postmark answers an account
        # that may not send: 405 "Not allowed to send" (out of credits), 413 "Account may not send"
        self.account_refusal: tuple[int, str] | None = None
        self.delivery_type = "Live"  # GET /server's DeliveryType (Live or Sandbox)
        self.archived_streams: dict[str, str] = {}  # stream id -> ArchivedAt
        self.url = ""  # set by the test once served: Postmark's unsubscribe links point here
        self.clock = lambda: datetime.now(UTC)  # when bounces, suppressions and sends happen
        self._lock = threading.Lock()
        self._init_tracking()
        self.app = Starlette(
            routes=[
                Route("/messages/outbound/opens", self._opens, methods=["GET"]),
                Route("/messages/outbound/clicks", self._clicks, methods=["GET"]),
                Route("/email", self._email, methods=["POST"]),
                Route("/email/batch", self._batch, methods=["POST"]),
                Route("/messages/outbound", self._search, methods=["GET"]),
                Route("/messages/outbound/{id}/details", self._details, methods=["GET"]),
                Route("/bounces", self._bounces, methods=["GET"]),
                Route("/bounces/", self._bounces, methods=["GET"]),
                Route("/message-streams/{stream}", self._stream, methods=["GET"]),
                Route("/server", self._server, methods=["GET"]),
                Route("/message-streams", self._stream_list, methods=["GET"]),
                Route("/unsubscribe/{message_id}", self._one_click, methods=["GET", "POST"]),
                Route(
                    "/message-streams/{stream}/suppressions/dump",
                    self._suppressions,
                    methods=["GET"],
                ),
                Route(
                    "/message-streams/{stream}/suppressions/delete",
                    self._delete_suppressions,
                    methods=["POST"],
                ),
            ]
        )

    # -- inspection for tests -------------------------------------------------------------

    def send_key_counts(self) -> Counter:
        return Counter((m.get("Metadata") or {}).get("send_key") for m in self.accepted)

    def serve(self) -> ThreadedServer:
        return ThreadedServer(self.app)

    def set_unsubscribe_handling(self, stream: str, handling: str) -> None:
        """What the stream's Settings → Subscription Management says (Custom needs Postmark
        support to allow it)."""
        assert handling in UNSUBSCRIBE_HANDLING, handling
        self.streams[stream] = (self.streams[stream][0], handling)

    def delivered(self, message_id: str) -> dict:
        """The message as its recipient gets it: on a stream whose unsubscribes Postmark manages,
        with Postmark's link (in place of the placeholder, else appended) and its own headers."""
        m = next(m for m in self.accepted if m["MessageID"] == message_id)
        headers = {h["Name"]: h["Value"] for h in m.get("Headers") or []}
        html, text = m.get("HtmlBody") or "", m.get("TextBody") or ""
        if self._managed_by_postmark(m.get("MessageStream")):
            link = f"{self.url}/unsubscribe/{message_id}"
            html = (html.replace(UNSUBSCRIBE_PLACEHOLDER, link) if UNSUBSCRIBE_PLACEHOLDER in html
                    else html + f'<p><a href="{link}">Unsubscribe</a></p>')  # fmt: skip
            text = (text.replace(UNSUBSCRIBE_PLACEHOLDER, link) if UNSUBSCRIBE_PLACEHOLDER in text
                    else text + f"\n\nUnsubscribe: {link}")  # fmt: skip
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("list-unsub")}
            headers |= {"List-Unsubscribe": f"<{link}>",
                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}  # fmt: skip
        return {"To": m["To"], "HtmlBody": html, "TextBody": text, "Headers": headers}

    def _managed_by_postmark(self, stream: str | None) -> bool:
        return self.streams.get(stream or DEFAULT_STREAM, ("", "None"))[1] == "Postmark"

    # -- feedback to report -----------------------------------------------------------------

    def bounce(
        self,
        email: str,
        type: str = "HardBounce",
        *,
        stream: str = "outbound",
        at: datetime | None = None,
        message_id: str | None = None,
    ) -> int:
        """Record a bounce of a Postmark type; returns its ID."""
        at = at or self.clock()
        deactivates = type in ("HardBounce", "SpamComplaint")
        with self._lock:
            bounce_id = next(self._bounce_ids)
            self.bounces.append(
                {"ID": bounce_id, "Type": type, "TypeCode": BOUNCE_TYPE_CODES.get(type, 0),
                 "Email": email, "Inactive": deactivates, "CanActivate": deactivates,
                 "BouncedAt": _stamp(at), "MessageStream": stream,
                 "MessageID": message_id or str(uuid.uuid4()), "DumpAvailable": False}
            )  # fmt: skip
        if deactivates:  # inactive on this stream only: its suppression is the stream's
            self.suppress(email, stream, reason=type, at=at)
        return bounce_id

    def suppress(
        self,
        email: str,
        stream: str,
        *,
        reason: str = "ManualSuppression",
        origin: str = "Recipient",
        at: datetime | None = None,
    ) -> None:
        """Record a suppression on a stream (ManualSuppression + Recipient = they unsubscribed)."""
        with self._lock:
            self.suppressions.append(
                {"EmailAddress": email, "SuppressionReason": reason, "Origin": origin,
                 "CreatedAt": _stamp(at or self.clock()), "_stream": stream}
            )  # fmt: skip

    def inactive_on(self, stream: str | None) -> set[str]:
        """The addresses a send on this stream is refused for (406): its suppressions."""
        stream = stream or DEFAULT_STREAM
        with self._lock:
            own = {s["EmailAddress"].lower() for s in self.suppressions if s["_stream"] == stream}
        return own | self.inactive

    # -- the API ----------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("X-Postmark-Server-Token") == self.server_token

    def _accept(self, item: dict) -> dict:
        """Postmark's verdict on one message: the per-item result of /email/batch."""
        to = str(item.get("To") or "").strip().lower()
        send_key = (item.get("Metadata") or {}).get("send_key")
        now = self.clock()
        sender = parseaddr(str(item.get("From") or ""))[1].lower()
        if "@" not in sender:
            code, message = 300, f"Invalid 'From' address: '{item.get('From') or ''}'."
        elif self.sender_signatures is not None and not (
            {sender, "@" + sender.rpartition("@")[2]} & {s.lower() for s in self.sender_signatures}
        ):
            code = 400
            message = (
                f"The 'From' address you supplied ({sender}) is not a Sender Signature on your "
                "account. Please add and confirm this address in order to be able to use it in "
                "the 'From' field of your messages."
            )
        elif (item.get("MessageStream") or DEFAULT_STREAM) not in self.streams:
            code = 1235
            stream = item["MessageStream"]
            message = f"The message stream for the provided 'ID' ({stream}) was not found."
        elif not to or "@" not in to or to in self.invalid:
            code, message = 300, f"Invalid 'To' address: '{to}'."
        elif not (item.get("HtmlBody") or item.get("TextBody")):
            code, message = 300, "Provide either email TextBody or HtmlBody or both."
        elif any(len(str(v)) > 80 for v in (item.get("Metadata") or {}).values()):
            code, message = 300, "Metadata values are limited to 80 characters."
        elif to in self.inactive_on(item.get("MessageStream")):
            code = 406
            message = (
                "You tried to send to recipient(s) that have been marked as inactive. Found "
                f"inactive addresses: {to}. Inactive recipients are ones that have generated a "
                "hard bounce, a spam complaint, or a manual suppression."
            )
        else:
            message_id = str(uuid.uuid4())
            message = {**item, "MessageID": message_id, "ReceivedAt": now}
            with self._lock:
                self.accepted.append(message)
                ordinal = len(self.accepted)
            self._plan_activity(message, ordinal)
            return {
                "To": item.get("To"),
                "SubmittedAt": now.isoformat(),
                "MessageID": message_id,
                "ErrorCode": 0,
                "Message": "OK",
            }
        with self._lock:
            self.rejected.append({"To": to, "ErrorCode": code, "send_key": send_key})
        return {"ErrorCode": code, "Message": message}

    async def _guard(self, request: Request):
        return await guard(
            request, self.requests, self.faults, authorised=self._authorised(request),
            rate_limited=_error(429, "Rate limit exceeded.", 429), unauthorised=_error(10, "Bad or missing Server API token.", 401),
        )  # fmt: skip

    async def _email(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        if self.account_refusal is not None:
            return _error(*self.account_refusal)
        result = self._accept(json.loads(await request.body()))
        await after(fault)
        if fault is not None and fault.kind == "500_after_receipt":
            return _server_error()
        if result["ErrorCode"]:
            return _error(result["ErrorCode"], result["Message"])
        return JSONResponse(result)

    async def _batch(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        if self.account_refusal is not None:
            return _error(*self.account_refusal)
        items = json.loads(await request.body())
        if not isinstance(items, list) or len(items) > 500:
            return _error(300, "A batch is a JSON array of at most 500 messages.")
        results = [self._accept(item) for item in items]
        await after(fault)
        if fault is not None and fault.kind == "500_after_receipt":  # taken, yet answered 500
            return _server_error()
        return JSONResponse(results)

    def _summary(self, m: dict) -> dict:
        return {
            "MessageID": m["MessageID"],
            "To": [{"Email": m["To"], "Name": None}],
            "Recipients": [m["To"]],
            "From": m.get("From"),
            "Subject": m.get("Subject"),
            "Tag": m.get("Tag"),
            "Metadata": m.get("Metadata") or {},
            "MessageStream": m.get("MessageStream") or "outbound",
            "Status": "Sent",
            "ReceivedAt": m["ReceivedAt"].isoformat(),
        }

    async def _search(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        count, offset = int(q.get("count", 100)), int(q.get("offset", 0))
        if not 1 <= count <= 500:
            return _error(300, "count must be between 1 and 500.")
        wanted_meta = {k[len("metadata_") :]: v for k, v in q.items() if k.startswith("metadata_")}
        stream = q.get("messagestream") or DEFAULT_STREAM
        with self._lock:
            found = [
                m
                for m in reversed(self.accepted)
                if (m.get("MessageStream") or DEFAULT_STREAM) == stream
                and (not q.get("recipient") or m["To"].lower() == q["recipient"].lower())
                and (not q.get("tag") or m.get("Tag") == q["tag"])
                and all((m.get("Metadata") or {}).get(k) == v for k, v in wanted_meta.items())
            ]
        page = [self._summary(m) for m in found[offset : offset + count]]
        return JSONResponse({"TotalCount": len(found), "Messages": page})

    async def _details(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        for m in self.accepted:
            if m["MessageID"] == request.path_params["id"]:
                return JSONResponse(
                    {
                        **self._summary(m),
                        "TextBody": m.get("TextBody"),
                        "HtmlBody": m.get("HtmlBody"),
                    }
                )
        return _error(701, "This message was not found.")

    async def _bounces(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        count, offset = int(q.get("count", 100)), int(q.get("offset", 0))
        with self._lock:
            recorded = list(self.bounces)
        explicit = {b["Email"].lower() for b in recorded}
        legacy = [
            {
                "ID": int(hashlib.sha256(email.encode()).hexdigest()[:8], 16),
                "Type": "HardBounce",
                "TypeCode": 1,
                "Email": email,
                "Inactive": True,
                "CanActivate": True,
                "BouncedAt": "2026-01-01T00:00:00Z",
                "MessageStream": "outbound",
            }
            for email in sorted(self.inactive - explicit)
        ]
        stream = q.get("messagestream") or DEFAULT_STREAM
        bounces = [
            b
            for b in sorted(
                legacy + recorded, key=lambda b: (b["BouncedAt"], b["ID"]), reverse=True
            )
            if b["MessageStream"] == stream
            and (not q.get("emailFilter") or q["emailFilter"].lower() in b["Email"].lower())
            and (not q.get("type") or b["Type"] == q["type"])
            and _in_dates(b["BouncedAt"], q, "fromdate", "todate")
        ]
        return JSONResponse(
            {"TotalCount": len(bounces), "Bounces": bounces[offset : offset + count]}
        )

    async def _suppressions(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q, stream = request.query_params, request.path_params["stream"]
        with self._lock:
            # an address deactivated by bounce() is suppressed on its own stream only
            recorded = [s for s in self.suppressions if s["_stream"] == stream]
            explicit = {s["EmailAddress"].lower() for s in recorded}
        legacy = [
            {
                "EmailAddress": email,
                "SuppressionReason": "HardBounce",
                "Origin": "Recipient",
                "CreatedAt": "2026-01-01T00:00:00Z",
            }
            for email in sorted(self.inactive - explicit)
        ]
        found = [
            {k: v for k, v in s.items() if not k.startswith("_")}
            for s in legacy + recorded
            if (not q.get("EmailAddress") or s["EmailAddress"].lower() == q["EmailAddress"].lower())
            and (not q.get("SuppressionReason") or s["SuppressionReason"] == q["SuppressionReason"])
            and _in_dates(s["CreatedAt"], q, "fromdate", "todate")
        ]
        return JSONResponse({"Suppressions": found})

    async def _delete_suppressions(self, request: Request):
        """Reactivate addresses on a stream: each answered Deleted, or Failed for a spam
        complaint, which Postmark's API does not delete (addresses in ``inactive`` stay too)."""
        _, early = await self._guard(request)
        if early is not None:
            return early
        stream = request.path_params["stream"]
        body = json.loads(await request.body())
        answers = []
        for item in body.get("Suppressions") or []:
            email = str(item.get("EmailAddress") or "")
            with self._lock:
                own = [
                    s
                    for s in self.suppressions
                    if s["_stream"] == stream and s["EmailAddress"].lower() == email.lower()
                ]
                if any(s["SuppressionReason"] == "SpamComplaint" for s in own) or (
                    email.lower() in self.inactive
                ):
                    answers.append(
                        {
                            "EmailAddress": email,
                            "Status": "Failed",
                            "Message": "You do not have the required authority to change this "
                            "suppression.",
                        }
                    )
                    continue
                self.suppressions = [s for s in self.suppressions if not any(s is o for o in own)]
            answers.append({"EmailAddress": email, "Status": "Deleted", "Message": None})
        return JSONResponse({"Suppressions": answers})

    async def _stream(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        stream = request.path_params["stream"]
        if stream not in self.streams:
            return _error(
                1226, f"The message stream for the provided 'ID' ({stream}) was not found.", 404
            )
        return JSONResponse(self._stream_body(stream))

    async def _one_click(self, request: Request):
        """Postmark's unsubscribe link (no token: it is Postmark's page, not its API). A GET shows
        the page; a POST (the page's button, or RFC 8058 one-click) suppresses the address."""
        m = next(
            (m for m in self.accepted if m["MessageID"] == request.path_params["message_id"]), None
        )
        if m is None or not self._managed_by_postmark(m.get("MessageStream")):
            return JSONResponse({"Message": "Not found."}, status_code=404)
        if request.method == "POST":
            self.suppress(m["To"], m.get("MessageStream") or DEFAULT_STREAM)
        return JSONResponse({"Message": "OK"})

    # -- Read-only server settings (what `relay connect` checks before saving a token) ---------
    # https://postmarkapp.com/developer/api/server-api (GET /server) and
    # https://postmarkapp.com/developer/api/message-streams-api (GET /message-streams): both
    # with the server token; a bad token is ErrorCode 10 like every other server endpoint.

    def _stream_body(self, stream: str) -> dict:
        kind, handling = self.streams[stream]
        return {"ID": stream, "ServerID": 1, "Name": stream.title(), "Description": None,
                "MessageStreamType": kind, "CreatedAt": "2026-01-01T00:00:00-05:00",
                "UpdatedAt": None, "ArchivedAt": self.archived_streams.get(stream),
                "ExpectedPurgeDate": None,
                "SubscriptionManagementConfiguration": {"UnsubscribeHandlingType": handling}}  # fmt: skip

    async def _server(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        return JSONResponse(
            {"ID": 1, "Name": self.server_name, "ApiTokens": [self.server_token],
             "Color": "Blue", "SmtpApiActivated": True, "RawEmailEnabled": False,
             "DeliveryType": self.delivery_type, "ServerLink": "https://account.postmarkapp.com/servers/1/streams",
             "InboundAddress": "", "InboundHookUrl": "", "BounceHookUrl": "", "OpenHookUrl": "",
             "DeliveryHookUrl": "", "PostFirstOpenOnly": False, "InboundDomain": "",
             "InboundHash": "", "InboundSpamThreshold": 0, "TrackOpens": self.track_opens,
             "TrackLinks": self.track_links, "IncludeBounceContentInHook": False, "ClickHookUrl": "",
             "EnableSmtpApiErrorHooks": False}
        )  # fmt: skip

    async def _stream_list(self, request: Request):
        """MessageStreamType: All (default), Transactional, Inbound or Broadcasts;
        IncludeArchivedStreams: false by default."""
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        kind = q.get("MessageStreamType") or "All"
        archived = (q.get("IncludeArchivedStreams") or "false").lower() == "true"
        streams = [
            self._stream_body(s)
            for s in self.streams
            if (kind == "All" or self.streams[s][0] == kind)
            and (archived or s not in self.archived_streams)
        ]
        return JSONResponse({"MessageStreams": streams, "TotalCount": len(streams)})
