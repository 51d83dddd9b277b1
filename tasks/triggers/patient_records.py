"""What a trigger reads of a patient besides appointments: medical alerts, custom fields, invoices.

Seed 000: "Medical alerts are the most common way to tag patients in Cliniko for targeting
purposes"; clinics also keep insurers, referrers and programs in patient custom fields, and
Peptalkr triggers on invoices. The staging models read them as Cliniko sends them
(``staging.medical_alerts``, ``staging.patient_custom_fields``, ``staging.invoices``); this
module gives the candidate query (tasks/triggers/query.py) its fragments for them:

- **Events** (:func:`occasions`). ``medical_alert_added``: the patient's earliest current alert
  among those named in ``filters.medical_alerts``; its moment is that alert's ``created_at``.
  One message per patient and trigger (send key ``...:medical_alert``): a patient who already
  carried one of the alerts when the trigger went live gets nothing, even once that alert is
  removed and added again or another named alert added (``staging.medical_alert_history`` keeps
  the removed alerts and when they went); an alert removed and added again (a new alert in
  Cliniko) sends nothing more, as re-entering a journey does not; a message planned for an alert
  removed before it goes is cancelled and not planned again when the alert comes back. A patient
  whose alert was removed before go-live is newly tagged when it is added again.
  ``invoice_created`` (moment: ``created_at``) and ``invoice_paid`` (moment: ``paid_at``, when a
  status-20 invoice closed): one message per invoice (send key ``...:invoice:<id>``), so an
  invoice paid, reopened or credited and paid again is thanked once. For all three, only a
  moment at or after go-live messages, whatever the trigger's timing (an alert or invoice from
  before go-live is history).
- **Patient filters** (:func:`patient_filters`): ``medical_alerts`` (has any, OR within) and
  ``custom_fields`` conditions (each holds, AND across; OR within a condition's values), and the
  same under ``exclude`` (has none, none holds). Names and values compare trimmed and case
  ignored, bound as parameters like every other filter value.
- **Names that match nothing** (:func:`warnings`): alert names and custom fields are not
  Cliniko rows with ids that a rename keeps (each patient's alert is its own row, and new ones
  come every day), so they are matched as written each time, never recorded at go-live. A name
  or field no current row carries (a typo, or nobody tagged yet) is a warning in every tick's
  summary and alert, in ``relay clinics`` and ``relay preview trigger``; it does not hold the
  trigger, since an exclusion that matches nobody today (a "Do not contact" alert cleared from
  everyone) must not stop reminders.

Alert names can be clinical: what leaves this module for logs, summaries and artifacts names
only clinic.yaml's own words and counts, never a patient's alerts, fields or invoices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb

from tasks.triggers.definition import CustomField, Trigger
from tasks.warehouse import relation_exists

MEDICAL_ALERTS = "staging.medical_alerts"
ALERT_HISTORY = "staging.medical_alert_history"  # with the removed ones, and when
CUSTOM_FIELDS = "staging.patient_custom_fields"
INVOICES = "staging.invoices"

# The occasion columns every event gives (tasks/triggers/query.py, APPOINTMENT_OCCASIONS).
RECORD_OCCASIONS = """\
    SELECT '{kind}' AS appointment_kind, NULL::BIGINT AS appointment_id, a.patient_id,
           a.occasion_id,
           NULL::VARCHAR AS appointment_type_name, NULL::VARCHAR AS business_name,
           NULL::VARCHAR AS business_time_zone, NULL::VARCHAR AS practitioner_name,
           NULL::TIMESTAMPTZ AS starts_at, a.created_at, NULL::TIMESTAMPTZ AS cancelled_at,
           NULL::VARCHAR AS status,
           epoch_us(a.moment) AS moment_us,
           epoch_us(a.created_at) AS created_us,
           NULL::BIGINT AS updated_us,
           NULL::BIGINT AS starts_us
    FROM ({source}) a
    WHERE {reach}"""

# Per event: (occasion kind, the rows it fires on with their moment).
SOURCES = {
    "medical_alert_added": (
        "medical_alert",
        f"SELECT patient_id, NULL::BIGINT AS occasion_id, min(created_at) AS created_at, "
        f"min(created_at) AS moment FROM {MEDICAL_ALERTS} "
        "WHERE list_contains($event_medical_alerts::VARCHAR[], name_normalised) GROUP BY patient_id",
    ),
    "invoice_created": (
        "invoice",
        f"SELECT patient_id, invoice_id AS occasion_id, created_at, created_at AS moment "
        f"FROM {INVOICES} WHERE patient_id IS NOT NULL",
    ),
    "invoice_paid": (
        "invoice",
        f"SELECT patient_id, invoice_id AS occasion_id, created_at, paid_at AS moment "
        f"FROM {INVOICES} WHERE patient_id IS NOT NULL AND is_paid",
    ),
}

# medical_alert_added: the patient carried a named alert when the trigger went live that has been
# removed since (a current one from before go-live already puts the moment before it).
CARRIED_AT_GO_LIVE = (
    f"EXISTS (SELECT 1 FROM {ALERT_HISTORY} h WHERE h.patient_id = a.patient_id "
    "AND list_contains($event_medical_alerts::VARCHAR[], h.name_normalised) "
    "AND h.created_at < $went_live AND h.removed_at >= $went_live)"
)

# What the ledger's planned rows say the occasion was (the invoice id is the send key's last part).
PLANNED_OCCASION = {
    "medical_alert": "patient_id",
    "invoice": "try_cast(split_part(send_key, ':', 5) AS BIGINT) AS occasion_id",
}


def occasion_column(trigger: Trigger) -> str:
    """The column of the candidates that says which occasion a planned message is about."""
    return "occasion_id" if SOURCES[trigger.event][0] == "invoice" else "patient_id"


def occasions(trigger: Trigger, scope: str, params: dict[str, Any], in_planned: str) -> str:
    """The occasions CTE's body for a record event. Window: moments from go-live (never before,
    whatever the timing) within the hints of :func:`tasks.triggers.query.bind_window`."""
    kind, source = SOURCES[trigger.event]
    window = "a.moment >= $went_live AND a.moment BETWEEN $hint_lo AND $hint_hi"
    if trigger.event == "medical_alert_added":
        params["event_medical_alerts"] = _normalised(trigger.filters.medical_alerts)
        window += f" AND NOT {CARRIED_AT_GO_LIVE}"
    reach = {"window": window, "planned": in_planned, "tick": f"(({window}) OR {in_planned})"}
    return RECORD_OCCASIONS.format(kind=kind, source=source, reach=reach[scope])


# --- patient filters (alias: a relation with patient_id) ------------------------------------------

HAS_ALERT = (
    "EXISTS (SELECT 1 FROM " + MEDICAL_ALERTS + " ma WHERE ma.patient_id = {alias}.patient_id "
    "AND list_contains(${param}::VARCHAR[], ma.name_normalised))"
)
HAS_FIELD = (
    "EXISTS (SELECT 1 FROM " + CUSTOM_FIELDS + " cf WHERE cf.patient_id = {alias}.patient_id "
    "{section}AND cf.field_normalised = ${param}_field "
    "AND list_contains(${param}_values::VARCHAR[], cf.value_normalised))"
)


def _normalised(values: Iterable[str]) -> list[str]:
    return sorted({v.strip().lower() for v in values})


def _has_field(alias: str, param: str, condition: CustomField, params: dict[str, Any]) -> str:
    section = ""
    if condition.section:
        params[f"{param}_section"] = condition.section.strip().lower()
        section = f"AND cf.section_normalised = ${param}_section "
    params[f"{param}_field"] = condition.field.strip().lower()
    params[f"{param}_values"] = _normalised(condition.values)
    return HAS_FIELD.format(alias=alias, param=param, section=section)


def patient_filters(trigger: Trigger, alias: str, params: dict[str, Any]) -> list[str]:
    """Predicates on the patient (``alias``.patient_id) for the trigger's medical-alert and
    custom-field filters and exclusions."""
    predicates = []
    for section, values, negate in (("include", trigger.filters, ""),
                                    ("exclude", trigger.exclude, "NOT ")):  # fmt: skip
        if values.medical_alerts:
            params[f"{section}_medical_alerts"] = _normalised(values.medical_alerts)
            predicates.append(
                negate + HAS_ALERT.format(alias=alias, param=f"{section}_medical_alerts")
            )
        for i, condition in enumerate(values.custom_fields):
            predicates.append(negate + _has_field(alias, f"{section}_field_{i}", condition, params))
    return predicates


# --- why a planned message's alert or invoice is gone ----------------------------------------------

# The one reason here that can change back by itself: an invoice reopened or its payment
# reversed may be paid again. Its thank-you waits for that, to the end of its grace window
# (tasks/triggers/gone.py ``waits``); the other reasons cancel.
NOT_PAID = "invoice no longer paid"


def why_gone(con: duckdb.DuckDBPyConnection, trigger: Trigger, rows: list) -> dict[int, str]:
    """In words, why planned messages (ledger rows) of a record event no longer match."""
    generic = "no longer matches the trigger's filters (patient changed)"
    if trigger.event == "medical_alert_added":
        carrying = {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT patient_id FROM {MEDICAL_ALERTS} WHERE list_contains(?::VARCHAR[], "
                "name_normalised) AND patient_id IN (SELECT unnest(?::BIGINT[]))",
                [_normalised(trigger.filters.medical_alerts), [r.patient_id for r in rows]],
            ).fetchall()
        }
        return {
            r.message_id: generic
            if r.patient_id in carrying
            else "medical alert removed in Cliniko"
            for r in rows
        }
    ids = {r.message_id: int(r.send_key.rsplit(":", 1)[1]) for r in rows}
    found = {
        invoice_id: (patient_id, is_paid, status)
        for invoice_id, patient_id, is_paid, status in con.execute(
            f"SELECT invoice_id, patient_id, is_paid, status_description FROM {INVOICES} "
            "WHERE invoice_id IN (SELECT unnest(?::BIGINT[]))",
            [list(ids.values())],
        ).fetchall()
    }
    reasons = {}
    for row in rows:
        patient_id, is_paid, status = found.get(ids[row.message_id], (None, None, None))
        if patient_id is None:
            reasons[row.message_id] = "invoice deleted in Cliniko"
        elif patient_id != row.patient_id:
            reasons[row.message_id] = "invoice now belongs to another patient record"
        elif trigger.event == "invoice_paid" and not is_paid:
            reasons[row.message_id] = f"{NOT_PAID} (now {status or 'not paid'})"
        else:
            reasons[row.message_id] = generic
    return reasons


# --- names that match nothing --------------------------------------------------------------------


def warnings(
    con: duckdb.DuckDBPyConnection, triggers: Iterable[Trigger], *, enabled_only: bool = True
) -> list[str]:
    """One line per alert name or custom-field condition in clinic.yaml that no patient's current
    row carries (words of clinic.yaml only). Nothing before the models are first built. Switched
    off triggers only with ``enabled_only=False`` (``relay clinics``), marked so: as for names of
    appointment rows (names.unmatched), ticks do not warn of a trigger that is off."""
    found = []
    carried: dict[str, Any] = {}
    for trigger in triggers:
        if enabled_only and not trigger.enabled:
            continue
        who = f"trigger '{trigger.name}'" + ("" if trigger.enabled else " (disabled)")
        goes_on = "the trigger goes on" if trigger.enabled else "checked again when switched on"
        for what, kind in unmatched(con, trigger, carried):
            check = "the spelling" if kind == "alert" else "the section, field and value"
            found.append(f"{who}: {what} (check {check} in clinic.yaml; {goes_on})")
    return found


def unmatched(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, carried: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """The trigger's alert names and custom-field conditions no patient's current row carries:
    (what, in clinic.yaml's words; 'alert' or 'field'). ``carried`` caches what the rows hold
    across triggers. :func:`warnings` words them for ticks and ``relay clinics``; ``relay
    preview trigger`` shows them as they are (tasks/triggers/preview.py)."""
    carried = {} if carried is None else carried
    found = []
    for section, values in (("filters", trigger.filters), ("exclude", trigger.exclude)):
        if values.medical_alerts and relation_exists(con, MEDICAL_ALERTS):
            if "alerts" not in carried:
                carried["alerts"] = {
                    r[0]
                    for r in con.execute(
                        f"SELECT DISTINCT name_normalised FROM {MEDICAL_ALERTS}"
                    ).fetchall()
                }
            found += [
                (f"{section}.medical_alerts '{name.strip()}' is on no patient in Cliniko now",
                 "alert")
                for name in values.medical_alerts
                if name.strip().lower() not in carried["alerts"]
            ]  # fmt: skip
        for condition in values.custom_fields:
            if not relation_exists(con, CUSTOM_FIELDS):
                continue
            if "fields" not in carried:
                carried["fields"] = con.execute(
                    f"SELECT DISTINCT section_normalised, field_normalised, value_normalised "
                    f"FROM {CUSTOM_FIELDS}"
                ).fetchall()
            if not _matches(condition, carried["fields"]):
                found.append((
                    f"{section}.custom_fields {condition.describe()} matches no patient's "
                    "custom field in Cliniko now",
                    "field",
                ))  # fmt: skip
    return found


def _matches(condition: CustomField, fields: list[tuple[str, str, str]]) -> bool:
    section = condition.section.strip().lower() if condition.section else None
    values = set(_normalised(condition.values))
    return any(
        (section is None or s == section) and f == condition.field.strip().lower() and v in values
        for s, f, v in fields
    )
