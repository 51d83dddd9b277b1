"""Messages stranded ``sending`` through a provider the clinic no longer uses (Postmark to the
outbox, say, after a run died mid-request): only that provider's account can tell whether they
went, and no run asks it again. After the settle time they are ``unknown``, with why: listed by
``relay ledger unknown``, settled by a person with ``relay ledger resolve`` (which takes
unknowns only: left ``sending`` they were held there for good). Never sent again on their own.
The owner's weekly report applies the same rule to its own row (tasks/owner_report.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb

from tasks.messages import ledger
from tasks.messages.ledger import LedgerRow
from tasks.warehouse import transaction


def is_stranded(
    status: str, provider: str | None, sending_at: datetime | None, current: str,
    now: datetime, settle: timedelta,
) -> bool:  # fmt: skip
    """Left ``sending`` through another provider than ``current``, and longer ago than the
    settle time (a younger request may still be on its way)."""
    settled = sending_at is None or sending_at <= now - settle
    return status == "sending" and provider != current and settled


def reason(old: str, current: str, channel: str | None = None) -> str:
    """Why such a message (or report) is unknown; no address in it."""
    uses = f"uses for {channel}" if channel else "uses"
    return f"left sending through {old}, which this clinic no longer {uses} (now {current})"


def mark_unknown(
    con: duckdb.DuckDBPyConnection,
    channel: str,
    current: str,
    rows: Sequence[LedgerRow],
    now: datetime,
    settle: timedelta,
) -> dict[str, int]:
    """Move ``rows`` left ``sending`` through another provider than ``current`` more than
    ``settle`` ago to ``unknown``; how many moved, by the provider they were sent through."""
    stranded: dict[str, list[int]] = {}
    for r in rows:
        if is_stranded(r.status, r.provider, r.sending_at, current, now, settle):
            stranded.setdefault(r.provider or "an earlier provider", []).append(r.message_id)
    moved: dict[str, int] = {}
    for old, ids in sorted(stranded.items()):
        why = f"{reason(old, current, channel)}: check {old}'s activity, then relay ledger resolve"
        with transaction(con):
            done = ledger.transition(
                con, ids, "sending", "unknown", now,
                values={"status_reason": [why] * len(ids)}, strict=False,
            )  # fmt: skip
        if done:
            moved[old] = len(done)
    return moved


def problem(channel: str, count: int, old: str, current: str) -> str:
    """The run's words for them (counts only)."""
    return (
        f"{channel}: {count} message(s) were left sending through {old}, which this clinic no "
        f"longer uses (now {current}): they are unknown now; check them in {old}'s account, "
        "then `relay ledger resolve` (`relay ledger unknown` lists them)"
    )
