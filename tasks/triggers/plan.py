"""Planning: triggers evaluated against the marts -> planned rows in the message ledger.

Each tick, in one transaction (a crash leaves the ledger as the last tick left it):

1. **Activate**: the first tick that sees a trigger enabled records when it went live
   (``state.trigger_activations``). Only messages whose send moment is at or after that fire, so
   switching a trigger on never sends for history; an "after" trigger thereby looks back exactly
   its own offset. Switching it off (or removing it) cancels its planned messages.
   *A material change* to a trigger (event, timing, filters, channel, purpose; not its wording or
   template) re-dates its go-live to the change: the new definition does not reach back either.
   Send keys are (trigger name, patient, occasion) whatever the definition, so an edit never sends
   a patient the same trigger twice for one occasion; planned messages are re-checked against the
   new definition (moved, re-channelled, or cancelled when they no longer match). To start afresh
   under new keys, give the trigger a new name.
2. **Plan**: candidates whose send moment falls between now (minus what the grace window still
   allows) and ``PLAN_AHEAD`` go into the ledger; keys already there are left alone.
3. **Re-check** every planned message of every trigger: occasion gone (appointment cancelled,
   deleted, type changed...) -> cancelled; audience gone (unsubscribed, suppressed, consent or
   reminder preference withdrawn, no address) -> skipped; past its grace window -> skipped;
   appointment moved -> the message moves with it (the occasion is the appointment, so a
   reschedule keeps one row; once a reminder went, moving the appointment sends no second one).
   Conditions about "now" (no future appointment, not rebooked) are judged when the message is
   due, since they can change either way before then.

Dispatch then calls :class:`Preparer` (``prepare``) just before sending: the same re-check, plus
the template context. All SQL is fixed text from this module; every value from the configuration
is a bound parameter, and column names come from the whitelists below.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb

from tasks.config import ClinicConfig
from tasks.errors import UserFacingError
from tasks.messages import ledger
from tasks.messages.ledger import LedgerRow, PlannedMessage
from tasks.messages.prepare import Ready, Skip, clinic_details
from tasks.messages.templates import build_context
from tasks.models.runner import require_good_build
from tasks.triggers.definition import Trigger, reference_lists
from tasks.warehouse import transaction

# How far ahead a tick plans. Planning ahead shows what is coming in the ledger; the re-check
# keeps it right. Later messages are planned by a later tick.
PLAN_AHEAD = timedelta(days=2)

KEPT = "('arrived', 'unmarked', 'upcoming')"

# Filter kind -> (id column, name column) of marts.appointments. The only columns filters touch.
APPOINTMENT_REFERENCES: dict[str, tuple[str | None, str]] = {
    "appointment_types": ("appointment_type_id", "appointment_type_name"),
    "categories": (None, "category"),
    "businesses": ("business_id", "business_name"),
    "practitioners": ("practitioner_id", "practitioner_name"),
}

# Cliniko's reminder_type -> the channels a patient accepts reminders on (NULL: Cliniko's default).
REMINDER_CHANNELS = {"email": ["SMS & Email", "Email"], "sms": ["SMS & Email", "SMS"]}

Scope = Literal["window", "planned", "tick"]


# --- the candidate query, built from fixed fragments ---------------------------------------------


def _match(alias: str, kind: str, param: str) -> str:
    id_col, name_col = APPOINTMENT_REFERENCES[kind]
    by_name = f"list_contains(${param}_names::VARCHAR[], lower(trim({alias}.{name_col})))"
    if id_col is None:
        return f"coalesce({by_name}, false)"
    return f"coalesce(list_contains(${param}_ids::BIGINT[], {alias}.{id_col}) OR {by_name}, false)"


def _bind_refs(params: dict[str, Any], param: str, values: tuple) -> None:
    ids, names = reference_lists(values)
    params[f"{param}_ids"] = ids
    params[f"{param}_names"] = names


def appointment_filters(trigger: Trigger, alias: str, params: dict[str, Any]) -> list[str]:
    """Predicates on one appointment (alias) for the trigger's filters and exclusions."""
    predicates = []
    for kind in APPOINTMENT_REFERENCES:
        values = getattr(trigger.filters, kind)
        if values:
            _bind_refs(params, f"include_{kind}", values)
            predicates.append(_match(alias, kind, f"include_{kind}"))
    predicates += exclusions(trigger, alias, params)
    return predicates


def exclusions(trigger: Trigger, alias: str, params: dict[str, Any]) -> list[str]:
    predicates = []
    for kind in ("appointment_types", "categories", "businesses"):
        values = getattr(trigger.exclude, kind)
        if values:
            _bind_refs(params, f"exclude_{kind}", values)
            predicates.append(f"NOT {_match(alias, kind, f'exclude_{kind}')}")
    return predicates


def _and(predicates: Iterable[str]) -> str:
    predicates = list(predicates)
    return " AND ".join(f"({p})" for p in predicates) if predicates else "true"


def _moment(trigger: Trigger) -> str:
    """The moment the trigger's timing counts from, on marts.appointments (alias a)."""
    event = trigger.event
    if event == "appointment_booked":
        return "a.created_at"
    if event == "cancelled":
        return "a.cancelled_at"
    if event == "before_appointment" or trigger.direction == "before":
        return "a.starts_at"
    return "coalesce(a.ends_at, a.starts_at)"  # after / did_not_arrive / first, nth after


def _event_predicate(trigger: Trigger) -> str:
    event = trigger.event
    if event == "appointment_booked":
        return "a.status NOT IN ('cancelled', 'deleted', 'archived')"
    if event == "cancelled":
        return "a.status = 'cancelled'"
    if event == "did_not_arrive":
        return "a.status = 'did_not_arrive'"
    if event == "before_appointment" or trigger.direction == "before":
        return f"a.status IN {KEPT}"
    # attended: arrived, or (unless arrival marks are required) past and not marked; an
    # appointment still ahead stays a candidate until its message is due.
    if trigger.require_arrived:
        return (
            "a.status = 'arrived' OR (a.status IN ('upcoming', 'unmarked') "
            "AND epoch_us(coalesce(a.ends_at, a.starts_at)) + $offset_us > $now_us)"
        )
    return f"a.status IN {KEPT}"


_APPOINTMENT_COLUMNS = """
    a.appointment_kind, a.appointment_id, a.patient_id, a.appointment_type_name,
    a.business_name, a.business_time_zone, a.practitioner_name, a.starts_at, a.created_at,
    a.cancelled_at, a.status"""

_PATIENT_EVENT = """
    SELECT NULL::VARCHAR AS appointment_kind, NULL::BIGINT AS appointment_id, a.patient_id,
           NULL::VARCHAR AS appointment_type_name, NULL::VARCHAR AS business_name,
           NULL::VARCHAR AS business_time_zone, NULL::VARCHAR AS practitioner_name,
           NULL::TIMESTAMPTZ AS starts_at, a.created_at, NULL::TIMESTAMPTZ AS cancelled_at,
           NULL::VARCHAR AS status,
           epoch_us(a.created_at) AS moment_us, epoch_us(a.created_at) AS created_us,
           NULL::BIGINT AS starts_us
    FROM marts.patients a
    WHERE NOT a.is_archived AND {scope} AND {hint}"""


# Where a query reads appointments from: (the events a trigger may fire on, every appointment of
# those patients): the mart, or for events the tick's staged slice of it (stage()).
STAGED_EVENTS = "planning_tick_events"
SOURCES = {
    False: ("marts.appointments", "marts.appointments"),
    True: (STAGED_EVENTS, "marts.appointments"),
}


def candidate_sql(
    trigger: Trigger, scope: Scope, *, staged: bool = False
) -> tuple[str, dict[str, Any]]:
    """SQL listing the trigger's messages (one row per send key) and the parameters it binds.

    scope 'window': send moments in [went_live, until], still within grace at ``now``;
    scope 'planned': exactly the occasions of the trigger's planned ledger rows (for re-checks);
    scope 'tick': both at once, flagged by ``in_window`` (the tick's one query per trigger).
    ``staged``: read the tick's slices made by :func:`stage` instead of the whole mart.
    Columns: send_key, patient_id, appointment_id, due_at, expires_at, audience_problem,
    due_problem, and what templates and previews show.
    """
    events_from, history_from = SOURCES[staged]
    params: dict[str, Any] = {
        "trigger": trigger.name,
        "offset": trigger.offset,
        "grace": trigger.grace_window,
        "now": None,
    }
    planned_ids = (
        "SELECT {col} FROM state.messages WHERE status = 'planned' "
        "AND source_kind = 'trigger' AND source_name = $trigger"
    )
    if trigger.is_appointment_event:
        scope_filter = (
            f"a.appointment_id IN ({planned_ids.format(col='appointment_id')})"
            if scope == "planned"
            else "true"
        )
        # A necessary condition on plain columns, so the scan of two million appointments skips
        # most of them before anything is computed; the exact window is applied below.
        if scope == "planned" or staged:  # the staged slice holds only such rows already
            hint = "true"
        elif trigger.direction == "before":
            hint = "a.starts_at > $now AND a.starts_at <= $hint_hi"
        else:
            hint = f"{_moment(trigger)} BETWEEN $hint_lo AND $hint_hi"
        events = f"""
            SELECT {_APPOINTMENT_COLUMNS},
                   epoch_us({_moment(trigger)}) AS moment_us,
                   epoch_us(a.created_at) AS created_us, epoch_us(a.starts_at) AS starts_us
            FROM {events_from} a
            WHERE {hint} AND ({_event_predicate(trigger)}) AND {scope_filter}
              AND {_and(appointment_filters(trigger, "a", params))}"""
    else:
        scope_filter = (
            f"a.patient_id IN ({planned_ids.format(col='patient_id')})"
            if scope == "planned"
            else "true"
        )
        hint = "true" if scope == "planned" else "a.created_at BETWEEN $hint_lo AND $hint_hi"
        if scope == "tick":
            scope_filter, hint = (
                f"({hint} OR a.patient_id IN ({planned_ids.format(col='patient_id')}))",
                "true",
            )
        events = _PATIENT_EVENT.format(scope=scope_filter, hint=hint)

    # Time arithmetic in epoch microseconds: TIMESTAMPTZ +/- INTERVAL goes through ICU's calendar
    # for every row, sixty times slower on two million appointments.
    if trigger.direction == "before":
        planned_moment = "moment_us - $offset_us"
        if trigger.last_minute == "skip":
            due = planned_moment
            timing_filter = f"coalesce(created_us <= {planned_moment}, true)"
        else:  # booked after the planned moment: at once
            due = f"greatest(coalesce(created_us, {planned_moment}), {planned_moment})"
            timing_filter = "true"
        expires = "least(due_us + $grace_us, starts_us)"
    else:
        due, timing_filter, expires = "moment_us + $offset_us", "true", "due_us + $grace_us"

    in_window = "due_us >= $went_live_us AND due_us <= $until_us AND expires_us > $now_us"
    planned_column = "appointment_id" if trigger.is_appointment_event else "patient_id"
    window = {
        "window": in_window,
        "planned": "true",
        "tick": f"({in_window}) OR {planned_column} IN ({planned_ids.format(col=planned_column)})",
    }[scope]
    if scope != "planned":
        params.update(went_live=None, until=None)

    ctes = [
        f"events AS ({events})",
        f"timed AS (SELECT *, {due} AS due_us FROM events WHERE {timing_filter})",
        f"scoped AS (SELECT *, {expires} AS expires_us FROM timed WHERE due_us IS NOT NULL)",
        f"windowed AS (SELECT *, {in_window if scope != 'planned' else 'false'} AS in_window "
        f"FROM scoped WHERE {window})",
    ]
    joins, wheres = [], []

    if trigger.position is not None:
        # Which of the patient's kept appointments (of those the filters accept) this is.
        params["position"] = trigger.position
        ctes.append(f"""positions AS (
            SELECT w.appointment_kind, w.appointment_id, 1 + count(x.appointment_id) AS position
            FROM windowed w
            LEFT JOIN (SELECT * FROM {history_from}
                       WHERE patient_id IN (SELECT patient_id FROM windowed)) x
              ON x.patient_id = w.patient_id AND x.status IN {KEPT}
             AND {_and(appointment_filters(trigger, "x", params))}
             AND (x.starts_at < w.starts_at OR (x.starts_at = w.starts_at
                  AND (x.appointment_kind, x.appointment_id) < (w.appointment_kind, w.appointment_id)))
            GROUP BY ALL)""")
        joins.append("JOIN positions USING (appointment_kind, appointment_id)")
        wheres.append("positions.position = $position")

    count = trigger.filters.appointment_count
    if count is not None:
        type_filter = "true"
        if count.types:
            _bind_refs(params, "count_types", count.types)
            type_filter = _match("x", "appointment_types", "count_types")
        ctes.append(f"""counts AS (
            SELECT w.patient_id, count(x.appointment_id) AS kept_appointments
            FROM (SELECT DISTINCT patient_id FROM windowed) w
            LEFT JOIN (SELECT * FROM {history_from}
                       WHERE patient_id IN (SELECT patient_id FROM windowed)) x
              ON x.patient_id = w.patient_id AND x.status IN {KEPT} AND {type_filter}
            GROUP BY ALL)""")
        joins.append("JOIN counts USING (patient_id)")
        if count.min is not None:
            params["count_min"] = count.min
            wheres.append("counts.kept_appointments >= $count_min")
        if count.max is not None:
            params["count_max"] = count.max
            wheres.append("counts.kept_appointments <= $count_max")

    age = trigger.filters.age
    if age is not None:
        if age.min is not None:
            params["age_min"] = age.min
            wheres.append("p.age >= $age_min")
        if age.max is not None:
            params["age_max"] = age.max
            wheres.append("p.age <= $age_max")

    audience, audience_joins = _audience(trigger, params)
    due_problem = _due_problem(trigger, params, history_from)

    sql = f"""
        WITH {", ".join(ctes)}
        SELECT 'trigger:' || $trigger || ':' || w.patient_id || ':' || CASE w.appointment_kind
                   WHEN 'group' THEN 'attendance:' || w.appointment_id
                   WHEN 'individual' THEN 'appointment:' || w.appointment_id
                   ELSE 'patient' END AS send_key,
               w.patient_id, w.appointment_id, w.appointment_kind, w.in_window,
               make_timestamp(w.due_us)::TIMESTAMPTZ AS due_at,
               make_timestamp(w.expires_us)::TIMESTAMPTZ AS expires_at,
               {audience} AS audience_problem,
               {due_problem} AS due_problem,
               p.first_name, p.preferred_first_name, p.last_name,
               {"p.email" if trigger.channel == "email" else "p.mobile_e164"} AS address,
               w.starts_at, w.business_time_zone, w.appointment_type_name, w.practitioner_name,
               w.business_name
        FROM windowed w
        JOIN marts.patients p USING (patient_id)
        {" ".join(joins)}
        {audience_joins}
        WHERE {_and(wheres)}
    """
    return sql, params


def bind_window(
    params: dict[str, Any], trigger: Trigger, *, now: datetime, went_live: datetime, until: datetime
) -> None:
    """The window of a 'window' query: send moments from go-live (and no further back than the
    grace window allows) up to ``until``; and the same as bounds on the event's own column."""
    params.update(now=now, went_live=went_live, until=until)
    if trigger.direction == "before":
        params["hint_hi"] = until + trigger.offset
    else:
        params["hint_lo"] = max(went_live, now - trigger.grace_window) - trigger.offset
        params["hint_hi"] = until - trigger.offset


def _audience(trigger: Trigger, params: dict[str, Any]) -> tuple[str, str]:
    """Why the patient cannot get this message (NULL: they can), and the joins that needs."""
    params["channel"] = trigger.channel
    params["suppression_scopes"] = (
        ["all", "marketing"] if trigger.purpose == "marketing" else ["all"]
    )
    cases = ["WHEN p.is_archived THEN 'patient archived in Cliniko'"]
    if trigger.channel == "email":
        cases.append(
            "WHEN p.email_normalised IS NULL OR NOT p.email_is_valid "
            "THEN 'no valid email address on file'"
        )
        address = "p.email_normalised"
    else:
        cases.append("WHEN p.mobile_e164 IS NULL THEN 'no valid mobile number on file'")
        address = "p.mobile_e164"
    cases.append(
        "WHEN coalesce(p.preferred_first_name, p.first_name) IS NULL "
        "THEN 'no first name on file to greet the patient by'"
    )
    if trigger.honours_reminder_preference:
        params["reminder_types"] = REMINDER_CHANNELS[trigger.channel]
        cases.append(
            "WHEN p.reminder_type IS NOT NULL AND NOT list_contains($reminder_types, p.reminder_type) "
            "THEN 'Cliniko reminder preference is ' || p.reminder_type"
        )
    joins = f"""
        LEFT JOIN (
            SELECT address, min(reason) AS reason FROM (
                SELECT address, scope, action, reason FROM state.suppressions
                WHERE channel = $channel
                QUALIFY row_number() OVER (PARTITION BY address, scope
                                           ORDER BY occurred_at DESC, suppression_id DESC) = 1)
            WHERE action = 'suppress' AND list_contains($suppression_scopes, scope)
            GROUP BY address
        ) suppressed ON suppressed.address = {address}"""
    if trigger.purpose == "marketing":
        if trigger.channel == "email":
            joins += """
        LEFT JOIN marts.email_marketing_list list
          ON list.patient_id = w.patient_id AND list.email = p.email_normalised"""
            listed = "the email marketing list"
        else:
            joins += """
        LEFT JOIN marts.sms_marketing_list list
          ON list.patient_id = w.patient_id AND list.mobile_e164 = p.mobile_e164"""
            listed = "the SMS marketing list"
        cases.append(
            "WHEN list.status IS DISTINCT FROM 'subscribed' "
            f"THEN 'not subscribed to {listed} (' || coalesce(list.status, 'not on it') || ')'"
        )
    cases.append(
        "WHEN suppressed.address IS NOT NULL THEN 'address suppressed (' || suppressed.reason || ')'"
    )
    return "CASE " + " ".join(cases) + " END", joins


def _due_problem(trigger: Trigger, params: dict[str, Any], history_from: str) -> str:
    """Conditions about the moment of sending (judged when the message is due)."""
    cases = []
    if trigger.filters.no_future_appointment:
        other = _and(exclusions(trigger, "f", params))
        cases.append(f"""WHEN EXISTS (
            SELECT 1 FROM {history_from} f
            WHERE f.patient_id = w.patient_id AND f.status IN {KEPT} AND f.starts_at > $now
              AND f.patient_id IN (SELECT patient_id FROM windowed)
              AND f.appointment_id IS DISTINCT FROM w.appointment_id AND {other})
            THEN 'a future appointment is booked'""")
    if trigger.filters.not_rebooked_since_cancelling:
        other = _and(exclusions(trigger, "f", params))
        cases.append(f"""WHEN EXISTS (
            SELECT 1 FROM {history_from} f
            WHERE f.patient_id = w.patient_id AND f.status IN {KEPT}
              AND f.patient_id IN (SELECT patient_id FROM windowed)
              AND f.created_at > coalesce(w.cancelled_at, w.starts_at) AND {other})
            THEN 'rebooked since cancelling'""")
    return ("CASE " + " ".join(cases) + " END") if cases else "NULL::VARCHAR"


_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _micros(value: datetime | timedelta) -> int:
    return (value if isinstance(value, timedelta) else value - _EPOCH) // _MICRO


def run(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> duckdb.DuckDBPyConnection:
    """Execute with exactly the parameters the SQL names (DuckDB refuses extras). ``$x_us`` is
    ``$x`` (a datetime or timedelta) in microseconds (since the epoch)."""
    used = set(_PARAM.findall(sql))
    params = dict(params)
    for name in used:
        base = params.get(name.removesuffix("_us"))
        if name.endswith("_us") and name not in params and base is not None:
            params[name] = _micros(base)
    missing = used - set(params)
    if missing:  # a programming error, not a user's
        raise KeyError(f"planning SQL needs parameters {sorted(missing)}")
    return con.execute(sql, {k: v for k, v in params.items() if k in used})


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
    for name, trigger in enabled.items():
        if name not in live:
            con.execute(
                "INSERT INTO state.trigger_activations (trigger_name, went_live_at, fingerprint, "
                "definition) VALUES (?, ?, ?, ?)",
                [name, now, trigger.fingerprint, trigger.definition_json()],
            )
            live[name] = now
    return live


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
) -> PlanResult:
    """One planning tick: activate, plan new messages, re-check planned ones; all or nothing.

    Refuses to run on models whose latest build failed (they may be half-built or stale).
    """
    require_good_build(con)
    result = PlanResult()
    with transaction(con):
        live = activate(con, config.triggers, now)
        windows = {
            t.name: {"now": now, "went_live": live[t.name], "until": now + ahead}
            for t in config.triggers
            if t.name in live
        }
        stage(con, config.triggers, windows)
        candidates = {}
        for trigger in config.triggers:
            if trigger.name in live:
                candidates[trigger.name], planned = _plan_new(con, trigger, windows[trigger.name])
                result.add(trigger.name, "planned", planned)
        _recheck(con, config, now, result, staged=True, candidates=candidates)
        unstage(con)
    return result


def recheck(con: duckdb.DuckDBPyConnection, config: ClinicConfig, now: datetime) -> PlanResult:
    """Re-check planned messages on their own (dispatch runs this first): all or nothing."""
    require_good_build(con)
    result = PlanResult()
    with transaction(con):
        stage(con, config.triggers, {})
        _recheck(con, config, now, result, staged=True)
        unstage(con)
    return result


# What trigger queries read of an appointment (filters, timing, context): fewer columns staged,
# fewer column segments decompressed.
_STAGED_COLUMNS = ", ".join(
    ["appointment_kind", "appointment_id", "patient_id", "status", "starts_at", "ends_at",
     "created_at", "cancelled_at", "business_time_zone"]
    + [c for pair in APPOINTMENT_REFERENCES.values() for c in pair if c]
)  # fmt: skip


def unstage(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"DROP TABLE IF EXISTS {STAGED_EVENTS}")


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
        params[f"hi_{i}"] = bounds["hint_hi"]
        if trigger.direction == "before":
            params[f"now_{i}"] = bounds["now"]
            ranges.append(f"(a.starts_at > $now_{i} AND a.starts_at <= $hi_{i})")
        else:
            params[f"lo_{i}"] = bounds["hint_lo"]
            ranges.append(f"({_moment(trigger)} BETWEEN $lo_{i} AND $hi_{i})")
    run(
        con,
        f"""CREATE OR REPLACE TEMP TABLE {STAGED_EVENTS} AS
            SELECT {_STAGED_COLUMNS} FROM marts.appointments a
            WHERE {" OR ".join(ranges) or "false"}
               OR a.appointment_id IN (SELECT appointment_id FROM state.messages
                                       WHERE status = 'planned' AND source_kind = 'trigger')""",
        params,
    )


def _plan_new(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, window: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Insert the trigger's new messages; returns every candidate (new and already planned, by
    send key, for the re-check that follows) and how many rows were new."""
    sql, params = candidate_sql(trigger, "tick", staged=True)
    bind_window(params, trigger, **window)
    cur = run(
        con,
        f"SELECT c.*, m.send_key IS NOT NULL AS in_ledger FROM ({sql}) c "
        "LEFT JOIN state.messages m ON m.send_key = c.send_key",
        params,
    )
    names = [d[0] for d in cur.description]
    candidates = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    rows = [
        (c["send_key"], c["patient_id"], c["appointment_id"], c["due_at"], c["expires_at"])
        for c in candidates.values()
        if c["in_window"] and not c["in_ledger"]
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

    action: Literal["keep", "move", "cancel", "skip"]
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
    staged: bool = False,
    candidates: dict[str, dict[str, Any]] | None = None,
) -> dict[int, tuple[LedgerRow, Decision]]:
    """Re-check these planned messages of the trigger against the marts as they are now
    (``candidates``: the tick's query already answered, by send key)."""
    if not planned:
        return {}
    if candidates is None:
        sql, params = candidate_sql(trigger, "planned", staged=staged)
        params["now"] = now
        cur = run(con, sql, params)
        names = [d[0] for d in cur.description]
        candidates = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    missing = [r for r in planned if r.send_key not in candidates]
    why_gone = _why_gone(con, trigger, missing, now) if missing else {}

    decisions: dict[int, tuple[LedgerRow, Decision]] = {}
    for row in planned:
        c = candidates.get(row.send_key)
        if c is None:
            decision = Decision("cancel", why_gone[row.message_id])
        elif c["audience_problem"]:
            decision = Decision("skip", c["audience_problem"], candidate=c)
        elif c["expires_at"] is not None and now > c["expires_at"]:
            decision = Decision("skip", "past its grace window", candidate=c)
        elif c["due_at"] <= now and c["due_problem"]:
            decision = Decision("skip", c["due_problem"], candidate=c)
        elif (c["due_at"], c["expires_at"]) != (row.due_at, row.expires_at):
            decision = Decision("move", None, c["due_at"], c["expires_at"], candidate=c)
        else:
            decision = Decision("keep", None, row.due_at, row.expires_at, candidate=c)
        decisions[row.message_id] = (row, decision)
    return decisions


def _why_gone(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, rows: list[LedgerRow], now: datetime
) -> dict[int, str]:
    """In words, why a planned message's occasion no longer matches its trigger."""
    if not trigger.is_appointment_event:
        found = dict(
            con.execute(
                "SELECT patient_id, is_archived FROM marts.patients WHERE patient_id IN "
                "(SELECT unnest(?::BIGINT[]))",
                [[r.patient_id for r in rows]],
            ).fetchall()
        )
        return {
            r.message_id: "patient deleted in Cliniko"
            if r.patient_id not in found
            else "patient archived in Cliniko"
            for r in rows
        }
    kinds = ["group" if ":attendance:" in r.send_key else "individual" for r in rows]
    status = {
        (kind, appointment_id): (state, patient_id)
        for kind, appointment_id, state, patient_id in con.execute(
            "SELECT appointment_kind, appointment_id, status, patient_id FROM marts.appointments "
            "WHERE appointment_id IN (SELECT unnest(?::BIGINT[]))",
            [[r.appointment_id for r in rows]],
        ).fetchall()
    }
    reasons = {}
    for row, kind in zip(rows, kinds, strict=True):
        state, patient_id = status.get((kind, row.appointment_id), (None, None))
        if state is None:
            reason = "appointment no longer in Cliniko"
        elif patient_id != row.patient_id:
            reason = "appointment now belongs to another patient record (merged)"
        elif trigger.event == "cancelled" and state != "cancelled":
            reason = "appointment no longer cancelled"
        elif trigger.event == "did_not_arrive" and state != "did_not_arrive":
            reason = "appointment no longer marked did-not-arrive"
        elif state in ("cancelled", "deleted", "archived", "did_not_arrive"):
            reason = {
                "cancelled": "appointment cancelled",
                "deleted": "appointment deleted in Cliniko",
                "archived": "appointment archived in Cliniko",
                "did_not_arrive": "patient did not arrive",
            }[state]
        elif trigger.require_arrived and state != "arrived":
            reason = "appointment not marked as arrived"
        else:
            reason = "no longer matches the trigger's filters (appointment or patient changed)"
        reasons[row.message_id] = reason
    return reasons


def _recheck(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    now: datetime,
    result: PlanResult,
    *,
    staged: bool = False,
    candidates: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> None:
    enabled = {t.name: t for t in config.triggers if t.enabled}
    configured = {t.name for t in config.triggers}
    planned = planned_by_trigger(con)
    for name, rows in planned.items():
        if name not in enabled:
            reason = (
                "trigger switched off"
                if name in configured
                else "trigger removed from the configuration"
            )
            ids = [r.message_id for r in rows]
            result.add(name, "cancelled", len(ledger.cancel(con, ids, reason, now)))

    for trigger in enabled.values():
        by_reason: dict[tuple[str, str], list[int]] = {}
        known = (candidates or {}).get(trigger.name)
        for message_id, (row, decision) in decide(
            con, trigger, planned.get(trigger.name, []), now, staged=staged, candidates=known
        ).items():
            if decision.action in ("cancel", "skip"):
                by_reason.setdefault((decision.action, decision.reason), []).append(message_id)
                continue
            if decision.action == "move":
                ledger.reschedule(con, message_id, decision.due_at, decision.expires_at, now)
                result.add(trigger.name, "rescheduled")
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


# --- just before sending --------------------------------------------------------------------------


class Preparer:
    """Dispatch's ``prepare``: re-check a due message and give its address and template context.

    Decisions are computed per trigger, for all its planned messages at once, the first time one of
    them is asked about (one query per trigger, not one per message). Dispatch runs after a
    re-check in the same database session, so a message is never due here under a stale time.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        config: ClinicConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.con = con
        self.triggers = {t.name: t for t in config.triggers if t.enabled}
        self.configured = {t.name for t in config.triggers}
        self.clinic = clinic_details(config)
        self.clock = clock
        self._decisions: dict[int, Decision] = {}
        self._loaded: set[str] = set()

    def __call__(self, row: LedgerRow) -> Ready | Skip:
        if row.source_kind != "trigger":
            return Skip(f"no planner prepares {row.source_kind} messages here", cancel=False)
        trigger = self.triggers.get(row.source_name)
        if trigger is None:
            gone = (
                "switched off"
                if row.source_name in self.configured
                else "removed from the configuration"
            )
            return Skip(f"trigger {gone}", cancel=True)
        if row.message_id not in self._decisions and trigger.name not in self._loaded:
            self._load(trigger)
        decision = self._decisions.get(row.message_id)
        if decision is None:
            return Skip("not planned by this trigger any more", cancel=True)
        now = self.clock()
        if decision.action == "cancel":
            return Skip(decision.reason or "occasion gone", cancel=True)
        if decision.action == "skip":
            return Skip(decision.reason or "not sendable")
        c = decision.candidate
        if decision.due_at is not None and decision.due_at > now:
            return Skip("appointment moved after planning; not sent early")
        if c["due_problem"]:
            return Skip(c["due_problem"])
        return Ready(to=c["address"], context=template_context(self.clinic, c))

    def _load(self, trigger: Trigger) -> None:
        self._loaded.add(trigger.name)
        planned = planned_by_trigger(self.con).get(trigger.name, [])
        for message_id, (_, decision) in decide(self.con, trigger, planned, self.clock()).items():
            self._decisions[message_id] = decision


def template_context(clinic: dict[str, str], c: dict[str, Any]) -> dict[str, Any]:
    """Template variables for one candidate row (patient, appointment, clinic)."""
    return build_context(
        clinic=clinic,
        first_name=c["first_name"] or c["preferred_first_name"] or "",
        preferred_first_name=c["preferred_first_name"],
        last_name=c["last_name"],
        appointment_starts_at=c["starts_at"],
        time_zone=c["business_time_zone"] if c["starts_at"] is not None else None,
        appointment_type=c["appointment_type_name"],
        practitioner=c["practitioner_name"],
        business=c["business_name"],
    )


# --- preview ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRow:
    """One message the trigger would send (or skip): for the operator's terminal only."""

    due_at: datetime
    patient_id: int
    appointment_id: int | None
    decision: str  # 'send' | 'skip: <reason>' | ledger status
    candidate: dict[str, Any] = field(repr=False)


def preview(
    con: duckdb.DuckDBPyConnection,
    trigger: Trigger,
    now: datetime,
    days: float,
) -> tuple[datetime, list[PreviewRow]]:
    """Who would get what and when over the next ``days``: reads only, writes nothing.

    A trigger that is not live (or is live under another definition) is previewed as if it went
    live now. Returns (the go-live used, rows by send moment).
    """
    live_since = went_live(con, trigger) or now
    sql, params = candidate_sql(trigger, "window")
    bind_window(params, trigger, now=now, went_live=live_since, until=now + timedelta(days=days))
    cur = run(
        con,
        f"SELECT c.*, m.status AS ledger_status, m.status_reason AS ledger_reason FROM ({sql}) c "
        "LEFT JOIN state.messages m ON m.send_key = c.send_key ORDER BY c.due_at, c.patient_id",
        params,
    )
    names = [d[0] for d in cur.description]
    rows = []
    for values in cur.fetchall():
        c = dict(zip(names, values, strict=True))
        if c["ledger_status"] and c["ledger_status"] != "planned":
            decision = f"already {c['ledger_status']}" + (
                f" ({c['ledger_reason']})" if c["ledger_reason"] else ""
            )
        elif c["audience_problem"]:
            decision = f"skip: {c['audience_problem']}"
        elif c["due_problem"]:
            decision = f"skip if still so when due: {c['due_problem']}"
        else:
            decision = "send"
        rows.append(PreviewRow(c["due_at"], c["patient_id"], c["appointment_id"], decision, c))
    return live_since, rows


def unknown_references(con: duckdb.DuckDBPyConnection, trigger: Trigger) -> list[str]:
    """Filter values that match nothing in the synced data: usually a typo in clinic.yaml."""
    problems = []
    sections = [("filters", trigger.filters), ("exclude", trigger.exclude)]
    for section, values in sections:
        for kind in APPOINTMENT_REFERENCES:
            refs = getattr(values, kind, ())
            if not refs:
                continue
            id_col, name_col = APPOINTMENT_REFERENCES[kind]
            table_names = {
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT lower(trim({name_col})) FROM marts.appointments "
                    f"WHERE {name_col} IS NOT NULL"
                ).fetchall()
            }
            table_ids = (
                {
                    r[0]
                    for r in con.execute(
                        f"SELECT DISTINCT {id_col} FROM marts.appointments"
                    ).fetchall()
                }
                if id_col
                else set()
            )
            for ref in refs:
                known = (
                    ref in table_ids if isinstance(ref, int) else ref.strip().lower() in table_names
                )
                if not known:
                    problems.append(
                        f"{section}.{kind}: {ref!r} matches no appointment in the synced data"
                    )
    return problems


# --- rendering one trigger's message for one patient (operator's `relay render`) -----------------


def context_for_patient(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    trigger: Trigger,
    patient_id: int,
    now: datetime,
    appointment_id: int | None = None,
) -> tuple[str | None, dict[str, Any], str]:
    """(address, template context, which appointment was used) for rendering a sample message.

    For an appointment trigger the appointment is the one given, else the patient's next one the
    trigger's filters accept, else their latest such one. Nothing is written.
    """
    patient = con.execute(
        "SELECT first_name, preferred_first_name, last_name, email, mobile_e164 "
        "FROM marts.patients WHERE patient_id = ?",
        [patient_id],
    ).fetchone()
    if patient is None:
        raise UserFacingError(
            f"No patient {patient_id} in the synced data of clinic '{config.clinic}'. "
            "Check the id (Cliniko's patient id) or run a sync."
        )
    first, preferred, last, email, mobile = patient
    candidate: dict[str, Any] = {
        "first_name": first, "preferred_first_name": preferred, "last_name": last,
        "starts_at": None, "business_time_zone": None, "appointment_type_name": None,
        "practitioner_name": None, "business_name": None,
    }  # fmt: skip
    used = "no appointment (a patient trigger)"
    if trigger.is_appointment_event:
        params: dict[str, Any] = {"patient": patient_id, "now": now, "appointment": appointment_id}
        chosen = (
            "a.appointment_id = $appointment"
            if appointment_id is not None
            else _and(appointment_filters(trigger, "a", params))
        )
        row = run(
            con,
            f"""SELECT a.appointment_id, a.starts_at, a.business_time_zone,
                       a.appointment_type_name, a.practitioner_name, a.business_name
                FROM marts.appointments a
                WHERE a.patient_id = $patient AND {chosen}
                ORDER BY a.starts_at < $now, abs(epoch(a.starts_at) - epoch($now::TIMESTAMPTZ))
                LIMIT 1""",
            params,
        ).fetchone()
        if row is None and appointment_id is not None:
            raise UserFacingError(
                f"Patient {patient_id} has no appointment {appointment_id} in the synced data."
            )
        if row is None:
            raise UserFacingError(
                f"Patient {patient_id} has no appointment that trigger '{trigger.name}' applies "
                "to. Pass --appointment ID to render it for one of their appointments."
            )
        keys = ("starts_at", "business_time_zone", "appointment_type_name", "practitioner_name",
                "business_name")  # fmt: skip
        candidate.update(zip(keys, row[1:], strict=True))
        used = f"appointment {row[0]} ({row[3]})"
    address = email if trigger.channel == "email" else mobile
    return address, template_context(clinic_details(config), candidate), used
