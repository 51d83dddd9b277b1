"""Twilio Programmable Messaging through the twilio client 9.x (facts: docs/reference.md).

Odd things about this API and client, and what we do about them:
- No base-URL setting: a redirecting http client sends every request to ``base_url`` instead
  (the sandbox, a proxy), after the client has built its edge/region host.
- No idempotency for message creation: a timeout after the request went may or may not have
  created the SMS, so it is recorded ``unknown`` and never resent automatically. Reconciliation
  lists messages to that number since the attempt and matches the body's digest; an SMS a dead
  run left ``sending`` that the list does not hold is planned again (``reconcile`` says why).
- Errors: ``TwilioRestException`` (and the RFC 9457 ``TwilioServiceException``, not a subclass)
  carry ``.code`` and ``.status``. What each code means for the number is ``ERROR_CODES``, the
  one table both sending and delivery read; 20429 / 429 / 503 = come back later; any other 5xx
  = ``unknown``, as a timeout after sending (Twilio, error 20500: "sending an SMS ... not
  idempotent. If you get a 500 ... and you retry the request, it is possible for a customer to
  receive multiple messages"); 20003 = bad credentials; ``SETTINGS_CODES`` (a sender the account does not own, an unknown messaging
  service, a Trial or inactive account) = nothing can go: the run stops and the message is put
  back planned, with what to fix.
- Accepted is not delivered: a Message goes queued -> sending -> sent -> delivered, or ends
  ``undelivered`` / ``failed`` with an error code (30006 landline, 30005 not in service...). The
  delivery feed fetches each recent message whose status is not final (``GET
  /Messages/{Sid}.json``, a bounded number a pull) and tasks/feedback_delivery.py records it;
  with ``status_callback_url`` set, each message also carries a ``StatusCallback`` and Twilio
  POSTs every status change there (tasks/unsubscribe/app.py checks its X-Twilio-Signature).
- Only E.164 numbers are sent (dispatch checks before anything is claimed).
- Replies come back as inbound messages in the same Messages list: a reply that is just an
  opt-out word (Twilio's defaults) suppresses the number, an opt-in word lifts it (recorded by
  tasks/feedback.py). A 21610 at send time is recorded by dispatch.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import duckdb
import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tasks import feedback, feedback_delivery
from tasks.feedback import Feed, FeedbackUnavailable
from tasks.messages.ledger import LedgerRow, normalise_address
from tasks.providers.common import (
    URL_ERRORS,
    Outcome,
    OutgoingMessage,
    ProviderUnavailable,
    RenderedSms,
    Suppress,
    request_never_sent,
    unusable_base_url,
)
from tasks.warehouse import transaction

# Twilio's default opt-out and opt-in words (a reply that is exactly one of them). REVOKE and
# OPTOUT joined the defaults in 2025 (https://www.twilio.com/docs/messaging/tutorials/
# advanced-opt-out: "STOP, UNSUBSCRIBE, END, QUIT, STOPALL, REVOKE, OPTOUT, and CANCEL"); Twilio
# blocks the number on them as on STOP, and a marketing SMS may say "Reply OPTOUT"
# (tasks/messages/templates.py), so a reply that does as it says must stop marketing here too.
OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})


def reply_keyword(body: str | None) -> Literal["stop", "start"] | None:
    """Twilio acts on a reply that is just the word (any case, stray spaces or punctuation)."""
    word = re.sub(r"[\s.!]+", "", (body or "").upper())
    if word in OPT_OUT_WORDS:
        return "stop"
    if word in OPT_IN_WORDS:
        return "start"
    return None


# What a Twilio error code means for the number, in one place: sending (a refusal at create) and
# delivery (a Message's final ``error_code``) both read it. A Suppress: the number can never
# receive our SMS, so it is suppressed for every SMS with the message and code as evidence.
# None: temporary, or about the content or our account, not the number; recorded, nothing more.
# Sources: https://www.twilio.com/docs/api/errors/<code> (and docs/reference.md).
ERROR_CODES: dict[int, tuple[str, Suppress | None]] = {
    21211: ("not a valid number", Suppress("all", "invalid_address")),
    21614: ("not a mobile number", Suppress("all", "invalid_address")),
    21635: ("a landline (refused at send)", Suppress("all", "invalid_address")),
    21610: ("recipient replied STOP", Suppress("all", "stop")),
    # "unknown, inactive or no longer in service"
    30005: ("unknown handset: not in service", Suppress("all", "undeliverable")),
    # "cannot receive your message... a landline"; Twilio: do not retry that destination
    30006: ("landline or unreachable carrier", Suppress("all", "undeliverable")),
    # switched off, no signal, roaming: Twilio calls it usually temporary
    30003: ("handset unreachable, usually for a while", None),
    30004: ("message blocked", None),  # by the carrier or a blocklist: not proven permanent
    30007: ("filtered by the carrier", None),  # about the content, not the number
    30008: ("unknown error", None),
    30001: ("queue overflow", None),  # about our sending rate
    30002: ("account suspended", None),  # about our account
}


# Codes about our sender, messaging service or account, never the recipient: Twilio answers every
# message of the run the same and creates no Message for any of them. Each stops the run and puts
# the message back planned (ProviderUnavailable), as Postmark's SETTINGS_CODES do; failing them
# would fail every due SMS for good over a released number or a typo in the block. Each says what
# is wrong and where to fix it. Sources: https://www.twilio.com/docs/api/errors/<code>.
SETTINGS_CODES: dict[int, str] = {
    # the From: "not a valid message-capable Twilio phone number for this destination/account"
    # (not owned, released, ported away, still porting, mistyped), not a Twilio number, another
    # account's number, not SMS capable, not a number or alphanumeric ID at all
    21606: "the sender number is not an SMS-capable number of this account (released, ported "
    "away or mistyped?)",
    21601: "the sender number is not an SMS-capable number of this account",
    21659: "the sender number is not a Twilio number (still porting, or mistyped?)",
    21660: "the sender number belongs to another Twilio account",
    21661: "the sender number cannot send SMS",
    21212: "the sender is neither a phone number nor a valid alphanumeric sender ID",
    21603: "no sender was given",
    # the messaging service: "does not exist or does not match the Account SID"; a bad SID
    21701: "the messaging service does not exist on this account",
    21705: "the messaging service SID is not valid",
    # the account: Trial (or no approved compliance profile) reaches verified numbers only;
    # suspended or closed accounts send nothing
    21608: "the account is a Trial account, which sends only to numbers verified in the Twilio "
    "Console: upgrade it",
    20005: "the account is not active (suspended or out of funds)",
    10001: "the account is not active (suspended or out of funds)",
    20404: "the account was not found",
}


def error_meaning(code: int | str | None) -> tuple[str, Suppress | None]:
    try:
        return ERROR_CODES.get(int(code), (f"error {code}", None))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (f"error {code}", None)


# Allowance for clock difference between us and Twilio when matching a message to an attempt.
CLOCK_SKEW = timedelta(minutes=2)
AMBIGUOUS = (
    "reconcile: Twilio holds an SMS to this number from the attempt's moment whose text differs "
    "from ours (a messaging service's Smart Encoding?): check it in the Twilio Console"
)


class RedirectingHttpClient(TwilioHttpClient):
    """Sends every request to ``base_url`` (scheme + host), keeping Twilio's path and query."""

    def __init__(self, base_url: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(base_url)

    def request(self, method, url, *args, **kwargs):
        u = urlsplit(url)
        url = urlunsplit((self._base.scheme, self._base.netloc, u.path, u.query, u.fragment))
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str | None = None
    messaging_service_sid: str | None = None
    base_url: str | None = None
    timeout: float = 15.0
    # Where Twilio POSTs each status change (the public URL of relay's status endpoint); None:
    # statuses come from the delivery poll alone.
    status_callback_url: str | None = None

    def __post_init__(self) -> None:
        if not (self.from_number or self.messaging_service_sid):
            raise ValueError("Twilio needs a from number or a messaging service SID")


def _error_outcome(exc: TwilioException) -> Outcome:
    """What a refused create means. About the recipient (21211, 21610, 21614...): that message
    fails. About our credentials, sender, service or account (20003, SETTINGS_CODES): nothing
    of the run can go and Twilio created nothing, so ProviderUnavailable stops it. Busy: retry.
    Never Twilio's own text: it quotes the numbers."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", 0) or 0
    what, suppress = error_meaning(code)
    if suppress is not None:
        return Outcome("failed", error_code=str(code), reason=f"twilio: {what}", suppress=suppress)
    # 21702: the messaging service "is not available to send new messages. Retry"; 503: Service
    # Unavailable, the request refused before it was processed
    if code in (20429, 21702) or status in (429, 503):
        return Outcome("retry", error_code=str(code or status), reason="twilio: busy")
    if status >= 500:  # Twilio (20500): an SMS POST that failed so "may" have gone: never resent
        return Outcome(
            "unknown", error_code=str(code or status),
            reason=f"twilio: server error {code or status} after the request (it may have gone)",
        )  # fmt: skip
    if code == 20003 or status == 401:
        raise ProviderUnavailable(
            "Twilio rejected the account SID or auth token (20003). Check the TwilioAccount block."
        )
    if code in SETTINGS_CODES or status == 404:
        wrong = SETTINGS_CODES[code] if code in SETTINGS_CODES else SETTINGS_CODES[20404]
        raise ProviderUnavailable(
            f"Twilio refused the sender or account ({code or status}): {wrong}. No SMS went; "
            "they stay planned and go once it is fixed. Check the TwilioAccount block "
            "(from_number or messaging_service_sid) against the Twilio Console, or run relay "
            "connect --check-only."
        )
    return Outcome(
        "failed", error_code=str(code or status), reason=f"twilio: error {code or status}"
    )


def delivery_of(
    sid: str, status: str, error_code: int | str | None, at: datetime
) -> feedback_delivery.Delivery:
    """A status Twilio reported (fetched or called back), with what its code calls for: only an
    undelivered or failed message's code can suppress the number."""
    meaning, suppress = error_meaning(error_code) if error_code else ("", None)
    failed = status in ("undelivered", "failed")
    return feedback_delivery.Delivery(
        provider_message_id=sid, status=status,
        error_code=str(error_code) if error_code else None, at=at,
        suppress=(suppress.scope, suppress.reason) if suppress and failed else None,
        meaning=meaning,
    )  # fmt: skip


def status_callback_valid(settings: TwilioSettings, params: dict[str, str], signature: str) -> bool:
    """Whether a status callback comes from Twilio: its X-Twilio-Signature is the HMAC-SHA1 of
    the URL Twilio was given (``status_callback_url``, exactly) and the POSTed parameters,
    keyed by the auth token (twilio's RequestValidator computes and compares it)."""
    if not settings.status_callback_url or not signature:
        return False
    validator = RequestValidator(settings.auth_token)
    return bool(validator.validate(settings.status_callback_url, params, signature))


class TwilioProvider:
    name = "twilio"
    batch_size = 50
    # one HTTP call per SMS: each is claimed on its own, so a dead run leaves at most one in doubt
    request_size = 1

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        http = (
            RedirectingHttpClient(settings.base_url, timeout=settings.timeout)
            if settings.base_url
            else TwilioHttpClient(timeout=settings.timeout)
        )
        self.client = Client(settings.account_sid, settings.auth_token, http_client=http)
        self._sender: dict[str, str | None]
        if settings.messaging_service_sid:
            self._sender = {"messaging_service_sid": settings.messaging_service_sid}
        else:
            self._sender = {"from_": settings.from_number}
        if settings.status_callback_url:
            self._sender["status_callback"] = settings.status_callback_url

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for msg in messages:
            assert isinstance(msg.content, RenderedSms)
            try:
                outcome = self._send_one(msg.to, msg.content.text)
            except ProviderUnavailable:
                if not outcomes:
                    raise
                break  # what went is reported; the next run meets the error first and says so
            outcomes.append(outcome)
            if outcome.kind in ("retry", "unknown"):
                break  # the provider is struggling: leave the rest untouched for later
        rest = len(messages) - len(outcomes)
        outcomes.extend([Outcome("retry", reason="twilio: not attempted")] * rest)
        return outcomes

    def _send_one(self, to: str, body: str) -> Outcome:
        try:
            created = self.client.messages.create(to=to, body=body, **self._sender)
        except TwilioException as exc:
            return _error_outcome(exc)
        except URL_ERRORS:
            raise unusable_base_url("twilio", "TwilioAccount", self.settings.base_url) from None
        except requests.RequestException as exc:
            if request_never_sent(exc):
                return Outcome("retry", reason="twilio: could not connect")
            return Outcome("unknown", reason=f"twilio: {type(exc).__name__} after sending")
        return Outcome("sent", provider_message_id=created.sid)

    def reconcile(
        self,
        rows: Sequence[LedgerRow],
        now: datetime,
        settle: timedelta,
        taken: Collection[str] = (),
    ) -> list[Outcome]:
        """Match each row to a message Twilio holds: same number, same body, created since the
        attempt. Found → sent. Not found → planned again once ``settle`` has passed.

        Why resending then is sound (at most once), as for Postmark's search: Twilio creates the
        Message resource before it answers the POST and the Messages list reads those resources,
        so an SMS it took is found; ``settle`` covers a list that lags. A row is ``sending`` only
        for the one request of a run that died (one claim per request), and without this a kill
        between the claim and the request would leave an SMS that never left for a person.
        Rows already ``unknown`` (a timeout after sending) are only ever confirmed, never resent.

        Only a message created while the attempt's request lasted (its timeout, give or take the
        clocks' skew) can be the attempt's. One there whose text is not ours as we sent it (a
        messaging service's Smart Encoding rewrites some characters; another sender on the
        account) leaves the row ``unknown`` for a person (``AMBIGUOUS``), never resent: only an
        empty list for that moment says Twilio never received it. An SMS the ledger already
        holds as another message's (``taken``: a reminder to the same shared mobile sent just
        before the run died) is not this attempt, and is passed over.
        """
        used: set[str] = set(taken)
        by_number: dict[str, list] = {}
        outcomes = []
        for row in rows:
            if not (row.to_address and row.content_hash and row.sending_at):
                outcomes.append(Outcome("unknown", reason="reconcile: attempt not recorded"))
                continue
            try:
                if row.to_address not in by_number:
                    by_number[row.to_address] = self._recent_to(row.to_address, row.sending_at)
            except (TwilioException, requests.RequestException):
                outcomes.append(Outcome("pending", reason="twilio: message list unavailable"))
                continue
            # what Twilio created from this attempt was created while its request lasted
            last = row.sending_at + timedelta(seconds=self.settings.timeout) + CLOCK_SKEW
            near = [
                m
                for m in by_number[row.to_address]
                if m.sid not in used
                and m.date_created is not None
                and row.sending_at - CLOCK_SKEW <= m.date_created <= last
            ]
            match = next(
                (
                    m
                    for m in near
                    if hashlib.sha256((m.body or "").encode("utf-8")).hexdigest()
                    == row.content_hash
                ),
                None,
            )
            if match is not None:
                used.add(match.sid)
                outcomes.append(Outcome("sent", provider_message_id=match.sid, reason="reconciled"))
            elif near:  # an SMS to this number from that moment, its text not ours as we sent it
                outcomes.append(Outcome("unknown", reason=AMBIGUOUS))
            elif row.status == "sending" and now - row.sending_at >= settle:
                outcomes.append(Outcome("retry", reason="reconciled: Twilio never received it"))
            else:
                outcomes.append(Outcome("pending"))
        return outcomes

    def _recent_to(self, number: str, since: datetime) -> list:
        # Newest first; queued messages have no date_sent yet, so filter on date_created here.
        found = []
        for m in self.client.messages.stream(to=number, page_size=100):
            if m.date_created is not None and m.date_created < since - CLOCK_SKEW * 5:
                break
            found.append(m)
        return found

    def close(self) -> None:
        session = getattr(self.client.http_client, "session", None)
        if session is not None:
            session.close()

    # --- feedback ---------------------------------------------------------------------------

    def managed_unsubscribe(self) -> None:
        return None  # SMS carries its own opt-out words

    def feedback_feeds(self, soft_bounce_limit: int) -> list[Feed]:
        """Replies (STOP and START words) and the delivery of what we sent."""
        return [
            Feed("twilio-replies", self.pull_replies),
            Feed("twilio-delivery", self.pull_deliveries),
        ]

    def pull_deliveries(self, con: duckdb.DuckDBPyConnection, now: datetime) -> Counter:
        """Fetch each recent message whose status is not final (bounded: tasks/
        feedback_delivery.py) and record what it became. Read first, then one transaction: a
        pull killed while reading records nothing, the next asks again. If Twilio stops
        answering partway, what was read is recorded and the rest waits for the next pull."""
        found: list[feedback_delivery.Delivery] = []
        problem = None
        for sid in feedback_delivery.awaiting(con, "twilio", now):
            try:
                m = self.client.messages(sid).fetch()
            except TwilioException as exc:
                if getattr(exc, "status", None) == 404:
                    found.append(delivery_of(sid, "missing", None, now))
                    continue
                problem = exc
                break
            except requests.RequestException as exc:
                problem = exc
                break
            found.append(delivery_of(sid, m.status, m.error_code, m.date_updated or now))
        counts = feedback_delivery.record(con, "twilio", found, now, source="poll")
        if problem is not None:
            raise FeedbackUnavailable(
                f"Twilio's messages could not be read ({type(problem).__name__}) after "
                f"{len(found)}; those were recorded, the next pull asks about the rest."
            )
        return counts

    def pull_replies(self, con: duckdb.DuckDBPyConnection, now: datetime) -> Counter:
        """Inbound STOP/START words since the cursor, as suppress/lift rows for the sender's
        number. An opt-out word suppresses the number for every SMS (Twilio itself blocks
        further sends with 21610); an opt-in word lifts whatever suppressions it has.

        Replies are messages to our sending number; with a messaging service (several numbers,
        no ``from_number``) every inbound message is read.
        """
        number = self.settings.from_number
        last = feedback.cursor(con, "twilio", "inbound")
        since = feedback.pull_days(last, now)[0].isoformat()
        try:
            filters = {"to": number} if number else {}
            messages = [
                m
                for m in self.client.messages.stream(
                    date_sent_after=since, page_size=1000, **filters
                )
                if m.direction == "inbound"
            ]
        except (TwilioException, requests.RequestException) as exc:
            raise FeedbackUnavailable(
                f"Twilio's message list could not be read ({type(exc).__name__}); nothing from "
                "it was recorded, the next pull tries again."
            ) from None

        def when(m) -> datetime:
            return m.date_sent or m.date_created or now

        messages.sort(key=lambda m: (when(m), m.sid))
        fresh = feedback.new_keys(con, "twilio", "inbound", [m.sid for m in messages])
        new = [m for m in messages if m.sid in fresh]
        counts: Counter = Counter()
        with transaction(con):
            book = feedback.Book(con, "sms", {normalise_address("sms", m.from_ or "") for m in new})
            items = []
            for m in new:
                at = when(m)
                keyword = reply_keyword(m.body)
                phone = normalise_address("sms", m.from_ or "")
                evidence = f"twilio inbound {m.sid}"
                if keyword is None or not phone:
                    outcome, counted = "ignored", "replies_other"
                elif keyword == "stop":
                    added = book.suppress(phone, "all", "stop", "twilio", evidence, at)
                    outcome, counted = (
                        ("suppress", "sms_stop") if added else ("already", "sms_stop_already")
                    )
                else:
                    lifted = book.lift(phone, "opt_in", "twilio", evidence, at)
                    outcome, counted = (
                        ("lift", "sms_start") if lifted else ("ignored", "sms_start_not_suppressed")
                    )
                items.append((m.sid, outcome, at))
                counts[counted] += 1
            book.write(con)
            feedback.record_items(con, "twilio", "inbound", items, now)
            newest = max((when(m) for m in messages), default=None)
            feedback.advance(con, "twilio", "inbound", newest, len(new), now)
        return +counts
