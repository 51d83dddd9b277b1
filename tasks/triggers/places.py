"""One message per patient per class: a trigger's messages on several places of one patient in
one group appointment.

A class place is an attendee, and a trigger's send key names the attendee (tasks/triggers/query.py),
so a patient holding two live places in one class (booked twice; or two records of one person,
each booked in, then merged: Cliniko moves the duplicate's appointments to the surviving record)
had two keys, and got the class's reminder twice. The marts keep every place as Cliniko has it
(``marts.appointments``: one row per attendee); this is where the planner reads several places
as one occasion. The re-check (tasks/triggers/plan.py ``decide``, at every tick and at send time)
lets one of them go: the one already sent, or being sent, if any; otherwise the place with the
smallest id among those the trigger still fires on. The others *wait* with :data:`ANOTHER_PLACE`
(tasks/messages/waiting.py): if the place that goes is cancelled before its message went, the next
one is released within its grace window; if its message went, the others end skipped.
"""

from __future__ import annotations

from typing import Any

import duckdb

from tasks.messages.ledger import LedgerRow
from tasks.triggers.definition import Trigger

ANOTHER_PLACE = "the patient's other place in this class has this message"

# Rows a dispatch took: the message may have reached the person (tasks/triggers/gone.py's too).
_REACHED = ("sending", "sent", "unknown")


def held_by_another_place(
    con: duckdb.DuckDBPyConnection,
    trigger: Trigger,
    planned: list[LedgerRow],
    candidates: dict[str, dict[str, Any]],
) -> set[int]:
    """Of these planned messages of the trigger, those on a class place whose patient's other
    place in the same class has the message (``candidates``: the trigger's query now, by send
    key; a place it no longer returns, cancelled or deleted, holds nothing)."""
    rows = [r for r in planned if ":attendance:" in r.send_key and r.appointment_id is not None]
    if not rows:
        return set()
    places = con.execute(
        """
        WITH mine AS (
            SELECT DISTINCT a.patient_id, a.group_appointment_id
            FROM marts.appointments a
            WHERE a.appointment_kind = 'group'
              AND a.appointment_id IN (SELECT unnest($ids::BIGINT[]))
        )
        SELECT a.patient_id, a.group_appointment_id, a.appointment_id,
               m.message_id, m.status, m.send_key
        FROM marts.appointments a
        JOIN mine USING (patient_id, group_appointment_id)
        JOIN state.messages m
          ON m.appointment_id = a.appointment_id AND m.source_kind = 'trigger'
         AND m.source_name = $trigger AND m.send_key LIKE '%:attendance:%'
        WHERE a.appointment_kind = 'group'
        """,
        {"ids": [r.appointment_id for r in rows], "trigger": trigger.name},
    ).fetchall()
    classes: dict[tuple[int, int], list[tuple[int, int, str, str]]] = {}
    for patient_id, class_id, place_id, message_id, status, send_key in places:
        classes.setdefault((patient_id, class_id), []).append(
            (place_id, message_id, status, send_key)
        )
    waiting: set[int] = set()
    for messages in classes.values():
        if any(status in _REACHED for _, _, status, _ in messages):
            goes = None  # one went (or may have): none of the planned ones goes
        else:
            live = [(p, m) for p, m, status, key in messages
                    if status == "planned" and key in candidates]  # fmt: skip
            goes = min(live)[1] if live else None
        waiting.update(m for _, m, status, _ in messages if status == "planned" and m != goes)
    return waiting
