"""Feedback: what providers and people tell us after a message went, turned into suppressions.

Four feeds, each pulled every tick. A pull fetches everything new first, then records it in ONE
transaction together with its cursor (state.feedback_cursors), keyed on the provider's own ids,
so a pull killed at any moment loses nothing and counts nothing twice: the next pull re-reads
from the old cursor and the keys drop what is already in.

- **Postmark bounces** (``GET /bounces`` from the day before the cursor: Postmark filters by day,
  in US Eastern time; a window too big for one query, 10,000 deep, is read day by day). Each
  bounce is kept once in ``state.email_bounces``, the one record the email marketing list counts. A hard bounce
  suppresses the address for everything; a spam complaint suppresses it (everything when it came
  from transactional mail, marketing otherwise); the fifth soft bounce since the address was last
  lifted (``state.email_bounce_counts``, the list's own rule) suppresses it for marketing, so the
  send-time check stops marketing at once, before the next model build. Other types (transient,
  DNS, auto-responder...) are kept and counted, nothing more.
- **Postmark suppression dumps**, per stream (the generic ``client.call``: postmarker 1.0 has no
  manager for them). This is how Postmark-managed unsubscribes and manual suppressions come back.
  A suppression on the transactional stream stops everything (Postmark would refuse the mail
  anyway); on the broadcast stream, marketing.
- **Twilio replies**: inbound messages from the Messages list. An opt-out word suppresses the
  number for every SMS (Twilio itself blocks further sends with 21610); an opt-in word lifts
  whatever suppressions the number has. (A 21610 at send time is recorded by dispatch.)
- **Unsubscribe clicks**: the unsubscribe endpoint appends each verified click to an inbox file
  beside the clinic's database (it must answer even while a tick holds the database), then
  records it at once if it can; whatever it could not is recorded by the next pull.

Nothing here logs or returns an address: results are counts.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
from email_validator import EmailNotValidError, validate_email

from tasks.errors import UserFacingError
from tasks.messages import ledger
from tasks.unsubscribe.tokens import UnsubscribeClaim
from tasks.warehouse import transaction

# The list model's rule, read through state.email_bounce_counts: this many soft bounces since the
# latest lift take an address off the email marketing list.
SOFT_BOUNCE_LIMIT = 5
# How far back a first pull reads: Postmark keeps bounces 45 days.
FIRST_PULL_DAYS = 45
# Re-read this much before the cursor: providers filter by whole days, Postmark in US Eastern time.
OVERLAP = timedelta(days=1)
# Postmark pages at most this deep into one bounce query; a suppression dump is read whole, and
# one that returns this many may have been cut short (the window is then read day by day).
POSTMARK_MAX_ITEMS = 10_000
POSTMARK_DUMP_LIMIT = 500

# Twilio's default opt-out and opt-in words (a reply that is exactly one of them).
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})

BOUNCE_KINDS = {"HardBounce": "hard", "SoftBounce": "soft", "SpamComplaint": "spam_complaint"}
DUMP_REASONS = {"HardBounce": "hard_bounce", "SpamComplaint": "spam_complaint"}

Scope = Literal["all", "marketing"]


class FeedbackUnavailable(UserFacingError):
    """A provider could not be read; nothing from this feed was recorded this time."""


# --- cursors and item keys ----------------------------------------------------------------------


def cursor(con: duckdb.DuckDBPyConnection, provider: str, feed: str) -> datetime | None:
    row = con.execute(
        "SELECT cursor_at FROM state.feedback_cursors WHERE provider = ? AND feed = ?",
        [provider, feed],
    ).fetchone()
    return row[0] if row else None


def _advance(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    feed: str,
    newest: datetime | None,
    new_items: int,
    now: datetime,
) -> None:
    """Move the cursor forward only (an overlap re-read never moves it back)."""
    con.execute(
        """
        INSERT INTO state.feedback_cursors AS c (provider, feed, cursor_at, updated_at, items)
        VALUES ($provider, $feed, $newest, $now, $n)
        ON CONFLICT (provider, feed) DO UPDATE SET
            cursor_at = greatest(c.cursor_at, excluded.cursor_at),
            updated_at = excluded.updated_at,
            items = c.items + excluded.items
        """,
        {"provider": provider, "feed": feed, "newest": newest, "now": now, "n": new_items},
    )


def _new_keys(
    con: duckdb.DuckDBPyConnection, provider: str, feed: str, keys: list[str]
) -> set[str]:
    """Which of these provider item keys no earlier pull took."""
    taken = con.execute(
        "SELECT item_key FROM state.feedback_items WHERE provider = ? AND feed = ? "
        "AND item_key IN (SELECT unnest(?::VARCHAR[]))",
        [provider, feed, keys],
    ).fetchall()
    return set(keys) - {k for (k,) in taken}


def _record_items(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    feed: str,
    items: list[tuple[str, str, datetime]],
    now: datetime,
) -> None:
    """Mark items taken, with what each did: (key, outcome, occurred_at)."""
    if not items:
        return
    keys, outcomes, times = (list(c) for c in zip(*items, strict=True))
    con.execute(
        """
        INSERT INTO state.feedback_items (provider, feed, item_key, outcome, occurred_at,
                                          recorded_at)
        SELECT $provider, $feed, unnest($keys::VARCHAR[]), unnest($outcomes::VARCHAR[]),
               unnest($times::TIMESTAMPTZ[]), $now
        """,
        {"provider": provider, "feed": feed, "keys": keys, "outcomes": outcomes,
         "times": times, "now": now},
    )  # fmt: skip


def _digest(*parts: str) -> str:
    """An item key built from personal data (an address) is stored as a digest, not in clear."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def pull_days(last: datetime | None, now: datetime) -> list[date]:
    """The UTC days a pull asks for: from a day before the cursor (or 45 days back) to today."""
    start = (last - OVERLAP).date() if last else (now - timedelta(days=FIRST_PULL_DAYS)).date()
    return [start + timedelta(days=i) for i in range((now.date() - start).days + 1)]


class Book:
    """The suppression state of the addresses one pull touches: read once, kept current in
    memory while the pull decides item by item, written in one statement.

    The state of an address per scope is its latest row (as ledger.suppressed_addresses reads
    it); 'all' covers 'marketing' too.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, channel: ledger.Channel, addresses: set[str]
    ) -> None:
        self.channel = channel
        self.rows: list[tuple] = []
        self.latest: dict[tuple[str, str], tuple[str, datetime]] = {}
        for address, scope, action, at in con.execute(
            """
            SELECT address, scope, action, occurred_at FROM state.suppressions
            WHERE channel = $channel AND address IN (SELECT unnest($addresses::VARCHAR[]))
            QUALIFY row_number() OVER (PARTITION BY address, scope
                                       ORDER BY occurred_at DESC, suppression_id DESC) = 1
            """,
            {"channel": channel, "addresses": sorted(addresses)},
        ).fetchall():
            self.latest[(address, scope)] = (action, at)

    def suppressed(self, address: str, scope: Scope) -> bool:
        scopes = ("all",) if scope == "all" else ("all", "marketing")
        return any(self.latest.get((address, s), ("lift",))[0] == "suppress" for s in scopes)

    def _add(self, address, action, scope, reason, source, evidence, at) -> None:
        self.rows.append((address, action, reason, scope, source, evidence, at))
        previous = self.latest.get((address, scope))
        if previous is None or at >= previous[1]:
            self.latest[(address, scope)] = (action, at)

    def suppress(
        self, address: str, scope: Scope, reason: str, source: str, evidence: str, at: datetime
    ) -> bool:
        """Suppress unless something already covers it; True when a row was added."""
        if self.suppressed(address, scope):
            return False
        self._add(address, "suppress", scope, reason, source, evidence, at)
        return True

    def lift(self, address: str, reason: str, source: str, evidence: str, at: datetime) -> int:
        """Lift every scope the address is suppressed in; how many."""
        scopes = sorted(
            s
            for (a, s), (action, _) in self.latest.items()
            if a == address and action == "suppress"
        )
        for scope in scopes:
            self._add(address, "lift", scope, reason, source, evidence, at)
        return len(scopes)

    def write(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.rows:
            return
        cols = [list(c) for c in zip(*self.rows, strict=True)]
        con.execute(
            """
            INSERT INTO state.suppressions (channel, address, action, reason, scope, source,
                                            evidence, occurred_at, recorded_at)
            SELECT $channel, unnest($a::VARCHAR[]), unnest($b::VARCHAR[]), unnest($c::VARCHAR[]),
                   unnest($d::VARCHAR[]), unnest($e::VARCHAR[]), unnest($f::VARCHAR[]),
                   unnest($g::TIMESTAMPTZ[]), now()
            """,
            {"channel": self.channel, **dict(zip("abcdefg", cols, strict=True))},
        )
        self.rows = []


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- Postmark ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostmarkStreams:
    transactional: str = "outbound"
    marketing: str = "broadcast"

    def scope(self, stream: str | None) -> Scope:
        return "all" if stream == self.transactional else "marketing"


def _read_window(fetch, days: list[date], limit: int, what: str) -> list[dict]:
    """``fetch(first_day, last_day)`` for the whole window, or day by day when the window holds
    as many items as one query returns (``limit``: it may have been cut short). A provider error
    means nothing of this feed is recorded this time."""
    import requests
    from postmarker.exceptions import ClientError

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


def pull_postmark_bounces(
    con: duckdb.DuckDBPyConnection, client, streams: PostmarkStreams, now: datetime
) -> Counter:
    """New bounces into state.email_bounces, with the suppressions they call for."""
    days = pull_days(cursor(con, "postmark", "bounces"), now)
    bounces = _read_window(
        lambda first, last: [
            b.as_dict()
            for b in client.bounces.all(count=POSTMARK_MAX_ITEMS, fromdate=first, todate=last)
        ],
        days,
        POSTMARK_MAX_ITEMS,
        "bounces",
    )
    bounces.sort(key=lambda b: (_parse_time(b["BouncedAt"]), int(b["ID"])))
    known = {
        k
        for (k,) in con.execute(
            "SELECT bounce_id FROM state.email_bounces WHERE bounce_id IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [[str(b["ID"]) for b in bounces]],
        ).fetchall()
    }
    new = [b for b in bounces if str(b["ID"]) not in known]
    counts: Counter = Counter(f"bounces_{BOUNCE_KINDS.get(b['Type'], 'other')}" for b in new)
    with transaction(con):
        if new:
            rows = [
                (str(b["ID"]), ledger.normalise_address("email", b["Email"]),
                 BOUNCE_KINDS.get(b["Type"], "other"), _parse_time(b["BouncedAt"]),
                 b.get("MessageID"), b.get("MessageStream"), b["Type"])
                for b in new
            ]  # fmt: skip
            cols = dict(zip("abcdefg", ([list(c) for c in zip(*rows, strict=True)]), strict=True))
            con.execute(
                "INSERT INTO state.email_bounces SELECT unnest($a::VARCHAR[]), "
                "unnest($b::VARCHAR[]), unnest($c::VARCHAR[]), unnest($d::TIMESTAMPTZ[]), "
                "'postmark'",
                {k: cols[k] for k in "abcd"},
            )
            con.execute(
                "INSERT INTO state.email_bounce_messages SELECT unnest($a::VARCHAR[]), "
                "unnest($e::VARCHAR[]), unnest($f::VARCHAR[]), unnest($g::VARCHAR[])",
                {k: cols[k] for k in "aefg"},
            )
            book = Book(con, "email", set(cols["b"]))
            for bounce_id, email, kind, at, _, stream, type_ in rows:
                if kind == "hard":
                    reason, scope = "hard_bounce", "all"
                elif kind == "spam_complaint":
                    reason, scope = "spam_complaint", streams.scope(stream)
                else:
                    continue
                evidence = f"postmark bounce {bounce_id} ({type_}, stream {stream})"
                if book.suppress(email, scope, reason, "postmark", evidence, at):
                    counts[f"suppressed_{reason}"] += 1
            soft = sorted({email for _, email, kind, *_ in rows if kind == "soft"})
            counts["suppressed_soft_bounce_limit"] += _soft_bounce_limits(con, book, soft)
            book.write(con)
        newest = max((_parse_time(b["BouncedAt"]) for b in bounces), default=None)
        _advance(con, "postmark", "bounces", newest, len(new), now)
    return +counts


def _soft_bounce_limits(con: duckdb.DuckDBPyConnection, book: Book, emails: list[str]) -> int:
    """Suppress (marketing) the addresses whose soft bounces since their last lift reached the
    limit, evidenced by the bounce that reached it."""
    if not emails:
        return 0
    reached = con.execute(
        """
        SELECT c.email, c.soft_bounces, arg_max(b.bounce_id, b.bounced_at), max(b.bounced_at)
        FROM state.email_bounce_counts c
        JOIN state.email_bounces b ON b.email = c.email AND b.kind = 'soft'
        WHERE c.email IN (SELECT unnest($emails::VARCHAR[])) AND c.soft_bounces >= $limit
        GROUP BY ALL
        """,
        {"emails": emails, "limit": SOFT_BOUNCE_LIMIT},
    ).fetchall()
    return sum(
        book.suppress(email, "marketing", "soft_bounce_limit", "postmark",
                      f"postmark: {n} soft bounces, the last bounce {last_id}", last_at)
        for email, n, last_id, last_at in reached
    )  # fmt: skip


def pull_postmark_suppressions(
    con: duckdb.DuckDBPyConnection, client, stream: str, streams: PostmarkStreams, now: datetime
) -> Counter:
    """A stream's suppression dump: Postmark-managed unsubscribes, complaints, manual blocks."""
    feed = f"suppressions:{stream}"
    days = pull_days(cursor(con, "postmark", feed), now)
    path = f"/message-streams/{stream}/suppressions/dump"
    entries = _read_window(
        lambda first, last: (
            client.call("GET", path, fromdate=first, todate=last).get("Suppressions") or []
        ),
        days,
        POSTMARK_DUMP_LIMIT,
        f"suppressions of stream {stream!r}",
    )
    entries.sort(key=lambda s: _parse_time(s["CreatedAt"]))
    for entry in entries:
        entry["_email"] = ledger.normalise_address("email", entry["EmailAddress"])
        entry["_key"] = _digest(stream, entry["_email"], entry["CreatedAt"])
    fresh = _new_keys(con, "postmark", feed, [e["_key"] for e in entries])
    new = list({e["_key"]: e for e in entries if e["_key"] in fresh}.values())
    scope = streams.scope(stream)
    counts: Counter = Counter()
    with transaction(con):
        book = Book(con, "email", {e["_email"] for e in new})
        items = []
        for e in new:
            at = _parse_time(e["CreatedAt"])
            reason = DUMP_REASONS.get(e.get("SuppressionReason"))
            if reason is None:  # ManualSuppression: the recipient's own unsubscribe, or ours
                reason = "unsubscribed" if e.get("Origin") == "Recipient" else "manual"
            evidence = (f"postmark suppression on stream {stream} ({e.get('SuppressionReason')}, "
                        f"origin {e.get('Origin')})")  # fmt: skip
            this_scope: Scope = "all" if reason == "hard_bounce" else scope
            added = book.suppress(e["_email"], this_scope, reason, "postmark", evidence, at)
            items.append((e["_key"], "suppress" if added else "already", at))
            counts[f"suppressed_{reason}" if added else "already_suppressed"] += 1
        book.write(con)
        _record_items(con, "postmark", feed, items, now)
        newest = max((_parse_time(e["CreatedAt"]) for e in entries), default=None)
        _advance(con, "postmark", feed, newest, len(new), now)
    return +counts


# --- Twilio ------------------------------------------------------------------------------------


def reply_keyword(body: str | None) -> Literal["stop", "start"] | None:
    """Twilio acts on a reply that is just the word (any case, stray spaces or punctuation)."""
    word = re.sub(r"[\s.!]+", "", (body or "").upper())
    if word in OPT_OUT_WORDS:
        return "stop"
    if word in OPT_IN_WORDS:
        return "start"
    return None


def pull_twilio_replies(
    con: duckdb.DuckDBPyConnection, client, number: str | None, now: datetime
) -> Counter:
    """Inbound STOP/START words since the cursor, as suppress/lift rows for the sender's number.

    ``number``: our sending number (replies are messages to it); None (a messaging service with
    several numbers) reads every inbound message.
    """
    import requests
    from twilio.base.exceptions import TwilioException

    last = cursor(con, "twilio", "inbound")
    since = pull_days(last, now)[0].isoformat()
    try:
        filters = {"to": number} if number else {}
        messages = [
            m
            for m in client.messages.stream(date_sent_after=since, page_size=1000, **filters)
            if m.direction == "inbound"
        ]
    except (TwilioException, requests.RequestException) as exc:
        raise FeedbackUnavailable(
            f"Twilio's message list could not be read ({type(exc).__name__}); nothing from it "
            "was recorded, the next pull tries again."
        ) from None

    def when(m) -> datetime:
        return m.date_sent or m.date_created or now

    messages.sort(key=lambda m: (when(m), m.sid))
    fresh = _new_keys(con, "twilio", "inbound", [m.sid for m in messages])
    new = [m for m in messages if m.sid in fresh]
    counts: Counter = Counter()
    with transaction(con):
        book = Book(con, "sms", {ledger.normalise_address("sms", m.from_ or "") for m in new})
        items = []
        for m in new:
            at = when(m)
            keyword = reply_keyword(m.body)
            phone = ledger.normalise_address("sms", m.from_ or "")
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
        _record_items(con, "twilio", "inbound", items, now)
        newest = max((when(m) for m in messages), default=None)
        _advance(con, "twilio", "inbound", newest, len(new), now)
    return +counts


def lift(
    con: duckdb.DuckDBPyConnection,
    channel: ledger.Channel,
    address: str,
    *,
    reason: str,
    source: str,
    evidence: str,
    occurred_at: datetime,
) -> int:
    """Lift every scope the address is currently suppressed in (a fresh opt-in); how many."""
    address = ledger.normalise_address(channel, address)
    book = Book(con, channel, {address})
    lifted = book.lift(address, reason, source, evidence, occurred_at)
    book.write(con)
    return lifted


# --- unsubscribe clicks ------------------------------------------------------------------------


def inbox_path(database_path: Path) -> Path:
    """The clicks the unsubscribe endpoint took, beside the clinic's database."""
    return database_path.with_name(database_path.name + ".unsubscribes.jsonl")


@contextlib.contextmanager
def _inbox_lock(inbox: Path) -> Iterator[None]:
    inbox.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(inbox.with_name(inbox.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def spool_unsubscribe(inbox: Path, claim: UnsubscribeClaim, at: datetime) -> str:
    """Durably note a verified click (ids only, no address) before saying "you are unsubscribed"."""
    click_id = uuid.uuid4().hex
    line = json.dumps(
        {"click": click_id, "patient_id": claim.patient_id, "message_id": claim.message_id,
         "channel": claim.channel, "at": at.isoformat()}
    )  # fmt: skip
    with _inbox_lock(inbox):
        fd = os.open(inbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    return click_id


def drain_unsubscribes(con: duckdb.DuckDBPyConnection, inbox: Path, now: datetime) -> Counter:
    """Record every click in the inbox (one transaction), then empty it.

    A crash after the commit and before the file is emptied only means the next drain sees the
    same clicks again; their ids are already taken, so nothing is recorded twice.
    """
    counts: Counter = Counter()
    with _inbox_lock(inbox):
        if not inbox.exists():
            return counts
        clicks = []
        for line in inbox.read_text(encoding="utf-8").splitlines():
            try:
                clicks.append(json.loads(line))
            except ValueError:
                counts["clicks_unreadable"] += 1  # a line cut short by a crash mid-write
        if not clicks:
            return counts
        fresh = _new_keys(con, "unsubscribe_link", "clicks", [c["click"] for c in clicks])
        new = [c for c in clicks if c["click"] in fresh]
        with transaction(con):
            addresses = _message_addresses(con, new)
            books = {ch: Book(con, ch, {a for (_, c), (_, a) in addresses.items() if c == ch})
                     for ch in ("email", "sms")}  # fmt: skip
            items = []
            for click in new:
                at = _parse_time(click["at"])
                address = addresses.get((click["message_id"], click["channel"]))
                if address is None or address[0] != click["patient_id"]:
                    outcome = "unmatched"  # no such message for that patient: nothing to do
                else:
                    added = books[click["channel"]].suppress(
                        address[1], "marketing", "unsubscribed", "unsubscribe_link",
                        f"unsubscribe link, message {click['message_id']}", at,
                    )  # fmt: skip
                    outcome = "suppress" if added else "already"
                items.append((click["click"], outcome, at))
                counts[f"unsubscribe_{outcome}"] += 1
            for book in books.values():
                book.write(con)
            _record_items(con, "unsubscribe_link", "clicks", items, now)
            newest = max((_parse_time(c["at"]) for c in clicks), default=None)
            _advance(con, "unsubscribe_link", "clicks", newest, len(new), now)
        os.truncate(inbox, 0)
    return +counts


def _message_addresses(
    con: duckdb.DuckDBPyConnection, clicks: list[dict]
) -> dict[tuple[int, str], tuple[int, str]]:
    """(message id, channel) -> (patient id, the address it went to), from the ledger."""
    if not clicks:
        return {}
    rows = con.execute(
        "SELECT message_id, channel, patient_id, to_address FROM state.messages "
        "WHERE message_id IN (SELECT unnest(?::BIGINT[])) AND to_address IS NOT NULL",
        [sorted({int(c["message_id"]) for c in clicks})],
    ).fetchall()
    return {(m, ch): (p, ledger.normalise_address(ch, a)) for m, ch, p, a in rows}


# --- CSV import --------------------------------------------------------------------------------

# Header names exports use for the address (Mailchimp: "Email Address"), compared loosely.
EMAIL_HEADERS = ("emailaddress", "email", "e-mail", "e-mailaddress", "mail", "emailaddr")


class ImportRefused(UserFacingError):
    """The CSV cannot be imported as it is; nothing was recorded."""


@dataclass
class ImportResult:
    imported: int = 0
    already: int = 0  # already unsubscribed here
    duplicate: int = 0  # repeated in the file
    invalid: int = 0
    invalid_lines: list[int] = field(default_factory=list)
    column: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "already_unsubscribed": self.already,
                "duplicate": self.duplicate, "invalid": self.invalid}  # fmt: skip


def _email_column(header: list[str]) -> int | None:
    loose = [re.sub(r"[\s_]+", "", h.strip().lower()) for h in header]
    for name in EMAIL_HEADERS:
        if name in loose:
            return loose.index(name)
    return None


def import_unsubscribes(
    con: duckdb.DuckDBPyConnection, path: Path, now: datetime, *, skip_invalid: bool = False
) -> ImportResult:
    """Suppress (marketing, source csv_import) every address in the file's email column.

    All or nothing: any invalid address refuses the whole file (with its line numbers) unless
    ``skip_invalid``; the rows go in one transaction.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file.") from None
    except UnicodeDecodeError:
        raise ImportRefused(f"{path}: not UTF-8 text; export the list as CSV (UTF-8).") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    if not rows:
        raise ImportRefused(f"{path}: the file is empty.")
    column = _email_column(rows[0])
    if column is None:
        # a first line holding an address is data, not a header: never echo it
        shown = "" if any("@" in cell for cell in rows[0]) else f" ({', '.join(rows[0][:8])})"
        raise ImportRefused(
            f"{path}: no email column in the first line{shown}. Start the file with a header "
            "line naming the column 'Email Address' or 'email' (as Mailchimp exports do)."
        )
    result = ImportResult(column=rows[0][column].strip())
    seen: set[str] = set()
    valid: list[tuple[int, str]] = []
    for line, row in enumerate(rows[1:], start=2):
        raw = row[column].strip() if column < len(row) else ""
        if not raw and not any(cell.strip() for cell in row):
            continue  # a blank line
        try:
            email = validate_email(raw, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            result.invalid += 1
            result.invalid_lines.append(line)
            continue
        if email in seen:
            result.duplicate += 1
            continue
        seen.add(email)
        valid.append((line, email))
    if result.invalid and not skip_invalid:
        shown = ", ".join(str(n) for n in result.invalid_lines[:20])
        more = "..." if len(result.invalid_lines) > 20 else ""
        raise ImportRefused(
            f"{path}: {result.invalid} invalid address(es) in column '{result.column}' on "
            f"line(s) {shown}{more}. Nothing was imported. Fix or remove those lines, or import "
            "the valid ones with --skip-invalid."
        )
    with transaction(con):
        book = Book(con, "email", {email for _, email in valid})
        for line, email in valid:
            if book.suppress(email, "marketing", "unsubscribed", "csv_import",
                             f"{path.name} line {line}", now):  # fmt: skip
                result.imported += 1
            else:
                result.already += 1
        book.write(con)
    return result
