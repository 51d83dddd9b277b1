"""Feedback: what providers and people tell us after a message went, recorded as suppressions
with their evidence. The one recorder: every feed writes through it.

Each provider owns its feeds (``Provider.feedback_feeds``: Postmark's bounces and suppression
dumps, Twilio's STOP/START replies; the outbox has none) and reads them; what it read is recorded
here in ONE transaction together with the feed's cursor (state.feedback_cursors), keyed on the
provider's own ids, so a pull killed at any moment loses nothing and counts nothing twice: the
next pull re-reads from the old cursor and the keys drop what is already in.

- **Bounces** are kept once each in ``state.email_bounces``, the one record the email marketing
  list counts. A hard bounce suppresses the address for everything; a spam complaint suppresses
  it (everything when it came from transactional mail, marketing otherwise); the clinic's
  ``marketing_list.soft_bounce_limit``-th soft bounce since the address was last lifted
  (``state.email_bounce_counts``, the list's own count) suppresses it for marketing, so the
  send-time check stops marketing at once, before the next model build. Other types are kept
  and counted, nothing more.
- **Unsubscribe clicks**: the unsubscribe endpoint appends each verified click to an inbox file
  beside the clinic's database (it must answer even while a tick holds the database), then
  records it at once if it can; whatever it could not is recorded by the next pull. With a
  Prefect server the clicks come as events instead (tasks/feedback_events.py); both go through
  ``record_clicks``, keyed on the click id.
- **Lifts**: an opt-in (Twilio's START; an operator's, tasks/feedback_optin.py) lifts every
  scope an address is suppressed in. An event from before a lift of its scope, read after it
  (pulls re-read from a day before their cursor), suppresses nothing again.
(CSV imports of unsubscribe lists: tasks/feedback_import.py.)

Nothing here logs or returns an address: results are counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb

from tasks.errors import UserFacingError
from tasks.messages import ledger
from tasks.unsubscribe.tokens import UnsubscribeClaim
from tasks.warehouse import transaction

# How far back a first pull reads: Postmark keeps bounces 45 days.
FIRST_PULL_DAYS = 45
# Re-read this much before the cursor: providers filter by whole days, Postmark in US Eastern time.
OVERLAP = timedelta(days=1)
Scope = Literal["all", "marketing"]


class FeedbackUnavailable(UserFacingError):
    """A provider could not be read; nothing from this feed was recorded this time."""


@dataclass(frozen=True)
class Feed:
    """One thing a provider reports back, pulled every tick: ``pull(con, now)`` records what is
    new (one transaction, with its cursor) and returns counts, never an address."""

    name: str  # e.g. postmark-bounces: names the pull in Prefect
    pull: Callable[[duckdb.DuckDBPyConnection, datetime], Counter]


# --- cursors and item keys ----------------------------------------------------------------------


def cursor(con: duckdb.DuckDBPyConnection, provider: str, feed: str) -> datetime | None:
    row = con.execute(
        "SELECT cursor_at FROM state.feedback_cursors WHERE provider = ? AND feed = ?",
        [provider, feed],
    ).fetchone()
    return row[0] if row else None


def advance(
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


def new_keys(con: duckdb.DuckDBPyConnection, provider: str, feed: str, keys: list[str]) -> set[str]:
    """Which of these provider item keys no earlier pull took."""
    taken = con.execute(
        "SELECT item_key FROM state.feedback_items WHERE provider = ? AND feed = ? "
        "AND item_key IN (SELECT unnest(?::VARCHAR[]))",
        [provider, feed, keys],
    ).fetchall()
    return set(keys) - {k for (k,) in taken}


def record_items(
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


def digest(*parts: str) -> str:
    """An item key built from personal data (an address) is stored as a digest, not in clear."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def pull_days(last: datetime | None, now: datetime) -> list[date]:
    """The UTC days a pull asks for: from a day before the cursor (or 45 days back) to today."""
    start = (last - OVERLAP).date() if last else (now - timedelta(days=FIRST_PULL_DAYS)).date()
    return [start + timedelta(days=i) for i in range((now.date() - start).days + 1)]


class Book:
    """The suppression state of the addresses one pull touches: read once, kept current in
    memory while the pull decides item by item, written in one statement.

    Whether an address is suppressed per scope is what state.current_suppressions says; the
    time of its newest row orders what this pull adds after it. 'all' covers 'marketing' too.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, channel: ledger.Channel, addresses: set[str]
    ) -> None:
        self.channel = channel
        self.rows: list[tuple] = []
        self.latest: dict[tuple[str, str], tuple[str, datetime]] = {}
        for address, scope, action, at in con.execute(
            """
            SELECT s.address, s.scope,
                   if(bool_or(c.address IS NOT NULL), 'suppress', 'lift'), max(s.occurred_at)
            FROM state.suppressions s
            LEFT JOIN state.current_suppressions c USING (channel, address, scope)
            WHERE s.channel = $channel AND s.address IN (SELECT unnest($addresses::VARCHAR[]))
            GROUP BY ALL
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
        """Suppress unless something already covers it, or a lift of this scope came after the
        event (an opt-in after it: a pull re-reading older events changes nothing); True when
        a row was added."""
        if self.suppressed(address, scope):
            return False
        action, lifted_at = self.latest.get((address, scope), ("suppress", None))
        if action == "lift" and lifted_at is not None and at <= lifted_at:
            return False
        self._add(address, "suppress", scope, reason, source, evidence, at)
        return True

    def lift(
        self,
        address: str,
        reason: str,
        source: str,
        evidence: str,
        at: datetime,
        *,
        also: tuple[Scope, ...] = (),
    ) -> int:
        """Lift every scope the address is suppressed in, and the scopes ``also`` names; how
        many were suppressed."""
        scopes = {
            s
            for (a, s), (action, _) in self.latest.items()
            if a == address and action == "suppress"
        }
        for scope in sorted(scopes | set(also)):
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


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- bounces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounce:
    """One bounce a provider reported, in our words (its own type name kept for the reports)."""

    bounce_id: str
    email: str  # normalised (ledger.normalise_address)
    kind: Literal["hard", "soft", "spam_complaint", "other"]
    at: datetime
    provider_message_id: str | None
    stream: str | None
    type: str  # the provider's name for it, e.g. HardBounce, Transient
    complaint_scope: Scope  # what a spam complaint about this message stops
    # the recipient asked to be taken off (e.g. Postmark's "Unsubscribe" type, stored as
    # "other"): marketing stops, as after an unsubscribe click
    unsubscribe: bool = False


def record_bounces(
    con: duckdb.DuckDBPyConnection,
    source: str,
    bounces: list[Bounce],
    now: datetime,
    *,
    soft_bounce_limit: int,
    feed: str = "bounces",
) -> Counter:
    """New bounces (oldest first) into state.email_bounces, with the suppressions they call for,
    in one transaction with the feed's cursor (e.g. one per Postmark stream; moved to the newest
    bounce read)."""
    known = {
        k
        for (k,) in con.execute(
            "SELECT bounce_id FROM state.email_bounces WHERE bounce_id IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [[b.bounce_id for b in bounces]],
        ).fetchall()
    }
    new = [b for b in bounces if b.bounce_id not in known]
    counts: Counter = Counter(f"bounces_{b.kind}" for b in new)
    with transaction(con):
        if new:
            con.execute(
                "INSERT INTO state.email_bounces SELECT unnest($ids::VARCHAR[]), "
                "unnest($emails::VARCHAR[]), unnest($kinds::VARCHAR[]), "
                "unnest($times::TIMESTAMPTZ[]), $source",
                {"ids": [b.bounce_id for b in new], "emails": [b.email for b in new],
                 "kinds": [b.kind for b in new], "times": [b.at for b in new], "source": source},
            )  # fmt: skip
            con.execute(
                "INSERT INTO state.email_bounce_messages SELECT unnest($ids::VARCHAR[]), "
                "unnest($messages::VARCHAR[]), unnest($streams::VARCHAR[]), "
                "unnest($types::VARCHAR[])",
                {"ids": [b.bounce_id for b in new],
                 "messages": [b.provider_message_id for b in new],
                 "streams": [b.stream for b in new], "types": [b.type for b in new]},
            )  # fmt: skip
            book = Book(con, "email", {b.email for b in new})
            scope: Scope
            for b in new:
                if b.kind == "hard":
                    reason, scope = "hard_bounce", "all"
                elif b.kind == "spam_complaint":
                    reason, scope = "spam_complaint", b.complaint_scope
                elif b.unsubscribe:
                    reason, scope = "unsubscribed", "marketing"
                else:
                    continue
                evidence = f"{source} bounce {b.bounce_id} ({b.type}, stream {b.stream})"
                if book.suppress(b.email, scope, reason, source, evidence, b.at):
                    counts[f"suppressed_{reason}"] += 1
            soft = sorted({b.email for b in new if b.kind == "soft"})
            counts["suppressed_soft_bounce_limit"] += _soft_bounce_limits(
                con, book, soft, source, soft_bounce_limit
            )
            book.write(con)
        newest = max((b.at for b in bounces), default=None)
        advance(con, source, feed, newest, len(new), now)
    return +counts


def _soft_bounce_limits(
    con: duckdb.DuckDBPyConnection, book: Book, emails: list[str], source: str, limit: int
) -> int:
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
        {"emails": emails, "limit": limit},
    ).fetchall()
    return sum(
        book.suppress(email, "marketing", "soft_bounce_limit", source,
                      f"{source}: {n} soft bounces, the last bounce {last_id}", last_at)
        for email, n, last_id, last_at in reached
    )  # fmt: skip


# --- operator ------------------------------------------------------------------------------------


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
        counts.update(record_clicks(con, clicks, now))
        os.truncate(inbox, 0)
    return +counts


def record_clicks(
    con: duckdb.DuckDBPyConnection,
    clicks: list[dict],
    now: datetime,
    *,
    cursor_feed: str = "clicks",
    cursor_at: datetime | None = None,
) -> Counter:
    """Record verified clicks ({click, patient_id, message_id, channel, at}: ids only) as
    marketing suppressions of the address each message went to, in one transaction with the
    cursor of ``cursor_feed`` (moved to ``cursor_at``, by default the newest click). A click id
    already taken (by the inbox or an event) records nothing again."""
    counts: Counter = Counter()
    fresh = new_keys(con, "unsubscribe_link", "clicks", [c["click"] for c in clicks])
    new = [c for c in clicks if c["click"] in fresh]
    with transaction(con):
        addresses = _message_addresses(con, new)
        books = {ch: Book(con, ch, {a for (_, c), (_, a) in addresses.items() if c == ch})
                 for ch in ("email", "sms")}  # fmt: skip
        items = []
        for click in new:
            at = parse_time(click["at"])
            address = addresses.get((int(click["message_id"]), click["channel"]))
            if address is None or address[0] != int(click["patient_id"]):
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
        record_items(con, "unsubscribe_link", "clicks", items, now)
        newest = cursor_at or max((parse_time(c["at"]) for c in clicks), default=None)
        advance(con, "unsubscribe_link", cursor_feed, newest, len(new), now)
    return counts


def click_outcome(con: duckdb.DuckDBPyConnection, click_id: str) -> str | None:
    """What a drained click did: 'suppress', 'already' (suppressed before), 'unmatched' (no
    such message for that patient); None while it waits in the inbox."""
    row = con.execute(
        "SELECT outcome FROM state.feedback_items WHERE provider = 'unsubscribe_link' "
        "AND feed = 'clicks' AND item_key = ?",
        [click_id],
    ).fetchone()
    return row[0] if row else None


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
