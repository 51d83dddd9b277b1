"""Postmark through postmarker 1.0 (https://postmarkapp.com/developer; facts: docs/reference.md).

Odd things about this API and client, and what we do about them:
- The batch endpoint answers HTTP 200 even when items fail: every item's ``ErrorCode`` is checked.
- ``send_batch`` chunks by 500 itself, but an error in a later chunk would lose the results of the
  earlier ones, so we call it once per chunk of at most 500.
- Transactional mail goes on the transactional stream ("outbound"), marketing on the broadcast
  stream: a mix-up is a compliance problem, so the stream comes from the message's purpose only,
  and marketing waits while its stream is not a Broadcasts one (``unsubscribe_handling``).
- ``TrackLinks`` is passed explicitly (postmarker would otherwise send "None" for single sends).
  The clinic's ``providers.tracking`` turns opens and links on for marketing email only
  (``track_marketing``); the server's own "Open tracking" setting, if on, tracks everything.
  What comes back (``engagement_feeds``): tasks/engagement.py.
- No idempotency key exists. The send key travels in ``Metadata.send_key``, and reconciliation
  searches outbound messages by it (``GET /messages/outbound?metadata_send_key=``) on the
  message's own stream: the search reads only the transactional stream unless ``messagestream``
  names another, so a marketing email searched without it is "not found" and sent twice.
- Suppressions are per stream: a 406 ("inactive recipient") means the address is suppressed on
  the message's stream, without saying why; ``_inactive_reason`` asks that stream's dump, so an
  unsubscribe is recorded as one (marketing only), not as a hard bounce.
- Feedback, per stream: ``GET /bounces`` (the transactional stream unless ``messagestream``
  says otherwise; by whole days in US Eastern time, at most 10,000 deep) and the stream's
  suppression dump (Postmark-managed unsubscribes, manual suppressions), from a day before
  their cursor, recorded by tasks/feedback.py.
- Unsubscribes on the marketing stream: its ``UnsubscribeHandlingType`` (``GET
  /message-streams/{id}``) says who handles them. ``Postmark`` (Postmark's default for broadcast
  streams): Postmark adds its own link and RFC 8058 headers, which cannot be edited, so our mail
  carries its placeholder ``{{{ pm:unsubscribe }}}`` where our link would be and no headers, and
  its unsubscribes come back in the stream's dump. ``Custom`` (or ``None``): ours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import duckdb
import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tasks import engagement, feedback
from tasks.feedback import Feed, FeedbackUnavailable, Scope
from tasks.messages.ledger import LedgerRow, normalise_address
from tasks.providers.common import (
    STRUGGLING,
    URL_ERRORS,
    Outcome,
    OutgoingMessage,
    ProviderUnavailable,
    RenderedEmail,
    Suppress,
    metadata_key,
    request_never_sent,
    unusable_base_url,
)
from tasks.providers.postmark_codes import item_outcome, server_error, settings_refusal, stopped
from tasks.warehouse import transaction

DEFAULT_API = "https://api.postmarkapp.com/"
# Where Postmark puts its own unsubscribe link, in the HTML and the text body alike.
POSTMARK_UNSUBSCRIBE = "{{{ pm:unsubscribe }}}"


@dataclass(frozen=True)
class PostmarkSettings:
    server_token: str = field(repr=False)
    from_address: str
    reply_to: str | None = None
    transactional_stream: str = "outbound"
    marketing_stream: str = "broadcast"
    base_url: str | None = None
    track_links: str = "None"  # None | HtmlAndText | HtmlOnly | TextOnly
    track_opens: bool = False
    timeout: float = 30.0


class PostmarkProvider:
    name = "postmark"
    batch_size = 500
    request_size = 500  # the batch API: one request, one attempt for all its messages

    def __init__(self, settings: PostmarkSettings) -> None:
        self.settings = settings
        self.client = PostmarkClient(
            server_token=settings.server_token,
            timeout=settings.timeout,
            # postmarker joins endpoint paths to the root: a base URL path prefix would be dropped
            root_api_url=(settings.base_url or DEFAULT_API).rstrip("/") + "/",
            verbosity=0,  # postmarker's debug log would print message bodies and addresses
        )
        self._handling: str | None = None  # the marketing stream's UnsubscribeHandlingType
        self._marketing_opens, self._marketing_links = False, False

    @property
    def reaches_people(self) -> bool:
        """False for a stand-in on this machine (the sandbox): its mail reaches nobody."""
        host = (urlsplit(self.settings.base_url or DEFAULT_API).hostname or "").lower()
        return not (host in ("localhost", "::1") or host.startswith("127."))

    def reply_to_by_default(self, address: str | None) -> None:
        """Replies go to ``address`` (the clinic's providers.sender.reply_to) unless the
        PostmarkServer block names its own ``reply_to``."""
        if address and not self.settings.reply_to:
            self.settings = replace(self.settings, reply_to=address)

    def track_marketing(self, opens: bool, links: bool) -> None:
        """Track opens and/or links of marketing email (the clinic's providers.tracking)."""
        self._marketing_opens, self._marketing_links = opens, links

    def _as_dict(self, msg: OutgoingMessage) -> dict:
        content = msg.content
        assert isinstance(content, RenderedEmail)
        return {
            "From": self.settings.from_address,
            **({"ReplyTo": self.settings.reply_to} if self.settings.reply_to else {}),
            "To": msg.to,
            "Subject": content.subject,
            "HtmlBody": content.html,
            "TextBody": content.text,
            "Tag": msg.tag,
            "Metadata": {"send_key": metadata_key(msg.send_key)},
            "Headers": dict(content.headers),
            **self._tracking(msg.purpose == "marketing"),
            "MessageStream": self.stream_for(msg.purpose),
        }

    def _tracking(self, marketing: bool) -> dict:
        links = "HtmlAndText" if marketing and self._marketing_links else self.settings.track_links
        opens = self.settings.track_opens or (marketing and self._marketing_opens)
        return {"TrackLinks": links, "TrackOpens": opens}

    def stream_for(self, purpose: str) -> str:
        """The stream a message goes on, from its purpose only (a mix-up is a compliance problem)."""
        if purpose == "marketing":
            return self.settings.marketing_stream
        return self.settings.transactional_stream

    def unsubscribe_handling(self) -> str:
        """The marketing stream's ``UnsubscribeHandlingType`` (None, Postmark or Custom); a
        stream that is not a Broadcasts stream sends no marketing (ProviderUnavailable)."""
        stream = self.settings.marketing_stream
        try:
            reply = self.client.call("GET", f"/message-streams/{stream}")
            kind = reply["MessageStreamType"]
            handling = reply["SubscriptionManagementConfiguration"]["UnsubscribeHandlingType"]
        except (ClientError, requests.RequestException, KeyError, TypeError, ValueError) as exc:
            code = f" ({exc.error_code})" if isinstance(exc, ClientError) else ""
            raise ProviderUnavailable(
                f"Postmark could not say how stream {stream!r} handles unsubscribes "
                f"({type(exc).__name__}{code}); no marketing email went this run. Check that the "
                "PostmarkServer block's marketing_stream names a stream of this server."
            ) from None
        if kind != "Broadcasts":  # Postmark's terms: no marketing on a transactional stream
            raise ProviderUnavailable(
                f"Postmark stream {stream!r} is a {kind} stream: marketing email goes on a "
                "Broadcasts stream only. Name one in the PostmarkServer block's marketing_stream."
            )
        return handling

    def managed_unsubscribe(self) -> str | None:
        """Postmark's placeholder when it manages the marketing stream's unsubscribes (its link,
        its headers), else None: ours. Read once a provider (a dispatch run)."""
        if self._handling is None:
            self._handling = self.unsubscribe_handling()
        return POSTMARK_UNSUBSCRIBE if self._handling == "Postmark" else None

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for start in range(0, len(messages), self.batch_size):
            chunk = messages[start : start + self.batch_size]
            try:
                results = self._send_chunk(chunk)
            except ProviderUnavailable:
                if not outcomes:
                    raise
                results = []  # earlier chunks went: report them; the next run meets the error
            outcomes.extend(results)
            if len(results) < len(chunk) or any(o.kind in STRUGGLING for o in results):
                # the provider is struggling: leave the rest for a later run, untouched
                rest = len(messages) - len(outcomes)
                outcomes.extend([Outcome("retry", reason="postmark: not attempted")] * rest)
                break
        return outcomes

    def _send_chunk(self, chunk: Sequence[OutgoingMessage]) -> list[Outcome]:
        n = len(chunk)
        try:
            results = self.client.emails.send_batch(*[self._as_dict(m) for m in chunk])
        except ClientError as exc:
            status = getattr(getattr(exc.__cause__, "response", None), "status_code", 0)
            if status >= 500:
                return [server_error(status)] * n
            if exc.error_code == 429 or status == 429:
                return [
                    Outcome("retry", error_code=str(exc.error_code), reason="postmark: busy")
                ] * n
            refused = settings_refusal(exc.error_code, str(exc))
            if refused:
                raise ProviderUnavailable(stopped(exc.error_code, refused)) from None
            # the whole request was refused, so nothing in it went; a person must look
            return [
                Outcome("failed", error_code=str(exc.error_code), reason="postmark: batch refused")
            ] * n
        except requests.HTTPError as exc:  # a non-JSON error page
            status = exc.response.status_code if exc.response is not None else 0
            if status >= 500:
                return [server_error(status)] * n
            if status == 429:
                return [Outcome("retry", error_code=str(status), reason="postmark: busy")] * n
            return [Outcome("unknown", error_code=str(status), reason="postmark: odd reply")] * n
        except URL_ERRORS:
            raise unusable_base_url("postmark", "PostmarkServer", self.settings.base_url) from None
        except requests.RequestException as exc:
            if request_never_sent(exc):
                return [Outcome("retry", reason="postmark: could not connect")] * n
            # timed out or cut off after the request went: it may have been accepted
            return [Outcome("unknown", reason=f"postmark: {type(exc).__name__} after sending")] * n
        except (KeyError, ValueError):
            # an error reply without an ErrorCode: the request arrived, the outcome is unclear
            return [Outcome("unknown", reason="postmark: unreadable reply")] * n
        if len(results) != n:
            return [Outcome("unknown", reason="postmark: reply did not match the batch")] * n
        codes = [(int(i.get("ErrorCode", -1)), str(i.get("Message", ""))) for i in results]
        declined = [(c, what) for c, m in codes if (what := settings_refusal(c, m))]
        if declined and all(c != 0 for c, _ in codes):  # nothing went: a whole-request refusal
            raise ProviderUnavailable(stopped(*declined[0]))
        inactive: dict[tuple[str, str], Suppress] = {}
        for item, m in zip(results, chunk, strict=True):
            stream = self.stream_for(m.purpose)
            if int(item.get("ErrorCode", -1)) == 406 and (stream, m.to) not in inactive:
                inactive[stream, m.to] = self._inactive_reason(stream, m.to)
        return [
            item_outcome(item, inactive.get((self.stream_for(m.purpose), m.to)))
            for item, m in zip(results, chunk, strict=True)
        ]

    def _inactive_reason(self, stream: str, address: str) -> Suppress:
        """Why Postmark refused ``address`` on ``stream`` (406): the stream's own dump, read as
        the suppression sync reads it (an unsubscribe stops marketing only, a hard bounce all).
        If the dump cannot say, the address still never gets that stream's mail again:
        ``inactive_recipient``, not a bounce (the dump's entry, once pulled, adds one if so)."""
        path = f"/message-streams/{stream}/suppressions/dump"
        try:
            found = self.client.call("GET", path, EmailAddress=address).get("Suppressions") or []
        except (ClientError, requests.RequestException, KeyError, ValueError, AttributeError):
            found = []
        wanted = normalise_address("email", address)
        entry = next((e for e in found if normalise_address("email", str(
            e.get("EmailAddress") or "")) == wanted), None)  # fmt: skip
        if entry is None:
            return Suppress(self._scope(stream), "inactive_recipient")
        reason = dump_reason(entry)
        return Suppress("all" if reason == "hard_bounce" else self._scope(stream), reason)

    def find_by_send_key(self, send_key: str, stream: str) -> str | None:
        """The MessageID Postmark holds for this send key on this stream, if any (outbound search
        by metadata; without ``messagestream`` Postmark searches the transactional stream only)."""
        reply = self.client.call(
            "GET",
            "/messages/outbound",
            count=10,
            offset=0,
            messagestream=stream,
            metadata_send_key=metadata_key(send_key),
        )
        messages = reply.get("Messages") or []
        return messages[0]["MessageID"] if messages else None

    def reconcile(
        self, rows: Sequence[LedgerRow], now: datetime, settle: timedelta, taken: object = ()
    ) -> list[Outcome]:
        """Found by send key → sent. Not found → planned again once ``settle`` has passed.

        Why resending then is sound (at most once): Postmark stores a message before it answers
        and the outbound search reads that store, so a message it accepted is found. We wait
        ``settle`` after the attempt so a request still being indexed is not mistaken for one that
        never arrived. Rows already ``unknown`` (a timeout) are only ever confirmed, never resent.
        """
        outcomes = []
        for row in rows:
            try:
                found = self.find_by_send_key(row.send_key, self.stream_for(row.purpose))
            except (ClientError, requests.RequestException, KeyError, ValueError):
                outcomes.append(Outcome("pending", reason="postmark: search unavailable"))
                continue
            if found:
                outcomes.append(Outcome("sent", provider_message_id=found, reason="reconciled"))
            elif row.status == "sending" and row.sending_at and now - row.sending_at >= settle:
                outcomes.append(Outcome("retry", reason="reconciled: Postmark never received it"))
            else:
                outcomes.append(Outcome("pending"))
        return outcomes

    def close(self) -> None:
        self.client.session.close()

    # --- feedback ---------------------------------------------------------------------------

    def feedback_feeds(self, soft_bounce_limit: int) -> list[Feed]:
        """Each stream's bounces (``GET /bounces?messagestream=``), then each stream's
        suppression dump: how Postmark-managed unsubscribes and manual suppressions come back."""
        streams = list(
            dict.fromkeys((self.settings.transactional_stream, self.settings.marketing_stream))
        )

        # a feed per stream, each pull closing over its own stream (mypy infers no lambda that
        # binds it as a default argument)
        def bounces(stream: str) -> Feed:
            return Feed(
                f"postmark-bounces-{stream}",
                lambda con, now: self.pull_bounces(
                    con, now, stream, soft_bounce_limit=soft_bounce_limit
                ),
            )

        def suppressions(stream: str) -> Feed:
            return Feed(
                f"postmark-suppressions-{stream}",
                lambda con, now: self.pull_suppressions(con, stream, now),
            )

        return [bounces(s) for s in streams] + [suppressions(s) for s in streams]

    def engagement_feeds(self) -> list[Feed]:
        """Each stream's opens and clicks (tasks/engagement.py): counts per message only."""
        streams = dict.fromkeys(
            (self.settings.transactional_stream, self.settings.marketing_stream)
        )

        def feed(kind: engagement.Kind, stream: str) -> Feed:  # closes over its own kind, stream
            return Feed(
                f"postmark-{kind}s-{stream}",
                lambda con, now: engagement.pull_postmark(con, self.client, kind, stream, now),
            )

        kinds: tuple[engagement.Kind, ...] = ("open", "click")
        return [feed(kind, stream) for stream in streams for kind in kinds]

    def _scope(self, stream: str | None) -> Scope:
        """What a complaint or suppression on this stream stops: mail on the transactional
        stream stops everything (Postmark would refuse it anyway), on another stream marketing."""
        return "all" if stream == self.settings.transactional_stream else "marketing"

    def pull_bounces(
        self, con: duckdb.DuckDBPyConnection, now: datetime, stream: str, *, soft_bounce_limit: int
    ) -> Counter:
        """A stream's bounces from the day before its cursor (Postmark filters by day, in US
        Eastern time; a window too big for one query is read day by day), recorded by
        tasks.feedback."""
        feed = f"bounces:{stream}"
        days = feedback.pull_days(feedback.cursor(con, "postmark", feed), now)
        bounces_api = self.client.bounces  # its all() (postmarker 1.0) has no messagestream
        found = _read_window(
            lambda first, last: [
                b.as_dict()
                for b in bounces_api.expand_responses(
                    bounces_api.call_many(
                        "GET",
                        "/bounces/",
                        count=MAX_ITEMS,
                        offset=0,
                        fromdate=first,
                        todate=last,
                        messagestream=stream,
                    ),
                    "Bounces",
                )  # fmt: skip
            ],
            days,
            MAX_ITEMS,
            f"bounces of stream {stream!r}",
        )
        found.sort(key=lambda b: (feedback.parse_time(b["BouncedAt"]), int(b["ID"])))
        bounces = [
            feedback.Bounce(
                bounce_id=str(b["ID"]),
                email=normalise_address("email", b["Email"]),
                kind=BOUNCE_KINDS.get(b["Type"], "other"),
                at=feedback.parse_time(b["BouncedAt"]),
                provider_message_id=b.get("MessageID"),
                stream=b.get("MessageStream"),
                type=b["Type"],
                complaint_scope=self._scope(b.get("MessageStream")),
                unsubscribe=b["Type"] in UNSUBSCRIBE_TYPES,
            )
            for b in found
        ]
        return feedback.record_bounces(
            con, "postmark", bounces, now, soft_bounce_limit=soft_bounce_limit, feed=feed
        )

    def pull_suppressions(
        self, con: duckdb.DuckDBPyConnection, stream: str, now: datetime
    ) -> Counter:
        """A stream's suppression dump (the generic ``client.call``: postmarker 1.0 has no
        manager for it): Postmark-managed unsubscribes, complaints, manual blocks."""
        feed = f"suppressions:{stream}"
        days = feedback.pull_days(feedback.cursor(con, "postmark", feed), now)
        path = f"/message-streams/{stream}/suppressions/dump"
        entries = _read_window(
            lambda first, last: (
                self.client.call("GET", path, fromdate=first, todate=last).get("Suppressions") or []
            ),
            days,
            DUMP_LIMIT,
            f"suppressions of stream {stream!r}",
        )
        entries.sort(key=lambda s: feedback.parse_time(s["CreatedAt"]))
        for entry in entries:
            entry["_email"] = normalise_address("email", entry["EmailAddress"])
            entry["_key"] = feedback.digest(stream, entry["_email"], entry["CreatedAt"])
        fresh = feedback.new_keys(con, "postmark", feed, [e["_key"] for e in entries])
        new = list({e["_key"]: e for e in entries if e["_key"] in fresh}.values())
        scope = self._scope(stream)
        counts: Counter = Counter()
        with transaction(con):
            book = feedback.Book(con, "email", {e["_email"] for e in new})
            items = []
            for e in new:
                at = feedback.parse_time(e["CreatedAt"])
                reason = dump_reason(e)
                evidence = (f"postmark suppression on stream {stream} "
                            f"({e.get('SuppressionReason')}, origin {e.get('Origin')})")  # fmt: skip
                this_scope: Scope = "all" if reason == "hard_bounce" else scope
                added = book.suppress(e["_email"], this_scope, reason, "postmark", evidence, at)
                items.append((e["_key"], "suppress" if added else "already", at))
                counts[f"suppressed_{reason}" if added else "already_suppressed"] += 1
            book.write(con)
            feedback.record_items(con, "postmark", feed, items, now)
            newest = max((feedback.parse_time(e["CreatedAt"]) for e in entries), default=None)
            feedback.advance(con, "postmark", feed, newest, len(new), now)
        return +counts


# --- feedback: bounces and suppression dumps ----------------------------------------------------

# Postmark pages at most this deep into one bounce query; a suppression dump is read whole, and
# one that returns this many may have been cut short (the window is then read day by day).
MAX_ITEMS = 10_000
DUMP_LIMIT = 500
# Postmark's bounce types (``Type``) as we record them; the rest (Transient, DnsError...): other
BOUNCE_KINDS: dict[str, Literal["hard", "soft", "spam_complaint"]] = {
    "HardBounce": "hard",
    "BadEmailAddress": "hard",  # "Address is invalid": no mail can reach it
    "SoftBounce": "soft",
    "SpamComplaint": "spam_complaint",
}
# "Unsubscribe or Remove request": the recipient replied asking to be taken off. Postmark leaves
# the address active, so only we can honour it (marketing only, as an unsubscribe click).
UNSUBSCRIBE_TYPES = frozenset({"Unsubscribe"})
# keyed by a dump entry's SuppressionReason, which an entry may lack (None: no reason of ours)
DUMP_REASONS: dict[str | None, str] = {
    "HardBounce": "hard_bounce",
    "SpamComplaint": "spam_complaint",
}


def dump_reason(entry: dict) -> str:
    """Our suppression reason for an entry of a stream's suppression dump."""
    reason = DUMP_REASONS.get(entry.get("SuppressionReason"))
    if reason is None:  # ManualSuppression: the recipient's own unsubscribe, or ours
        reason = "unsubscribed" if entry.get("Origin") == "Recipient" else "manual"
    return reason


def _read_window(fetch, days: list[date], limit: int, what: str) -> list[dict]:
    """``fetch(first_day, last_day)`` for the whole window, or day by day when the window holds
    as many items as one query returns (``limit``: it may have been cut short). A provider error
    means nothing of this feed is recorded this time."""

    def read(first: date, last: date) -> list[dict]:
        try:
            return fetch(first.isoformat(), last.isoformat())
        except (ClientError, requests.RequestException, KeyError, ValueError) as exc:
            code = f": {exc.error_code}" if isinstance(exc, ClientError) else ""
            raise FeedbackUnavailable(
                f"Postmark {what} could not be read ({type(exc).__name__}{code}); nothing from "
                "it was recorded, the next pull tries again."
            ) from None

    items = read(days[0], days[-1])
    if len(items) < limit or len(days) == 1:
        return items
    items = []
    for day in days:
        found = read(day, day)
        if len(found) >= limit:
            raise FeedbackUnavailable(
                f"Postmark {what}: {day} alone has {limit} or more items, more than one query "
                "returns; export that day from Postmark and import it."
            )
        items.extend(found)
    return items
