"""Planning: triggers evaluated against the marts -> planned rows in the message ledger.

Each tick, in one transaction (a crash leaves the ledger as the last tick left it):

1. **Activate**: the first tick that sees a trigger enabled records when it went live
   (``state.trigger_activations``), to the whole second as Cliniko's timestamps are. Only
   messages whose send moment is at or after that fire, so switching a trigger on never sends
   for history; an "after" trigger thereby looks back exactly its own offset. Switching it off
   (or removing it) cancels its planned messages; switched on again, those whose moment is at
   or after its new go-live are planned again (reopen.resume).
   *A material change* to a trigger (event, timing, filters, channel, purpose; not its wording or
   template) re-dates its go-live to the change: the new definition does not reach back either.
   Send keys are (trigger name, patient, occasion) whatever the definition, so an edit never sends
   a patient the same trigger twice for one occasion (nor does a merge of patient records in
   Cliniko: gone.reached_before_merge); planned messages are re-checked against the
   new definition (moved, re-channelled, or, no longer matching, cancelled; an appointment's
   message waits instead, as for an appointment edited out of the filters, step 3). To start afresh
   under new keys, give the trigger a new name.
2. **Plan**: candidates whose send moment falls between now (minus what the grace window still
   allows) and ``PLAN_AHEAD`` go into the ledger; keys already there are left alone, except a
   skip about time (last_minute, grace, a wait that ran out) whose appointment moved so that its
   moment is ahead again: planned again as a new booking (tasks/triggers/reopen.py).
3. **Re-check** every planned message of every trigger: occasion gone (appointment cancelled,
   deleted...) -> cancelled at once, a reason that cannot change; audience problem
   (unsubscribed, off the marketing list, suppressed, archived, reminder preference, no address:
   tasks/triggers/audience.py), or an appointment edited out of the filters (type, practitioner,
   business: an edit may be undone, tasks/triggers/gone.py ``waits``) -> the message *waits*
   with the reason, judged again every tick
   and at send time, sent if it clears before its moment + grace and skipped with the reason
   after (tasks/messages/waiting.py); past its grace window -> skipped; appointment moved -> the
   message moves with it (the occasion is the appointment, so a reschedule keeps one row; once a
   reminder went, moving the appointment sends no second one). An appointment moved so close
   that its reminder's moment has passed is a late booking seen at the tick that sees the move:
   the trigger's ``last_minute`` rule sends it at once or skips it (:func:`late_move`). One
   with no message planned yet (it was beyond ``PLAN_AHEAD``) is planned as booked at its last
   edit (tasks/triggers/query.py, ``_timing``).
   Conditions about "now" (no future appointment, not rebooked) are judged when the message is
   due, since they can change either way before then. A patient's several places in one class
   are one occasion: one of their messages goes, the others wait (tasks/triggers/places.py).

Dispatch then calls :class:`~tasks.triggers.prepare.Preparer` just before sending: the same
re-check, plus the template context. The SQL is :mod:`tasks.triggers.query`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb

from tasks.config import ClinicConfig
from tasks.messages import ledger, waiting
from tasks.messages.ledger import LedgerRow, PlannedMessage
from tasks.models.runner import require_good_build
from tasks.triggers import gone, names, places, reopen
from tasks.triggers.definition import Trigger
from tasks.triggers.query import (
    APPOINTMENT_REFERENCES,
    APPOINTMENTS,
    bind_window,
    candidate_query,
    reach_window,
    records,
    run,
)
from tasks.warehouse import one, transaction

# How far ahead a tick plans. Planning ahead shows what is coming in the ledger; the re-check
# keeps it right. Later messages are planned by a later tick.
PLAN_AHEAD = timedelta(days=2)


# --- activation ----------------------------------------------------------------------------------


def activate(
    con: duckdb.DuckDBPyConnection, triggers: Iterable[Trigger], now: datetime
) -> dict[str, datetime]:
    """Record go-live moments; returns when each enabled trigger (in its definition) went live."""
    triggers = list(triggers)
    enabled = {t.name: t for t in triggers if t.enabled}
    configured = {t.name for t in triggers}
    open_rows = {
        name: (went_live, fingerprint)
        for name, went_live, fingerprint in con.execute(
            "SELECT trigger_name, went_live_at, fingerprint FROM state.trigger_activations "
            "WHERE ended_at IS NULL"
        ).fetchall()
    }
    live: dict[str, datetime] = {}
    for name, (went_live, fingerprint) in open_rows.items():
        trigger = enabled.get(name)
        if trigger is not None and trigger.fingerprint == fingerprint:
            live[name] = went_live
            continue
        reason = (
            "redefined"
            if trigger is not None
            else "switched off"
            if name in configured
            else "removed from the configuration"
        )
        con.execute(
            "UPDATE state.trigger_activations SET ended_at = ?, ended_reason = ? "
            "WHERE trigger_name = ? AND ended_at IS NULL",
            [now, reason, name],
        )
    # To the second, as Cliniko stamps what happens: a booking made just after this moment,
    # in the same second, reads as that second and is not history. (Unless the trigger went
    # live in this second already, then off or redefined: a go-live of its own, to the moment.)
    second = now.replace(microsecond=0)
    for name, trigger in enabled.items():
        if name not in live:
            at = now if _went_live_at(con, name, second) else second
            con.execute(
                "INSERT INTO state.trigger_activations (trigger_name, went_live_at, fingerprint, "
                "definition) VALUES (?, ?, ?, ?)",
                [name, at, trigger.fingerprint, trigger.definition_json()],
            )
            live[name] = at
    return live


def _went_live_at(con: duckdb.DuckDBPyConnection, name: str, at: datetime) -> bool:
    return bool(
        one(
            con,
            "SELECT count(*) FROM state.trigger_activations "
            "WHERE trigger_name = ? AND went_live_at = ?",
            [name, at],
        )[0]
    )


def went_live(con: duckdb.DuckDBPyConnection, trigger: Trigger) -> datetime | None:
    """When this trigger, as defined now, went live (None: not live in this definition)."""
    row = con.execute(
        "SELECT went_live_at FROM state.trigger_activations "
        "WHERE trigger_name = ? AND ended_at IS NULL AND fingerprint = ?",
        [trigger.name, trigger.fingerprint],
    ).fetchone()
    return row[0] if row else None


# --- planning and re-checking --------------------------------------------------------------------


@dataclass
class PlanResult:
    """Counts per trigger and in all: safe for logs, artifacts and Prefect results."""

    counts: dict[str, Counter] = field(default_factory=dict)

    def add(self, trigger: str, what: str, n: int = 1) -> None:
        if n:
            self.counts.setdefault(trigger, Counter())[what] += n

    @property
    def totals(self) -> Counter:
        total: Counter = Counter()
        for c in self.counts.values():
            total.update(c)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "totals": dict(self.totals),
            "triggers": {k: dict(v) for k, v in sorted(self.counts.items())},
        }


def plan(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    now: datetime,
    *,
    ahead: timedelta = PLAN_AHEAD,
    held: Collection[str] = (),
) -> PlanResult:
    """One planning tick: activate, plan new messages, re-check planned ones; all or nothing.

    Refuses to run when no build is usable; ``held`` triggers (they read a model the latest
    build did not rebuild: tasks.tick.held_sources) neither plan nor re-check this tick.
    """
    require_good_build(con)
    result = PlanResult()
    with transaction(con):
        live = activate(con, config.triggers, now)
        # the ids its names match, recorded at go-live; a name matching nothing holds it
        held = {*held, *names.record(con, config.triggers, config.tag_categories, live, now)}
        windows = {
            t.name: {"now": now, "went_live": live[t.name], "until": now + ahead}
            for t in config.triggers
            if t.name in live
        }
        stage(con, config.triggers, windows)
        candidates = {}
        for trigger in config.triggers:
            if trigger.name in live and trigger.name not in held:
                candidates[trigger.name], planned = _plan_new(con, trigger, windows[trigger.name])
                result.add(trigger.name, "planned", planned)
                again = sum(
                    step(con, trigger, candidates[trigger.name], live[trigger.name], now)
                    for step in (reopen.reopen, reopen.resume)
                )
                result.add(trigger.name, "reopened", again)
        _recheck(con, config, now, result, appointments=STAGED, candidates=candidates, held=held)
        unstage(con)
    return result


def recheck(
    con: duckdb.DuckDBPyConnection, config: ClinicConfig, now: datetime, held: Collection[str] = ()
) -> PlanResult:
    """Re-check planned messages on their own (dispatch runs this first): all or nothing."""
    require_good_build(con)
    result = PlanResult()
    with transaction(con):
        stage(con, config.triggers, {})
        _recheck(con, config, now, result, appointments=STAGED, held=held)
        unstage(con)
    return result


# The tick's slice of marts.appointments (stage()): what the tick's trigger queries read.
STAGED = "planning_tick_events"

# What trigger queries read of an appointment (filters, timing, context): fewer columns staged,
# fewer column segments decompressed.
_STAGED_COLUMNS = ", ".join(
    ["appointment_kind", "appointment_id", "patient_id", "status", "is_kept", "is_tag", "starts_at",
     "ends_at", "created_at", "updated_at", "cancelled_at", "business_time_zone"]
    + [c for pair in APPOINTMENT_REFERENCES.values() for c in pair if c]
)  # fmt: skip


def stage(
    con: duckdb.DuckDBPyConnection, triggers: Iterable[Trigger], windows: dict[str, dict]
) -> None:
    """Copy out, once per tick, the appointments any trigger can fire on now: those in some
    trigger's window, and those planned messages are about. Each trigger's queries then read a
    few thousand rows instead of scanning the whole mart again (history for counts, positions
    and "no future appointment" is read per patient from the mart)."""
    params: dict[str, Any] = {}
    ranges = []
    for i, trigger in enumerate(triggers):
        if trigger.name not in windows or not trigger.is_appointment_event:
            continue
        bounds: dict[str, Any] = {}
        bind_window(bounds, trigger, **windows[trigger.name])
        params.update({f"{k}_{i}": bounds[k] for k in ("now", "hint_lo", "hint_hi") if k in bounds})
        ranges.append(f"({reach_window(trigger, f'_{i}')})")
    run(
        con,
        f"""CREATE OR REPLACE TEMP TABLE {STAGED} AS
            SELECT {_STAGED_COLUMNS} FROM marts.appointments a
            WHERE {" OR ".join(ranges) or "false"}
               OR a.appointment_id IN (SELECT appointment_id FROM state.messages
                                       WHERE status = 'planned' AND source_kind = 'trigger')""",
        params,
    )


def unstage(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"DROP TABLE IF EXISTS {STAGED}")


def _plan_new(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, window: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Insert the trigger's new messages; returns every candidate (new and already in the ledger,
    by send key, with its row's ``ledger_status`` and ``ledger_skipped_at``, for the reopening
    and the re-check that follow) and how many rows were new."""
    sql, params = candidate_query(trigger, "tick", appointments=STAGED)
    bind_window(params, trigger, **window)
    found = records(
        con,
        f"SELECT c.*, m.send_key IS NOT NULL AS in_ledger, m.status AS ledger_status, "
        f"m.skipped_at AS ledger_skipped_at, m.cancelled_at AS ledger_cancelled_at FROM ({sql}) c "
        "LEFT JOIN state.messages m ON m.send_key = c.send_key",
        params,
    )
    candidates = {c["send_key"]: c for c in found}
    new = [c for c in candidates.values() if c["in_window"] and not c["in_ledger"]]
    merged = gone.reached_before_merge(
        con, trigger, [(c["send_key"], c["patient_id"]) for c in new]
    )
    rows = [
        (c["send_key"], c["patient_id"], c["appointment_id"], c["due_at"], c["expires_at"])
        for c in new
        if c["send_key"] not in merged
    ]
    return candidates, ledger.insert_planned(
        con,
        (
            PlannedMessage(
                send_key=key,
                source_kind="trigger",
                source_name=trigger.name,
                patient_id=patient_id,
                channel=trigger.channel,
                purpose=trigger.purpose,
                template=trigger.template,
                due_at=due_at,
                expires_at=expires_at,
                appointment_id=appointment_id,
            )
            for key, patient_id, appointment_id, due_at, expires_at in rows
        ),
        window["now"],
    )


@dataclass(frozen=True)
class Decision:
    """What the re-check concluded for one planned message."""

    action: Literal["keep", "move", "cancel", "skip", "wait"]
    reason: str | None = None
    due_at: datetime | None = None
    expires_at: datetime | None = None
    candidate: dict[str, Any] | None = field(default=None, repr=False)  # personal data


def planned_by_trigger(con: duckdb.DuckDBPyConnection) -> dict[str, list[LedgerRow]]:
    planned: dict[str, list[LedgerRow]] = {}
    for row in ledger.in_status(con, "planned"):
        if row.source_kind == "trigger":
            planned.setdefault(row.source_name, []).append(row)
    return planned


def decide(
    con: duckdb.DuckDBPyConnection,
    trigger: Trigger,
    planned: list[LedgerRow],
    now: datetime,
    *,
    appointments: str = APPOINTMENTS,
    candidates: dict[str, dict[str, Any]] | None = None,
) -> dict[int, tuple[LedgerRow, Decision]]:
    """Re-check these planned messages of the trigger against the marts as they are now
    (``appointments``: the mart, or the tick's slice of it; ``candidates``: the tick's query
    already answered, by send key)."""
    if not planned:
        return {}
    if candidates is None:
        sql, params = candidate_query(trigger, "planned", appointments=appointments)
        params["now"] = now
        candidates = {c["send_key"]: c for c in records(con, sql, params)}
    missing = [r for r in planned if r.send_key not in candidates]
    why_gone = gone.why_gone(con, trigger, missing) if missing else {}
    # one message per patient per class: another place of the patient in it has the message
    elsewhere = places.held_by_another_place(con, trigger, planned, candidates)

    decisions: dict[int, tuple[LedgerRow, Decision]] = {}
    for row in planned:
        c = candidates.get(row.send_key)
        timing = None if c is None else late_move(trigger, row, c, now)
        if c is None and gone.waits(why_gone[row.message_id]):  # e.g. paid again: waits for it
            decision = Decision("wait", why_gone[row.message_id], row.due_at, row.expires_at)
        elif c is None:
            decision = Decision("cancel", why_gone[row.message_id])
        elif timing is None:
            decision = Decision("skip", reopen.moved_too_late(trigger), candidate=c)
        elif row.message_id in elsewhere:  # released if that place is cancelled before it went
            decision = Decision("wait", places.ANOTHER_PLACE, *timing, candidate=c)
        elif c["audience_problem"]:  # can change: waits (skipped with it past its grace window)
            decision = Decision("wait", c["audience_problem"], *timing, candidate=c)
        elif timing[1] is not None and now > timing[1]:
            decision = Decision("skip", waiting.PAST_GRACE, candidate=c)
        elif timing[0] <= now and c["due_problem"]:
            decision = Decision("skip", c["due_problem"], candidate=c)
        elif timing != (row.due_at, row.expires_at):
            decision = Decision("move", None, *timing, candidate=c)
        else:
            decision = Decision("keep", None, row.due_at, row.expires_at, candidate=c)
        decisions[row.message_id] = (row, decision)
    return decisions


def late_move(
    trigger: Trigger, row: LedgerRow, c: dict[str, Any], now: datetime
) -> tuple[datetime, datetime | None] | None:
    """(due, expires) of a planned message as its candidate says now, except when the appointment
    moved so close that the message's moment has passed (it was still ahead as planned): that is
    a booking made when the move was seen, and the trigger's ``last_minute`` rule applies exactly
    as to one (tasks/triggers/query.py, _timing): at once from then, or None (skip). A move out
    of the window, or one whose moment is still ahead, is the candidate's timing as it is."""
    due, expires = c["due_at"], c["expires_at"]
    if trigger.direction != "before" or due >= row.due_at or due >= now:
        return due, expires
    if trigger.last_minute == "skip":
        return None
    seen = min(row.due_at, now)  # the tick that saw the move (a row due already keeps its moment)
    return seen, min(seen + trigger.grace_window, c["starts_at"])


def _recheck(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    now: datetime,
    result: PlanResult,
    *,
    appointments: str = APPOINTMENTS,
    candidates: dict[str, dict[str, dict[str, Any]]] | None = None,
    held: Collection[str] = (),
) -> None:
    enabled = {t.name: t for t in config.triggers if t.enabled}
    configured = {t.name for t in config.triggers}
    planned = planned_by_trigger(con)
    for name, rows in planned.items():
        if name not in enabled:
            reason = reopen.switched_off(name in configured)
            ids = [r.message_id for r in rows]
            result.add(name, "cancelled", len(ledger.cancel(con, ids, reason, now)))

    for trigger in (t for t in enabled.values() if t.name not in held):
        by_reason: dict[tuple[str, str], list[int]] = {}
        hold: list[tuple[int, str]] = []  # to wait, newly or for another reason, or now final
        released: list[int] = []
        known = (candidates or {}).get(trigger.name)
        for message_id, (row, decision) in decide(
            con,
            trigger,
            planned.get(trigger.name, []),
            now,
            appointments=appointments,
            candidates=known,
        ).items():
            if decision.action in ("cancel", "skip"):
                assert decision.reason is not None  # decide() gives each cancel and skip one
                by_reason.setdefault((decision.action, decision.reason), []).append(message_id)
                continue
            assert decision.due_at is not None  # keep, move and wait carry their timing
            if (decision.due_at, decision.expires_at) != (row.due_at, row.expires_at):
                ledger.reschedule(con, message_id, decision.due_at, decision.expires_at, now)
                result.add(trigger.name, "rescheduled")
            if decision.action == "wait":
                assert decision.reason is not None  # decide() waits for a reason
                ends = decision.expires_at
                if row.waiting_reason != decision.reason or ends is None or now >= ends:
                    hold.append((message_id, decision.reason))
            elif row.waiting_reason is not None:
                released.append(message_id)
            if (row.channel, row.purpose, row.template) != (
                trigger.channel,
                trigger.purpose,
                trigger.template,
            ):
                ledger.amend(
                    con, message_id, channel=trigger.channel, purpose=trigger.purpose,
                    template=trigger.template, now=now,
                )  # fmt: skip
                result.add(trigger.name, "amended")
        for (action, reason), ids in by_reason.items():
            finish = ledger.cancel if action == "cancel" else ledger.skip
            moved = finish(con, ids, reason, now)
            result.add(trigger.name, "cancelled" if action == "cancel" else "skipped", len(moved))
        if hold:
            hold_ids, hold_reasons = zip(*hold, strict=True)
            waits, late = waiting.hold(con, hold_ids, hold_reasons, now)
            result.add(trigger.name, "waiting", len(waits))
            result.add(trigger.name, "skipped", len(late))
        result.add(trigger.name, "released", len(waiting.release(con, released, now)))
