"""SMS delivery: what became of each SMS the provider accepted, in ``state.sms_deliveries``, and
the suppression a final status calls for, recorded through the feedback recorder's Book
(tasks/feedback.py) like bounces and STOP replies.

The ledger's ``sent`` means the provider accepted the message; the carrier may still fail to
deliver it (a landline, a number no longer in service). The provider says which of its error
codes mean the number can never receive an SMS (tasks/providers/twilio.py, ``ERROR_CODES``);
those suppress the number for every SMS, with the message and the code as evidence.

Two ways in, one recorder (``record``): the delivery poll (every tick; the default) and the
provider's status callback when a public URL is configured. Each call is one transaction:
status rows, suppressions, item keys and the feed's cursor together. A final status is recorded
once: a later poll or callback about a message already final changes nothing, so a pull killed
at any moment, or a callback racing a poll, records nothing twice, and the next pull asks again
for whatever was not committed.

The poll is bounded: only messages sent in the last ``POLL_DAYS`` days whose status is not final,
at most ``POLL_LIMIT`` a pull, the least recently checked first (never checked before anything),
then the oldest sent. A message that never reaches a final status (carriers that send no
receipt) is asked about in turn with the rest, and left after ``POLL_DAYS``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from tasks import feedback
from tasks.messages.ledger import normalise_address
from tasks.warehouse import transaction

# Carriers report within hours; Twilio drops a message still queued after its validity period
# (at most 36 hours, https://www.twilio.com/docs/messaging/api/message-resource). Older than
# this, a message that is not final will not become final.
POLL_DAYS = 3
# Messages asked about per pull (one GET each): keeps a tick cheap.
POLL_LIMIT = 200
# Statuses after which nothing changes ("missing": the provider no longer has the message).
FINAL = frozenset({"delivered", "undelivered", "failed", "canceled", "missing"})
FEED = "delivery"


@dataclass(frozen=True)
class Delivery:
    """A message's status as the provider reported it."""

    provider_message_id: str
    status: str
    error_code: str | None
    at: datetime  # when the provider says this status was reached
    # (scope, reason) when this status means the number can never receive: the provider decides
    suppress: tuple[feedback.Scope, str] | None = None
    meaning: str = ""  # the error code in words, for the evidence (never personal data)

    @property
    def final(self) -> bool:
        return self.status in FINAL


def awaiting(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    now: datetime,
    *,
    days: int | None = None,
    limit: int | None = None,
) -> list[str]:
    """The provider message ids to ask about this pull (see the module's docstring)."""
    days, limit = days or POLL_DAYS, limit or POLL_LIMIT
    rows = con.execute(
        """
        SELECT m.provider_message_id
        FROM state.messages m
        LEFT JOIN state.sms_deliveries d USING (message_id)
        WHERE m.provider = $provider AND m.channel = 'sms' AND m.status = 'sent'
          AND m.provider_message_id IS NOT NULL AND m.sent_at >= $since
          AND NOT coalesce(d.final, false)
        ORDER BY d.checked_at NULLS FIRST, m.sent_at, m.message_id
        LIMIT $limit
        """,
        {"provider": provider, "since": now - timedelta(days=days), "limit": limit},
    ).fetchall()
    return [sid for (sid,) in rows]


def record(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    deliveries: Sequence[Delivery],
    now: datetime,
    *,
    source: str,
) -> Counter:
    """Record these statuses (one transaction) and the suppressions final ones call for; counts.

    A status about a message the ledger does not hold as sent by this provider (a callback
    that came before dispatch recorded the send) is counted ``delivery_unmatched`` and left to
    the poll; one about a message already final, ``delivery_already_final``.
    """
    counts: Counter = Counter()
    if not deliveries:
        return counts
    with transaction(con):
        known = {
            sid: (message_id, to_address, final)
            for sid, message_id, to_address, final in con.execute(
                """
                SELECT m.provider_message_id, m.message_id, m.to_address, coalesce(d.final, false)
                FROM state.messages m LEFT JOIN state.sms_deliveries d USING (message_id)
                WHERE m.provider = $provider AND m.channel = 'sms'
                  AND m.provider_message_id IN (SELECT unnest($sids::VARCHAR[]))
                """,
                {"provider": provider, "sids": [d.provider_message_id for d in deliveries]},
            ).fetchall()
        }
        book = feedback.Book(
            con, "sms", {normalise_address("sms", a) for _, a, _ in known.values() if a}
        )
        rows, items = [], []
        for d in deliveries:
            message = known.get(d.provider_message_id)
            if message is None:
                counts["delivery_unmatched"] += 1
                continue
            message_id, to_address, final = message
            if final:
                counts["delivery_already_final"] += 1
                continue
            known[d.provider_message_id] = (message_id, to_address, d.final)
            rows.append((message_id, d))
            if not d.final:
                counts["delivery_pending"] += 1
                continue
            counts[f"sms_{d.status}"] += 1
            outcome = d.status
            if d.suppress and to_address:
                scope, reason = d.suppress
                evidence = (
                    f"{provider} message {d.provider_message_id} {d.status}, error "
                    f"{d.error_code} ({d.meaning})"
                )
                address = normalise_address("sms", to_address)
                added = book.suppress(address, scope, reason, provider, evidence, d.at)
                outcome = "suppress" if added else "already"
                counts["suppressed_undeliverable" if added else "undeliverable_already"] += 1
            items.append((d.provider_message_id, outcome, d.at))
        _write(con, provider, rows, now, source)
        book.write(con)
        feedback.record_items(con, provider, FEED, items, now)
        newest = max((d.at for _, d in rows if d.final), default=None)
        feedback.advance(con, provider, FEED, newest, len(items), now)
    return +counts


def _write(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    rows: list[tuple[int, Delivery]],
    now: datetime,
    source: str,
) -> None:
    if not rows:
        return
    latest = {message_id: d for message_id, d in rows}  # the last word on each message
    con.execute(
        """
        INSERT INTO state.sms_deliveries AS s (message_id, provider, provider_message_id, status,
            error_code, final, status_at, checked_at, checks, source)
        SELECT unnest($ids::BIGINT[]), $provider, unnest($sids::VARCHAR[]),
               unnest($statuses::VARCHAR[]), unnest($codes::VARCHAR[]), unnest($finals::BOOLEAN[]),
               unnest($times::TIMESTAMPTZ[]), $now, 1, $source
        ON CONFLICT (message_id) DO UPDATE SET
            status = excluded.status, error_code = excluded.error_code, final = excluded.final,
            status_at = excluded.status_at, checked_at = excluded.checked_at,
            checks = s.checks + 1, source = excluded.source
        """,
        {"ids": list(latest), "provider": provider,
         "sids": [d.provider_message_id for d in latest.values()],
         "statuses": [d.status for d in latest.values()],
         "codes": [d.error_code for d in latest.values()],
         "finals": [d.final for d in latest.values()],
         "times": [d.at for d in latest.values()], "now": now, "source": source},
    )  # fmt: skip
