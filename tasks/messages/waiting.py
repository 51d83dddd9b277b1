"""Waiting: planned messages dispatch does not take yet, and why.

A message waits while a reason that can change stops it: the patient has no address on the
channel, is archived, prefers another reminder channel, is off the marketing list or
unsubscribed (each planner words its own reasons: tasks/triggers/audience.py for triggers,
tasks/marketing/recheck.py for journeys and campaigns); or, for marketing, the frequency cap or
quiet hours hold it (tasks/messages/gate.py defers it to ``next_attempt_at``). Every planning
tick and the send-time check judge a waiting row again: it goes when the reason clears before
``expires_at`` (its moment + grace), and after that it is skipped with the reason
(:func:`hold`, the one home of that rule; a trigger's such skip comes back only if its
appointment moves: tasks/triggers/reopen.py). A reason that cannot change (the appointment was
cancelled: the trigger's own event no longer holds) cancels at once, never waits.

It is not a status of its own: a waiting row is ``planned`` with a ``waiting_reason`` or a
``next_attempt_at`` still ahead, so every guard on planned rows (one claim, never twice) holds
for it unchanged, and :data:`STATE` is how ``relay ledger`` and the previews name it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb

from tasks.messages import ledger
from tasks.messages.ledger import LedgerRow

# The skip of a message not sent by its moment + grace (a tick or dispatch came too late);
# tasks/triggers/reopen.py reads it as a skip about time.
PAST_GRACE = "past its grace window"

# How often the send-time check judges a waiting row again (its planner may release it sooner:
# a trigger's rows are judged every planning tick).
WAITING_RECHECK = timedelta(minutes=10)


def hold(
    con: duckdb.DuckDBPyConnection,
    ids: Sequence[int],
    reasons: Sequence[str],
    now: datetime,
    *,
    recheck: timedelta = WAITING_RECHECK,
) -> tuple[list[int], list[int]]:
    """A reason that can change stops these planned messages now. Each one still inside its grace
    window waits with it (``waiting_reason``; dispatch looks again at ``next_attempt_at``, no
    later than ``expires_at``); one whose window has ended (or that has none) is skipped with it.
    Returns (waiting ids, skipped ids). The one home of "waiting becomes final at expires_at"."""
    if not ids:
        return [], []
    if len(reasons) != len(ids):
        raise ValueError(f"{len(reasons)} reasons for {len(ids)} messages")
    waiting = [
        r[0]
        for r in con.execute(
            """
            UPDATE state.messages AS m
            SET waiting_reason = v.reason, status_reason = v.reason,
                next_attempt_at = least(m.expires_at, $until), updated_at = $now
            FROM (SELECT unnest($ids::BIGINT[]) AS message_id,
                         unnest($reasons::VARCHAR[]) AS reason) AS v
            WHERE m.message_id = v.message_id AND m.status = 'planned' AND m.expires_at > $now
            RETURNING m.message_id
            """,
            {"ids": list(ids), "reasons": list(reasons), "now": now, "until": now + recheck},
        ).fetchall()
    ]
    kept = set(waiting)
    late = [(i, r) for i, r in zip(ids, reasons, strict=True) if i not in kept]
    skipped = ledger.transition(
        con, [i for i, _ in late], "planned", "skipped", now,
        values={"status_reason": [r for _, r in late], "waiting_reason": [r for _, r in late]},
    )  # fmt: skip
    return waiting, skipped


def release(con: duckdb.DuckDBPyConnection, ids: Sequence[int], now: datetime) -> list[int]:
    """The reason these messages waited for has cleared: sendable again from now (only rows
    :func:`hold` made wait; a deferral by the gate or a provider's backoff is left alone)."""
    if not ids:
        return []
    return [
        r[0]
        for r in con.execute(
            """
            UPDATE state.messages
            SET waiting_reason = NULL, status_reason = NULL, next_attempt_at = NULL,
                updated_at = $now
            WHERE message_id IN (SELECT unnest($ids::BIGINT[]))
              AND status = 'planned' AND waiting_reason IS NOT NULL
            RETURNING message_id
            """,
            {"ids": list(ids), "now": now},
        ).fetchall()
    ]


# A row's state as an operator reads it at ``$now``: its status, except that a planned row
# dispatch does not take yet is 'waiting' (with WHY: its changeable reason, or the deferral's).
_HELD = "status = 'planned' AND (waiting_reason IS NOT NULL OR next_attempt_at > $now)"
STATE = f"CASE WHEN {_HELD} THEN 'waiting' ELSE status END"
WHY = f"CASE WHEN {_HELD} THEN coalesce(waiting_reason, status_reason) ELSE status_reason END"


def state_counts(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, int]:
    """How many messages are in each state now (``waiting`` apart from ``planned``)."""
    return dict(
        con.execute(
            f"SELECT {STATE} AS state, count(*) FROM state.messages GROUP BY state", {"now": now}
        ).fetchall()
    )


def rows_waiting(con: duckdb.DuckDBPyConnection, now: datetime) -> list[tuple[LedgerRow, str]]:
    """Every waiting message with why it waits, by when it is due (no personal data in why)."""
    columns = ", ".join(f.name for f in dataclasses.fields(LedgerRow))
    cur = con.execute(
        f"SELECT {columns}, {WHY} AS why FROM state.messages WHERE {_HELD} "
        "ORDER BY due_at, message_id",
        {"now": now},
    )
    return [(LedgerRow(*r[:-1]), r[-1] or "no reason recorded") for r in cur.fetchall()]
