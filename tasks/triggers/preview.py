"""The operator's read-only views of a trigger: its calendar (``relay preview trigger``), its SQL
(``relay preview trigger NAME --sql``), filter values that match nothing (a typo in clinic.yaml),
and one patient's message (``relay render``). Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb

from tasks.config import ClinicConfig
from tasks.errors import UserFacingError
from tasks.messages import waiting
from tasks.messages.prepare import clinic_details
from tasks.triggers import patient_records
from tasks.triggers.definition import Trigger
from tasks.triggers.plan import PLAN_AHEAD, went_live
from tasks.triggers.prepare import template_context
from tasks.triggers.query import (
    APPOINTMENT_REFERENCES,
    PARAM,
    and_all,
    appointment_filters,
    bind_window,
    candidate_query,
    fires_on,
    records,
    run,
)


def trigger_named(config: ClinicConfig, name: str) -> Trigger:
    """The clinic's trigger of this name, or an error listing the ones it has."""
    trigger = next((t for t in config.triggers if t.name == name), None)
    if trigger is None:
        known = ", ".join(t.name for t in config.triggers) or "none"
        raise UserFacingError(
            f"No trigger '{name}' in {config.source}.{_not_a_trigger(config, name)} "
            f"Triggers: {known}."
        )
    return trigger


def _not_a_trigger(config: ClinicConfig, name: str) -> str:
    """What a journey or campaign of that name is, and where its audience is seen."""
    journey = next((j for j in config.journeys if j.name == name), None)
    campaign = next((c for c in config.campaigns if c.name == name), None)
    segment = campaign.segment if campaign else journey.entry.enters_segment if journey else None
    kind = "a campaign" if campaign else "a journey" if journey else None
    if kind is None:
        return ""
    seen = f" `relay preview segment {segment}` shows who it reaches." if segment else ""
    return f" '{name}' is {kind}, not a trigger: this previews triggers.{seen}"


# What the parameters bound when the query runs stand for (query.bind_window, names.bind_recorded).
AT_RUN = {
    "now": "the moment the query runs",
    "went_live": "when the trigger went live (one not live yet: as if switched on now)",
    "until": f"the end of the window: a tick plans {PLAN_AHEAD.days} days ahead, the preview --days",
    "hint_lo": "the window's start, moved onto the column the event fires on",
    "hint_hi": "the window's end, moved onto the column the event fires on",
}


def _at_run(name: str) -> str:
    if name in AT_RUN:
        return AT_RUN[name]
    if name.endswith("_us"):
        base = name.removesuffix("_us")
        if base in AT_RUN:  # a moment the query's own text never names: say what it is
            return f"{AT_RUN[base]}, in microseconds since the epoch"
        return f"${base} in microseconds (since the epoch, for a moment)"
    if name.endswith("_recorded"):
        return f"the Cliniko ids ${name.removesuffix('_recorded')}_names matched at go-live"
    if name.endswith("_names_now"):
        base = name.removesuffix("_names_now")
        return (
            f"the names of ${base}_names, matched as they are now (an exclusion's all; a "
            "filter's, those not recorded at go-live)"
        )
    return "bound when the query runs"


def trigger_sql(config: ClinicConfig, trigger_name: str) -> str:
    """The query ``relay preview trigger NAME`` runs, as text to read (``--sql``): a header saying
    what each configuration parameter is bound to and what the rest stand for (the window's,
    bound when it runs: ``AT_RUN``), then the SQL with its ``$parameters``."""
    trigger = trigger_named(config, trigger_name)
    sql, params = candidate_query(trigger, "window")
    bound = "\n".join(
        f"--   ${name} = {value if isinstance(value, timedelta) else repr(value)}"
        for name, value in params.items()
        if value is not None
    )
    later = "\n".join(
        f"--   ${name}: {_at_run(name)}"
        for name in sorted(set(PARAM.findall(sql)))
        if params.get(name) is None
    )
    return (
        f"-- Trigger '{trigger.name}' of clinic '{config.clinic}' ({config.source}): "
        "the messages it would send, as `relay preview trigger` lists them.\n"
        f"-- Parameters bound from the configuration:\n{bound}\n"
        f"-- Parameters bound when it runs:\n{later}\n{sql}"
    )


@dataclass(frozen=True)
class PreviewRow:
    """One message the trigger would send (or skip): for the operator's terminal only."""

    due_at: datetime
    patient_id: int
    appointment_id: int | None
    # 'send' | 'waiting: <reason that can change>' | 'skip if still so when due: <reason>' |
    # 'already <status> (<reason>)'
    decision: str
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
    sql, params = candidate_query(trigger, "window")
    bind_window(params, trigger, now=now, went_live=live_since, until=now + timedelta(days=days))
    rows = []
    for c in records(
        con,
        f"SELECT c.*, m.ledger_state, m.ledger_reason FROM ({sql}) c LEFT JOIN ("
        f"  SELECT send_key, {waiting.STATE} AS ledger_state, {waiting.WHY} AS ledger_reason"
        "   FROM state.messages) m ON m.send_key = c.send_key ORDER BY c.due_at, c.patient_id",
        params,
    ):
        if c["ledger_state"] and c["ledger_state"] not in ("planned", "waiting"):
            decision = f"already {c['ledger_state']}" + (
                f" ({c['ledger_reason']})" if c["ledger_reason"] else ""
            )
        elif c["audience_problem"]:  # can change: goes if it clears in time, else skipped
            decision = f"waiting: {c['audience_problem']}"
        elif c["ledger_state"] == "waiting":  # held by the gate (frequency cap, quiet hours)
            decision = f"waiting: {c['ledger_reason']}"
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
    # Alert names and custom fields: the words the tick summary and relay clinics warn with.
    return problems + [what for what, _kind in patient_records.unmatched(con, trigger)]


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
    goes_at = now
    if trigger.is_appointment_event:
        params: dict[str, Any] = {"patient": patient_id, "now": now, "appointment": appointment_id}
        chosen = (
            "a.appointment_id = $appointment"
            if appointment_id is not None
            else and_all(appointment_filters(trigger, "a", params))
        )
        row = run(
            con,
            f"""SELECT a.appointment_id, a.starts_at, a.business_time_zone,
                       a.appointment_type_name, a.practitioner_name, a.business_name,
                       {fires_on(trigger)[0]} AS moment
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
        candidate.update(zip(keys, row[1:6], strict=True))
        used = f"appointment {row[0]} ({row[3]})"
        goes_at = _goes_at(trigger, row[6], now)
    address = email if trigger.channel == "email" else mobile
    return address, template_context(clinic_details(config), candidate, goes_at), used


def _goes_at(trigger: Trigger, moment: datetime | None, now: datetime) -> datetime:
    """When the trigger's message about this appointment would go: its timing from the moment
    it fires on (tasks.triggers.query.fires_on), or now if that has passed. The message is
    rendered as of then, so ``appointment.day`` reads as the patient will read it ("tomorrow" in
    a reminder that goes the day before, not the date as seen today)."""
    if moment is None:
        return now
    due = moment - trigger.offset if trigger.direction == "before" else moment + trigger.offset
    return max(now, due)
