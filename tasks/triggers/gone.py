"""Why a planned trigger message's occasion is gone: the reasons that cancel it at once.

The re-check (tasks/triggers/plan.py) finds planned messages its trigger's query no longer
returns; these are reasons that cannot change back by themselves (the appointment was cancelled,
the invoice deleted, the medical alert removed), unlike the audience's (tasks/triggers/audience.py),
which make a message wait. Two can (:func:`waits`): an invoice no longer paid may be paid
again, and an appointment edited out of the trigger's filters (type, practitioner, business)
may be edited back; the message waits for that, as for an audience reason, to the end of its
grace window.
"""

from __future__ import annotations

import duckdb

from tasks.messages.ledger import LedgerRow
from tasks.triggers import patient_records
from tasks.triggers.definition import Trigger

# An appointment that still stands but no longer matches the trigger's filters: the front desk
# changed its type, practitioner or business (or the patient's details changed). An edit can be
# undone: a type changed by mistake and put back before the reminder's moment must not cost the
# patient the reminder, so the message waits for the match to come back (``waits``), to the end
# of its grace window, and is skipped with this reason after; while it does not match, it never
# goes.
FILTERS_CHANGED = "no longer matches the trigger's filters (appointment or patient changed)"


def why_gone(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, rows: list[LedgerRow]
) -> dict[int, str]:
    """In words, why a planned message's occasion no longer matches its trigger."""
    if not trigger.is_appointment_event:  # archived is an audience problem: it waits
        found = {
            r[0]
            for r in con.execute(
                "SELECT patient_id FROM marts.patients WHERE patient_id IN "
                "(SELECT unnest(?::BIGINT[]))",
                [[r.patient_id for r in rows]],
            ).fetchall()
        }
        reasons = {
            r.message_id: "patient deleted in Cliniko" for r in rows if r.patient_id not in found
        }
        rest = [r for r in rows if r.message_id not in reasons]
        if trigger.is_record_event and rest:  # an alert removed, an invoice deleted or unpaid
            return reasons | patient_records.why_gone(con, trigger, rest)
        return reasons | {
            r.message_id: "no longer matches the trigger's filters (patient changed)" for r in rest
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
            reason = FILTERS_CHANGED
        reasons[row.message_id] = reason
    return reasons


def waits(reason: str) -> bool:
    """Whether a reason ``why_gone`` gives can change back by itself (the message waits)."""
    return reason.startswith(patient_records.NOT_PAID) or reason == FILTERS_CHANGED


# Rows a dispatch took for a patient record: the message may have reached the person.
_REACHED = ("sending", "sent", "unknown")


def reached_before_merge(
    con: duckdb.DuckDBPyConnection, trigger: Trigger, keys: list[tuple[str, int]]
) -> set[str]:
    """Of these new send keys (with their patient), those whose occasion was messaged under a
    patient record merged since into the key's patient. Send keys name the patient record; a
    merge moves the appointment (or invoice...) to the surviving record, whose key is new, so
    without this a reminder sent minutes before the front desk merged two records went again,
    within its grace window, to the same person. Not planned then: one occasion, one message,
    whichever record it was sent under."""
    prefix = f"trigger:{trigger.name}:"
    if not keys:
        return set()
    occasions = [key.removeprefix(f"{prefix}{patient_id}:") for key, patient_id in keys]
    return {
        r[0]
        for r in con.execute(
            """
            SELECT DISTINCT k.send_key
            FROM (SELECT unnest($keys::VARCHAR[]) AS send_key,
                         unnest($patients::BIGINT[]) AS patient_id,
                         unnest($occasions::VARCHAR[]) AS occasion) k
            JOIN marts.patients p ON p.merged_into_patient_id = k.patient_id
            JOIN state.messages m
              ON m.send_key = $prefix || p.patient_id || ':' || k.occasion
             AND list_contains($reached, m.status)
            """,
            {
                "keys": [k for k, _ in keys],
                "patients": [p for _, p in keys],
                "occasions": occasions,
                "prefix": prefix,
                "reached": list(_REACHED),
            },
        ).fetchall()
    }
