"""Feedback: what providers and people tell us after a message went, turned into suppressions.

Four feeds, each pulled every tick. A pull fetches everything new first, then records it in ONE
transaction together with its cursor (state.feedback_cursors), keyed on the provider's own ids,
so a pull killed at any moment loses nothing and counts nothing twice: the next pull re-reads
from the old cursor and the keys drop what is already in.

- **Postmark bounces** (``GET /bounces``, read one day at a time, since Postmark filters by day in
  its own time zone and pages at most 10,000 deep). Each bounce is kept once in
  ``state.email_bounces``, the one record the email marketing list counts. A hard bounce
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

from tasks import ledger
from tasks.errors import UserFacingError
from tasks.unsubscribe import UnsubscribeClaim
from tasks.warehouse import transaction

# The list model's rule, read through state.email_bounce_counts: this many soft bounces since the
# latest lift take an address off the email marketing list.
SOFT_BOUNCE_LIMIT = 5
# How far back a first pull reads: Postmark keeps bounces 45 days.
FIRST_PULL_DAYS = 45
# Re-read this much before the cursor: providers filter by whole days, Postmark in US Eastern time.
OVERLAP = timedelta(days=1)
# Postmark pages at most this deep into one query.
POSTMARK_MAX_ITEMS = 10_000

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


def _take(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    feed: str,
    item_key: str,
    occurred_at: datetime | None,
    now: datetime,
) -> bool:
    """Claim an item by its provider key: False when an earlier pull already took it."""
    return bool(
        con.execute(
            """
            INSERT INTO state.feedback_items (provider, feed, item_key, outcome, occurred_at,
                                              recorded_at)
            VALUES (?, ?, ?, 'taken', ?, ?)
            ON CONFLICT DO NOTHING RETURNING item_key
            """,
            [provider, feed, item_key, occurred_at, now],
        ).fetchall()
    )


def _outcome(
    con: duckdb.DuckDBPyConnection, provider: str, feed: str, item_key: str, outcome: str
) -> None:
    con.execute(
        "UPDATE state.feedback_items SET outcome = ? WHERE provider = ? AND feed = ? "
        "AND item_key = ?",
        [outcome, provider, feed, item_key],
    )


def _digest(*parts: str) -> str:
    """An item key built from personal data (an address) is stored as a digest, not in clear."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def pull_days(last: datetime | None, now: datetime) -> list[date]:
    """The UTC days a pull asks for: from a day before the cursor (or 45 days back) to today."""
    start = (last - OVERLAP).date() if last else (now - timedelta(days=FIRST_PULL_DAYS)).date()
    return [start + timedelta(days=i) for i in range((now.date() - start).days + 1)]


def _suppressed(
    con: duckdb.DuckDBPyConnection, channel: ledger.Channel, address: str, scope: Scope
) -> bool:
    """Is the address already suppressed for this scope (or more)?"""
    purpose = "transactional" if scope == "all" else "marketing"
    return bool(ledger.suppressed_addresses(con, channel, [address], purpose))


def _suppress_once(
    con: duckdb.DuckDBPyConnection,
    *,
    channel: ledger.Channel,
    address: str,
    scope: Scope,
    reason: str,
    source: str,
    evidence: str,
    occurred_at: datetime,
) -> bool:
    """Add a suppression unless one already covers it; True when a row was added."""
    if _suppressed(con, channel, address, scope):
        return False
    ledger.add_suppression(
        con, channel=channel, address=address, scope=scope, reason=reason, source=source,
        evidence=evidence, occurred_at=occurred_at,
    )  # fmt: skip
    return True


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


def _by_day(fetch, days: list[date], what: str) -> list[dict]:
    """Call ``fetch(day)`` for each day; a provider error means nothing of this feed is recorded."""
    import requests
    from postmarker.exceptions import ClientError

    items: list[dict] = []
    for day in days:
        try:
            found = fetch(day.isoformat())
        except (ClientError, requests.RequestException, KeyError, ValueError) as exc:
            raise FeedbackUnavailable(
                f"Postmark {what} could not be read ({type(exc).__name__}"
                f"{': ' + str(exc.error_code) if isinstance(exc, ClientError) else ''}); "
                "nothing from it was recorded, the next pull tries again."
            ) from None
        if len(found) >= POSTMARK_MAX_ITEMS:
            raise FeedbackUnavailable(
                f"Postmark {what}: {day} has {POSTMARK_MAX_ITEMS}+ items, more than one query "
                "can page through; read that day from Postmark's UI and import it."
            )
        items.extend(found)
    return items


def pull_postmark_bounces(
    con: duckdb.DuckDBPyConnection, client, streams: PostmarkStreams, now: datetime
) -> Counter:
    """New bounces into state.email_bounces, with the suppressions they call for."""
    days = pull_days(cursor(con, "postmark", "bounces"), now)
    bounces = _by_day(
        lambda day: [b.as_dict() for b in client.bounces.all(count=None, fromdate=day, todate=day)],
        days,
        "bounces",
    )
    bounces.sort(key=lambda b: (_parse_time(b["BouncedAt"]), int(b["ID"])))
    counts: Counter = Counter()
    with transaction(con):
        new_soft: set[str] = set()
        newest = None
        for b in bounces:
            at = _parse_time(b["BouncedAt"])
            newest = max(newest or at, at)
            email = ledger.normalise_address("email", b["Email"])
            bounce_id, kind = str(b["ID"]), BOUNCE_KINDS.get(b["Type"], "other")
            added = con.execute(
                "INSERT INTO state.email_bounces VALUES (?, ?, ?, ?, 'postmark') "
                "ON CONFLICT DO NOTHING RETURNING bounce_id",
                [bounce_id, email, kind, at],
            ).fetchall()
            if not added:
                continue
            con.execute(
                "INSERT INTO state.email_bounce_messages VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [bounce_id, b.get("MessageID"), b.get("MessageStream"), b["Type"]],
            )
            counts[f"bounces_{kind}"] += 1
            stream = b.get("MessageStream")
            evidence = f"postmark bounce {bounce_id} ({b['Type']}, stream {stream})"
            if kind == "hard":
                reason, scope = "hard_bounce", "all"
            elif kind == "spam_complaint":
                reason, scope = "spam_complaint", streams.scope(stream)
            else:
                if kind == "soft":
                    new_soft.add(email)
                continue
            if _suppress_once(
                con, channel="email", address=email, scope=scope, reason=reason,
                source="postmark", evidence=evidence, occurred_at=at,
            ):  # fmt: skip
                counts[f"suppressed_{reason}"] += 1
        counts["suppressed_soft_bounce_limit"] += _soft_bounce_limits(con, sorted(new_soft))
        _advance(con, "postmark", "bounces", newest, sum(
            n for k, n in counts.items() if k.startswith("bounces_")
        ), now)  # fmt: skip
    return +counts


def _soft_bounce_limits(con: duckdb.DuckDBPyConnection, emails: list[str]) -> int:
    """Suppress (marketing) the addresses whose soft bounces since their last lift reached the
    limit, evidenced by the bounce that reached it."""
    if not emails:
        return 0
    reached = con.execute(
        """
        SELECT c.email, c.soft_bounces,
               (SELECT arg_max(b.bounce_id, b.bounced_at) FROM state.email_bounces b
                WHERE b.email = c.email AND b.kind = 'soft') AS last_id,
               (SELECT max(b.bounced_at) FROM state.email_bounces b
                WHERE b.email = c.email AND b.kind = 'soft') AS last_at
        FROM state.email_bounce_counts c
        WHERE c.email IN (SELECT unnest($emails::VARCHAR[])) AND c.soft_bounces >= $limit
        """,
        {"emails": emails, "limit": SOFT_BOUNCE_LIMIT},
    ).fetchall()
    added = 0
    for email, n, last_id, last_at in reached:
        added += _suppress_once(
            con, channel="email", address=email, scope="marketing", reason="soft_bounce_limit",
            source="postmark", evidence=f"postmark: {n} soft bounces, the last bounce {last_id}",
            occurred_at=last_at,
        )  # fmt: skip
    return added


def pull_postmark_suppressions(
    con: duckdb.DuckDBPyConnection, client, stream: str, streams: PostmarkStreams, now: datetime
) -> Counter:
    """A stream's suppression dump: Postmark-managed unsubscribes, complaints, manual blocks."""
    feed = f"suppressions:{stream}"
    days = pull_days(cursor(con, "postmark", feed), now)
    path = f"/message-streams/{stream}/suppressions/dump"
    entries = _by_day(
        lambda day: client.call("GET", path, fromdate=day, todate=day).get("Suppressions") or [],
        days,
        f"suppressions of stream {stream!r}",
    )
    entries.sort(key=lambda s: _parse_time(s["CreatedAt"]))
    scope = streams.scope(stream)
    counts: Counter = Counter()
    with transaction(con):
        newest, taken = None, 0
        for s in entries:
            at = _parse_time(s["CreatedAt"])
            newest = max(newest or at, at)
            email = ledger.normalise_address("email", s["EmailAddress"])
            key = _digest(stream, email, s["CreatedAt"])
            if not _take(con, "postmark", feed, key, at, now):
                continue
            taken += 1
            reason = DUMP_REASONS.get(s.get("SuppressionReason"))
            if reason is None:  # ManualSuppression: the recipient's own unsubscribe, or ours
                reason = "unsubscribed" if s.get("Origin") == "Recipient" else "manual"
            this_scope: Scope = "all" if reason == "hard_bounce" else scope
            added = _suppress_once(
                con, channel="email", address=email, scope=this_scope, reason=reason,
                source="postmark",
                evidence=f"postmark suppression on stream {stream} ({s.get('SuppressionReason')}, "
                f"origin {s.get('Origin')})",
                occurred_at=at,
            )  # fmt: skip
            _outcome(con, "postmark", feed, key, "suppress" if added else "already")
            counts[f"suppressed_{reason}" if added else "already_suppressed"] += 1
        _advance(con, "postmark", feed, newest, taken, now)
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
    messages.sort(key=lambda m: (m.date_sent or m.date_created, m.sid))
    counts: Counter = Counter()
    with transaction(con):
        newest, taken = None, 0
        for m in messages:
            at = m.date_sent or m.date_created
            newest = max(newest or at, at)
            if not _take(con, "twilio", "inbound", m.sid, at, now):
                continue
            taken += 1
            keyword = reply_keyword(m.body)
            phone = ledger.normalise_address("sms", m.from_ or "")
            if keyword is None or not phone:
                _outcome(con, "twilio", "inbound", m.sid, "ignored")
                counts["replies_other"] += 1
                continue
            if keyword == "stop":
                added = _suppress_once(
                    con, channel="sms", address=phone, scope="all", reason="stop",
                    source="twilio", evidence=f"twilio inbound {m.sid}", occurred_at=at,
                )  # fmt: skip
                _outcome(con, "twilio", "inbound", m.sid, "suppress" if added else "already")
                counts["sms_stop" if added else "sms_stop_already"] += 1
            else:
                lifted = lift(con, "sms", phone, reason="opt_in", source="twilio",
                              evidence=f"twilio inbound {m.sid}", occurred_at=at)  # fmt: skip
                _outcome(con, "twilio", "inbound", m.sid, "lift" if lifted else "ignored")
                counts["sms_start" if lifted else "sms_start_not_suppressed"] += 1
        _advance(con, "twilio", "inbound", newest, taken, now)
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
    """Add a 'lift' row for every scope the address is currently suppressed in; how many."""
    address = ledger.normalise_address(channel, address)
    scopes = [
        scope
        for (scope,) in con.execute(
            """
            SELECT scope FROM state.suppressions WHERE channel = ? AND address = ?
            QUALIFY row_number() OVER (PARTITION BY scope
                                       ORDER BY occurred_at DESC, suppression_id DESC) = 1
                AND action = 'suppress'
            """,
            [channel, address],
        ).fetchall()
    ]
    for scope in scopes:
        con.execute(
            """
            INSERT INTO state.suppressions (channel, address, action, reason, scope, source,
                                            evidence, occurred_at, recorded_at)
            VALUES (?, ?, 'lift', ?, ?, ?, ?, ?, ?)
            """,
            [channel, address, reason, scope, source, evidence, occurred_at, occurred_at],
        )
    return len(scopes)


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
        with transaction(con):
            newest, taken = None, 0
            for click in clicks:
                at = _parse_time(click["at"])
                newest = max(newest or at, at)
                if not _take(con, "unsubscribe_link", "clicks", click["click"], at, now):
                    continue
                taken += 1
                outcome = record_unsubscribe(
                    con, click["patient_id"], click["message_id"], click["channel"], at,
                    evidence=f"unsubscribe link, message {click['message_id']}",
                )  # fmt: skip
                _outcome(con, "unsubscribe_link", "clicks", click["click"], outcome)
                counts[f"unsubscribe_{outcome}"] += 1
            _advance(con, "unsubscribe_link", "clicks", newest, taken, now)
        os.truncate(inbox, 0)
    return +counts


def record_unsubscribe(
    con: duckdb.DuckDBPyConnection,
    patient_id: int,
    message_id: int,
    channel: str,
    at: datetime,
    *,
    evidence: str,
) -> str:
    """Suppress (marketing) the address the message went to: 'suppress', 'already' or
    'unmatched' (no such message for that patient: nothing to suppress)."""
    row = con.execute(
        "SELECT to_address FROM state.messages WHERE message_id = ? AND patient_id = ? "
        "AND channel = ? AND to_address IS NOT NULL",
        [message_id, patient_id, channel],
    ).fetchone()
    if row is None:
        return "unmatched"
    added = _suppress_once(
        con, channel=channel, address=row[0], scope="marketing", reason="unsubscribed",
        source="unsubscribe_link", evidence=evidence, occurred_at=at,
    )  # fmt: skip
    return "suppress" if added else "already"


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
        raise ImportRefused(
            f"{path}: no email column in the header ({', '.join(rows[0][:8])}). Name it "
            "'Email Address' or 'email' (as Mailchimp and most exports do)."
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
        for line, email in valid:
            added = _suppress_once(
                con, channel="email", address=email, scope="marketing", reason="unsubscribed",
                source="csv_import", evidence=f"{path.name} line {line}", occurred_at=now,
            )  # fmt: skip
            if added:
                result.imported += 1
            else:
                result.already += 1
    return result
