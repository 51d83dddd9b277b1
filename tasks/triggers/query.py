"""The candidate query: one trigger's messages as one SQL statement that reads top to bottom.

``candidate_query(trigger, scope)`` returns the query's text and the parameters it binds. Its
shape is a dbt model's: import CTEs (what it reads besides the marts), logical CTEs (the
occasions the trigger fires on -> when each message is due -> until when it may go -> which of
them this scope wants -> position and count of kept appointments where the trigger asks), and a
final select with one row per send key and, in words, why the patient cannot get it
(``audience_problem``) or why it should not go when due (``due_problem``). Print any trigger's
with ``relay preview trigger NAME --sql`` (:func:`tasks.triggers.preview.trigger_sql`).

What a trigger's definition changes is which fixed fragment of this module fills a slot of the
template below. Every value from the configuration is a bound parameter (``$name``), and column
names come from the whitelists here, so a filter value is data, never SQL.

Time arithmetic is in epoch microseconds (``*_us``): TIMESTAMPTZ +/- INTERVAL goes through ICU's
calendar for every row, sixty times slower on two million appointments. :func:`run` derives
``$x_us`` from ``$x``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb

from tasks.triggers import patient_records
from tasks.triggers.audience import PATIENT_ADDRESS, audience_problem, list_join
from tasks.triggers.definition import Trigger
from tasks.triggers.names import (  # noqa: F401 (APPOINTMENT_REFERENCES: plan.py, preview.py)
    APPOINTMENT_REFERENCES,
    _bind_refs,
    _match,
    appointment_filters,
    bind_recorded,
    exclusions,
)

APPOINTMENTS = "marts.appointments"

# scope 'window': messages due in [went_live, until] and still within grace at ``now`` (preview);
# scope 'planned': exactly the occasions of the trigger's planned ledger rows (re-checks);
# scope 'tick': both at once, flagged by ``in_window`` (the tick's one query per trigger).
Scope = Literal["window", "planned", "tick"]

QUERY = """\
-- A trigger's messages, one row per send key: when each is due, until when it may go, to whom,
-- and why not.
WITH

-- import CTEs ------------------------------------------------------------------------------

planned AS (
    -- the occasions this trigger already has planned messages for
    SELECT {occasion} FROM state.messages
    WHERE status = 'planned' AND source_kind = 'trigger' AND source_name = $trigger
),

suppressed AS (
    -- addresses suppressed on the trigger's channel for its purpose
    SELECT address, min(reason) AS reason
    FROM state.current_suppressions
    WHERE channel = $channel AND list_contains($suppression_scopes, scope)
    GROUP BY address
),

-- logical CTEs ------------------------------------------------------------------------------

occasions AS (
    -- what the trigger fires on, with the moment its timing counts from
{occasions}
),

timed AS (
    -- when each message is due
    SELECT *, {due} AS due_us
    FROM occasions
    WHERE {timing_filter}
),

expiring AS (
    -- until when it may still go (its grace window)
    SELECT *, {expires} AS expires_us
    FROM timed
    WHERE due_us IS NOT NULL
),

windowed AS (
    -- the messages this scope asks about; in_window: due between go-live and the horizon
    SELECT *, {in_window_column} AS in_window
    FROM expiring
    WHERE {scope_filter}
){extra_ctes}

-- final select ------------------------------------------------------------------------------

SELECT
    'trigger:' || $trigger || ':' || w.patient_id || ':' || CASE w.appointment_kind
        WHEN 'group' THEN 'attendance:' || w.appointment_id
        WHEN 'individual' THEN 'appointment:' || w.appointment_id
        WHEN 'invoice' THEN 'invoice:' || w.occasion_id
        WHEN 'medical_alert' THEN 'medical_alert'
        ELSE 'patient' END AS send_key,
    w.patient_id, w.appointment_id, w.appointment_kind, w.in_window,
    make_timestamp(w.due_us)::TIMESTAMPTZ AS due_at,
    make_timestamp(w.expires_us)::TIMESTAMPTZ AS expires_at,
    CASE
{audience_problem}
    END AS audience_problem,
    {due_problem} AS due_problem,
    p.first_name, p.preferred_first_name, p.last_name,
    {send_address} AS address,
    w.starts_at, w.business_time_zone, w.appointment_type_name, w.practitioner_name,
    w.business_name
FROM windowed w
JOIN marts.patients p USING (patient_id){joins}
LEFT JOIN suppressed ON suppressed.address = {address}{list_join}
WHERE {conditions}
"""

APPOINTMENT_OCCASIONS = """\
    SELECT a.appointment_kind, a.appointment_id, a.patient_id, NULL::BIGINT AS occasion_id,
           a.appointment_type_name,
           a.business_name, a.business_time_zone, a.practitioner_name, a.starts_at,
           a.created_at, a.cancelled_at, a.status,
           epoch_us({moment}) AS moment_us,
           epoch_us(a.created_at) AS created_us,
           epoch_us(a.updated_at) AS updated_us,
           epoch_us(a.starts_at) AS starts_us
    FROM {appointments} a
    WHERE {reach}
      AND ({event})
      AND {filters}"""

PATIENT_OCCASIONS = """\
    SELECT NULL::VARCHAR AS appointment_kind, NULL::BIGINT AS appointment_id, a.patient_id,
           NULL::BIGINT AS occasion_id, NULL::VARCHAR AS appointment_type_name, NULL::VARCHAR AS business_name,
           NULL::VARCHAR AS business_time_zone, NULL::VARCHAR AS practitioner_name,
           NULL::TIMESTAMPTZ AS starts_at, a.created_at, NULL::TIMESTAMPTZ AS cancelled_at,
           NULL::VARCHAR AS status,
           epoch_us(a.created_at) AS moment_us,
           epoch_us(a.created_at) AS created_us,
           NULL::BIGINT AS updated_us,
           NULL::BIGINT AS starts_us
    FROM marts.patients a
    WHERE {reach}"""

POSITIONS = """,

positions AS (
    -- which of the patient's kept appointments (of those the filters accept) this one is
    SELECT w.appointment_kind, w.appointment_id, 1 + count(x.appointment_id) AS position
    FROM windowed w
    LEFT JOIN (SELECT * FROM marts.appointments
               WHERE patient_id IN (SELECT patient_id FROM windowed)) x
      ON x.patient_id = w.patient_id AND x.is_kept
     AND {filters}
     AND (x.starts_at < w.starts_at OR (x.starts_at = w.starts_at
          AND (x.appointment_kind, x.appointment_id) < (w.appointment_kind, w.appointment_id)))
    GROUP BY ALL
)"""

COUNTS = """,

counts AS (
    -- how many kept appointments (of the counted types) the patient has
    SELECT w.patient_id, count(x.appointment_id) AS kept_appointments
    FROM (SELECT DISTINCT patient_id FROM windowed) w
    LEFT JOIN (SELECT * FROM marts.appointments
               WHERE patient_id IN (SELECT patient_id FROM windowed)) x
      ON x.patient_id = w.patient_id AND x.is_kept AND {types}
    GROUP BY ALL
)"""

FUTURE_APPOINTMENT = """\
WHEN EXISTS (
            SELECT 1 FROM marts.appointments f
            WHERE f.patient_id = w.patient_id AND f.is_care AND f.starts_at > $now
              AND f.patient_id IN (SELECT patient_id FROM windowed)
              AND f.appointment_id IS DISTINCT FROM w.appointment_id AND {exclusions})
            THEN 'a future appointment is booked'"""

REBOOKED = """\
WHEN EXISTS (
            SELECT 1 FROM marts.appointments f
            WHERE f.patient_id = w.patient_id AND f.is_care
              AND f.patient_id IN (SELECT patient_id FROM windowed)
              AND f.created_at > coalesce(w.cancelled_at, w.starts_at) AND {exclusions})
            THEN 'rebooked since cancelling'"""

IN_WINDOW = "due_us >= $went_live_us AND due_us <= $until_us AND expires_us > $now_us"


def candidate_query(
    trigger: Trigger, scope: Scope, *, appointments: str = APPOINTMENTS
) -> tuple[str, dict[str, Any]]:
    """The SQL listing the trigger's messages in ``scope``, and the parameters it binds.

    ``appointments``: where the occasions are read from: the mart, or in a tick the slice of it
    that :func:`tasks.triggers.plan.stage` copied out (scope 'tick' reads only that slice). Columns: send_key,
    patient_id, appointment_id, due_at, expires_at, in_window, audience_problem, due_problem,
    and what templates and previews show.
    """
    params: dict[str, Any] = {
        "trigger": trigger.name,
        "offset": trigger.offset,
        "grace": trigger.grace_window,
        "now": None,
    }
    if scope != "planned":
        params.update(went_live=None, until=None)
    occasion = "appointment_id" if trigger.is_appointment_event else "patient_id"
    planned_occasion = occasion
    if trigger.is_record_event:  # an invoice: its id is in the send key
        occasion = patient_records.occasion_column(trigger)
        planned_occasion = patient_records.PLANNED_OCCASION[
            patient_records.SOURCES[trigger.event][0]
        ]
    in_planned = f"{occasion} IN (SELECT {occasion} FROM planned)"
    due, timing_filter, expires = _timing(trigger, scope, in_planned)
    conditions, extra_ctes, joins = _position_and_count(trigger, params)
    conditions += _within("p.age", "age", trigger.filters.age, params)
    conditions += patient_records.patient_filters(trigger, "w", params)
    address = PATIENT_ADDRESS[trigger.channel]
    sql = QUERY.format(
        occasion=planned_occasion,
        occasions=_occasions(trigger, scope, appointments, params, f"a.{in_planned}"),
        due=due, timing_filter=timing_filter, expires=expires,
        in_window_column={"planned": "false"}.get(scope, IN_WINDOW),
        scope_filter={"window": IN_WINDOW, "planned": "true",
                      "tick": f"({IN_WINDOW}) OR {in_planned}"}[scope],
        extra_ctes=extra_ctes,
        audience_problem=audience_problem(trigger, params),
        due_problem=_due_problem(trigger, params),
        send_address="p.email" if trigger.channel == "email" else "p.mobile_e164",
        joins="".join(f"\n{j}" for j in joins),
        address=address,
        list_join=list_join(trigger, address),
        conditions=and_all(conditions),
    )  # fmt: skip
    return sql, params


# --- the occasions and their timing -----------------------------------------------------------


def _occasions(
    trigger: Trigger, scope: Scope, appointments: str, params: dict[str, Any], in_planned: str
) -> str:
    if trigger.is_record_event:
        return patient_records.occasions(trigger, scope, params, in_planned)
    if not trigger.is_appointment_event:
        created = "a.created_at BETWEEN $hint_lo AND $hint_hi"
        reach = {"window": created, "planned": in_planned, "tick": f"({created} OR {in_planned})"}
        return PATIENT_OCCASIONS.format(reach=reach[scope])
    reach = {"window": reach_window(trigger), "planned": in_planned, "tick": "true"}
    moment, condition = fires_on(trigger)
    return APPOINTMENT_OCCASIONS.format(
        moment=moment,
        appointments=appointments,
        reach=reach[scope],
        event=condition,
        filters=and_all(appointment_filters(trigger, "a", params)),
    )


def reach_window(trigger: Trigger, suffix: str = "") -> str:
    """A necessary condition on plain columns of the appointments (alias a) for a message to be
    in the window that :func:`bind_window` binds: the scan of two million appointments skips most
    of them before anything is computed; the exact window is applied after timing."""
    if trigger.direction == "before":
        return f"a.starts_at > $now{suffix} AND a.starts_at <= $hint_hi{suffix}"
    return f"{fires_on(trigger)[0]} BETWEEN $hint_lo{suffix} AND $hint_hi{suffix}"


# What each appointment event fires on (alias a): (the moment its timing counts from, what must be
# true of the appointment). first_ and nth_appointment read as before_ or after_appointment.
EVENTS = {
    "appointment_booked": ("a.created_at", "a.status NOT IN ('cancelled', 'deleted', 'archived')"),
    "cancelled": ("a.cancelled_at", "a.status = 'cancelled'"),
    "did_not_arrive": ("coalesce(a.ends_at, a.starts_at)", "a.status = 'did_not_arrive'"),
    "before_appointment": ("a.starts_at", "a.is_kept"),
    # attended: arrived, or past and not marked (one still ahead stays a candidate until due)
    "after_appointment": ("coalesce(a.ends_at, a.starts_at)", "a.is_kept"),
}

# Attended, for a trigger that requires arrival marks: arrived, or not marked yet while its
# message is not due (an appointment still ahead stays a candidate until then).
ARRIVED = (
    "a.status = 'arrived' OR (a.status IN ('upcoming', 'unmarked') "
    "AND epoch_us(coalesce(a.ends_at, a.starts_at)) + $offset_us > $now_us)"
)


def fires_on(trigger: Trigger) -> tuple[str, str]:
    """(the moment its timing counts from, what must be true of the appointment), alias a."""
    event: str = trigger.event
    if event in ("first_appointment", "nth_appointment"):
        event = f"{trigger.direction}_appointment"
    moment, condition = EVENTS[event]
    return moment, ARRIVED if trigger.require_arrived else condition


def _timing(trigger: Trigger, scope: Scope, in_planned: str) -> tuple[str, str, str]:
    """(when due, which occasions are timed at all, when it expires), in epoch microseconds.

    A 'before' message is due at its planned moment (``moment - offset``), except for a late
    booking: booked after that moment, it is due at once (``last_minute: send``) or never
    (``skip``). With no planned message yet, an appointment last edited after that moment counts
    as booked when edited (the mart's only sign of a move into the window: a move is a late
    booking, tasks/triggers/plan.py ``late_move`` for one already planned); only if that moment
    is at or after go-live, so that switching a trigger on never reminds for history, and only
    for an edit before the appointment starts (a booking is). A message already planned keeps
    the timing it was planned with (an edit does not re-date it)."""
    if trigger.direction == "after":
        return "moment_us + $offset_us", "true", "due_us + $grace_us"
    expires = "least(due_us + $grace_us, starts_us)"  # never after the appointment started
    planned_moment = "moment_us - $offset_us"
    booked = "created_us"
    if scope != "planned":  # 'planned' reads only occasions already planned
        booked = (
            f"CASE WHEN updated_us > {planned_moment} AND updated_us < starts_us "
            f"AND {planned_moment} >= $went_live_us AND NOT coalesce({in_planned}, false) "
            "THEN greatest(created_us, updated_us) ELSE created_us END"
        )
    if trigger.last_minute == "skip":  # booked after the planned moment: never
        return planned_moment, f"coalesce({booked} <= {planned_moment}, true)", expires
    # booked after the planned moment: at once
    return f"greatest(coalesce({booked}, {planned_moment}), {planned_moment})", "true", expires


def bind_window(
    params: dict[str, Any], trigger: Trigger, *, now: datetime, went_live: datetime, until: datetime
) -> None:
    """The window of a 'window' or 'tick' query: send moments from go-live (and no further back
    than the grace window allows) up to ``until``; and the same as bounds on the event's own
    column (``$hint_lo``, ``$hint_hi``)."""
    params.update(now=now, went_live=went_live, until=until)
    if trigger.direction == "before":
        params["hint_hi"] = until + trigger.offset
    else:
        params["hint_lo"] = max(went_live, now - trigger.grace_window) - trigger.offset
        params["hint_hi"] = until - trigger.offset


# --- filters --------------------------------------------------------------------------------


def and_all(predicates: Iterable[str]) -> str:
    predicates = list(predicates)
    return " AND ".join(f"({p})" for p in predicates) if predicates else "true"


def _position_and_count(
    trigger: Trigger, params: dict[str, Any]
) -> tuple[list[str], str, list[str]]:
    """(conditions, CTEs, joins) for 'the nth appointment' and 'appointment_count'."""
    conditions, ctes, joins = [], "", []
    if trigger.position is not None:
        params["position"] = trigger.position
        ctes += POSITIONS.format(filters=and_all(appointment_filters(trigger, "x", params)))
        joins.append("JOIN positions USING (appointment_kind, appointment_id)")
        conditions.append("positions.position = $position")
    count = trigger.filters.appointment_count
    if count is not None:
        types = "NOT x.is_tag"  # a tag counts only where count.types names its type
        if count.types:
            _bind_refs(params, "count_types", count.types)
            types = _match("x", "appointment_types", "count_types")
        ctes += COUNTS.format(types=types)
        joins.append("JOIN counts USING (patient_id)")
        conditions += _within("counts.kept_appointments", "count", count, params)
    return conditions, ctes, joins


def _within(column: str, param: str, limits: Any, params: dict[str, Any]) -> list[str]:
    """``column`` within a filter's min and max (each optional), bound as $param_min, _max."""
    conditions = []
    for end, op in (("min", ">="), ("max", "<=")):
        value = None if limits is None else getattr(limits, end)
        if value is not None:
            params[f"{param}_{end}"] = value
            conditions.append(f"{column} {op} ${param}_{end}")
    return conditions


# --- the moment of sending (the audience: tasks/triggers/audience.py) ---------------------------------------------------


def _due_problem(trigger: Trigger, params: dict[str, Any]) -> str:
    """Conditions about the moment of sending (judged when the message is due)."""
    cases = []
    if trigger.filters.no_future_appointment:
        other = and_all(exclusions(trigger, "f", params))
        cases.append(FUTURE_APPOINTMENT.format(exclusions=other))
    if trigger.filters.not_rebooked_since_cancelling:
        other = and_all(exclusions(trigger, "f", params))
        cases.append(REBOOKED.format(exclusions=other))
    if not cases:
        return "NULL::VARCHAR"
    return "CASE\n" + "\n".join(f"        {c}" for c in cases) + "\n    END"


# --- running a query --------------------------------------------------------------------------

PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _micros(value: datetime | timedelta) -> int:
    return (value if isinstance(value, timedelta) else value - _EPOCH) // _MICRO


def run(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> duckdb.DuckDBPyConnection:
    """Execute with exactly the parameters the SQL names (DuckDB refuses extras). ``$x_us`` is
    ``$x`` (a datetime or timedelta) in microseconds (since the epoch)."""
    used = set(PARAM.findall(sql))
    params = dict(params)
    bind_recorded(con, used, params)  # a live trigger's names: the ids recorded at go-live
    for name in used:
        base = params.get(name.removesuffix("_us"))
        if name.endswith("_us") and name not in params and base is not None:
            params[name] = _micros(base)
    missing = used - set(params)
    if missing:  # a programming error, not a user's
        raise KeyError(f"planning SQL needs parameters {sorted(missing)}")
    return con.execute(sql, {k: v for k, v in params.items() if k in used})


def records(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """:func:`run`, each row as a dict by column name."""
    cur = run(con, sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
