"""Reopening: a trigger's message skipped for a reason about *time* is planned again when its
appointment moves so that the message's moment is ahead again. The one home of that rule.

A skip is final (tasks/messages/ledger.py) but for this. Some skips say *when* a message was
judged, not *whether* it should go (:func:`about_time`):

- ``last_minute: skip``: the appointment moved so close that the moment had passed
  (:func:`moved_too_late`, tasks/triggers/plan.py ``late_move``);
- past its grace window, at a tick or at send time (:data:`PAST_GRACE`);
- the send-time check saw the appointment move later (:data:`NOT_SENT_EARLY`: the row waits for
  the next re-check to move it, tasks/triggers/prepare.py, and is skipped only if its grace
  ran out first);
- a wait that ran out its grace: skipped with the reason it waited for (``waiting_reason``,
  tasks/messages/waiting.py ``hold``), or held by the marketing gate (frequency cap, quiet hours)
  past the end of its grace window (:data:`GRACE_ENDED`).

Such a row is planned again (``skipped -> planned``) at a planning tick when all of these hold:

- its trigger is live, fires on an appointment, and skipped the row since it went live: a trigger
  switched on, or redefined, later reopens nothing;
- the trigger's query, reading the appointment as for a new booking, has the message in the
  tick's window at its regular moment (its ``timing`` from the appointment), and that moment is
  after the skip: the appointment moved, since unmoved its moment is the one that passed. A late
  booking's "at once" (``last_minute: send``) reopens nothing: the mart cannot tell an edit made
  after the moment (a note) from a move, so a skip stays final rather than send late;
- after a wait that ran out, the reason it waited for has cleared: while it holds, the rule that
  skipped the row would decide the same, so the skip stays final;
- no dispatch ever claimed the row (the ledger's guard on the move, ``ONLY_IF``, checked in the
  same UPDATE as the status: a row another run took meanwhile is left alone).

It is then planned as the new booking would be: due at the new moment with its grace, and judged
by the re-check that follows in the same tick like any planned message (it waits, moves, follows
``last_minute``). ``status_reason`` says it was reopened and which skip it undid; ``reopened``
keeps that after it is sent or skipped again. Every other skip is final: a template error, a
suppressed address, a failed send-time check, a condition judged when due ("a future appointment
is booked"); a cancelled message (the appointment cancelled or gone) is never reopened either,
but for one cancelled because its trigger was switched off, whose moment comes after the trigger
is on again (:func:`resume`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import duckdb

from tasks.messages import ledger
from tasks.messages.gate import GRACE_ENDED
from tasks.messages.waiting import PAST_GRACE
from tasks.triggers.definition import Trigger

# Why a due message whose appointment moved later waits at the send-time check (prepare.py).
NOT_SENT_EARLY = "appointment moved after planning; not sent early"


def switched_off(configured: bool) -> str:
    """Why a trigger's planned message was cancelled when the trigger went off: switched off
    (still in clinic.yaml) or removed from it. :func:`resume` undoes either once it is back."""
    return "trigger switched off" if configured else "trigger removed from the configuration"


SWITCHED_OFF = (switched_off(True), switched_off(False))


def moved_too_late(trigger: Trigger) -> str:
    """The reason of a ``last_minute: skip`` after a move into the window."""
    return f"appointment moved to less than {trigger.timing} it (last_minute: skip)"


def about_time(
    trigger: Trigger, reason: str | None, waiting_reason: str | None
) -> Literal["time", "wait"] | None:
    """Whether a skip (its ``status_reason``, ``waiting_reason``) was about time: ``time`` (the
    moment or its grace passed), ``wait`` (a wait for this reason ran out), or None (final)."""
    if reason in (PAST_GRACE, NOT_SENT_EARLY, moved_too_late(trigger)):
        return "time"
    if reason is not None and reason.endswith(GRACE_ENDED):
        return "time"
    if reason is not None and reason == waiting_reason:
        return "wait"
    return None


def _regular(trigger: Trigger, c: dict[str, Any]) -> bool:
    """Due at the moment its timing gives, not at once as a late booking."""
    return trigger.direction != "before" or c["due_at"] == c["starts_at"] - trigger.offset


def reopen(
    con: duckdb.DuckDBPyConnection,
    trigger: Trigger,
    candidates: dict[str, dict[str, Any]],
    went_live: datetime,
    now: datetime,
) -> int:
    """Plan again the trigger's skipped messages this rule reopens, among the tick's candidates
    (``ledger_status``, ``ledger_skipped_at``: their row's); returns how many moved."""
    if not trigger.is_appointment_event:
        return 0
    ahead = {
        key: c
        for key, c in candidates.items()
        if c["in_window"]
        and c["ledger_status"] == "skipped"
        and c["ledger_skipped_at"] is not None
        and went_live <= c["ledger_skipped_at"] < c["due_at"]
        and _regular(trigger, c)
    }
    if not ahead:
        return 0
    rows = con.execute(
        "SELECT message_id, send_key, status_reason, waiting_reason, skipped_at, reopened "
        "FROM state.messages WHERE send_key IN (SELECT unnest(?::VARCHAR[])) "
        "AND status = 'skipped' AND source_kind = 'trigger'",
        [list(ahead)],
    ).fetchall()
    again = []
    for message_id, key, reason, waiting_reason, skipped_at, reopened in rows:
        kind = about_time(trigger, reason, waiting_reason)
        c = ahead[key]
        if kind is None or (kind == "wait" and c["audience_problem"]):
            continue
        why = "the appointment moved"
        again.append((message_id, c, _note(now, why, "skipped", skipped_at, reason), reopened))
    return _plan_again(con, "skipped", now, again)


def resume(
    con: duckdb.DuckDBPyConnection,
    trigger: Trigger,
    candidates: dict[str, dict[str, Any]],
    went_live: datetime,
    now: datetime,
) -> int:
    """Plan again the trigger's messages cancelled because it was switched off (or removed)
    before it went live again, whose moment is in the tick's window: at or after the new go-live,
    as for any message of a trigger switched on (one due while it was off stays cancelled).
    Without this, a trigger off for a minute would lose every message it had planned ahead
    (reminders of the next two days), while the same appointments booked later got theirs.
    Only a row never claimed moves (the ledger's guard, ``ONLY_IF``); returns how many moved."""
    ahead = {
        key: c
        for key, c in candidates.items()
        if c["in_window"]
        and c["ledger_status"] == "cancelled"
        and c["ledger_cancelled_at"] is not None
        and c["ledger_cancelled_at"] <= went_live <= c["due_at"]
        and _regular(trigger, c)
    }
    if not ahead:
        return 0
    rows = con.execute(
        "SELECT message_id, send_key, status_reason, cancelled_at, reopened "
        "FROM state.messages WHERE send_key IN (SELECT unnest(?::VARCHAR[])) "
        "AND status = 'cancelled' AND source_kind = 'trigger' "
        "AND status_reason IN (SELECT unnest(?::VARCHAR[]))",
        [list(ahead), list(SWITCHED_OFF)],
    ).fetchall()
    why = "the trigger is on again"
    again = [
        (message_id, ahead[key], _note(now, why, "cancelled", cancelled_at, reason), reopened)
        for message_id, key, reason, cancelled_at, reopened in rows
    ]
    return _plan_again(con, "cancelled", now, again)


def _note(now: datetime, why: str, was: str, at: datetime, reason: str) -> str:
    """What a reopened row's ``status_reason`` says (and its ``reopened`` history keeps)."""
    return (
        f"reopened {now.astimezone(UTC):%Y-%m-%d %H:%M} UTC, {why}: "
        f"was {was} {at.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({reason})"
    )


def _plan_again(
    con: duckdb.DuckDBPyConnection,
    status: ledger.Status,
    now: datetime,
    again: list[tuple[int, dict[str, Any], str, str | None]],
) -> int:
    """Rows in ``status`` planned again at their candidate's moment: (message id, candidate,
    note, earlier ``reopened`` history). Only a row never claimed moves (the ledger's guard,
    ``ONLY_IF``, in the same UPDATE); returns how many moved."""
    nothing = [None] * len(again)
    history = [f"{old}; {note}" if old else note for _, _, note, old in again]
    values = {"due_at": [c["due_at"] for _, c, _, _ in again],
              "expires_at": [c["expires_at"] for _, c, _, _ in again],
              "status_reason": [note for _, _, note, _ in again],
              "waiting_reason": nothing, "next_attempt_at": nothing,
              "reopened": history}  # fmt: skip
    ids = [message_id for message_id, _, _, _ in again]
    return len(ledger.transition(con, ids, status, "planned", now, values=values, strict=False))
