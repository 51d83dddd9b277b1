"""One reminder per patient per class, however many places the patient holds in it
(tasks/triggers/places.py): a class place is a Cliniko attendee, and nothing in Cliniko's API keeps
one patient from holding two live ones in a class (two records of one person both booked in,
then merged: Cliniko moves the duplicate's appointments to the surviving record).

On test_plan's hand-made clinic, as the tick runs it (build, plan, re-check, dispatch).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.unit.triggers.test_plan import (
    DAY,
    DUE,
    HOUR,
    MAIN,
    MIN,
    NOW,
    REMINDER,
    SAM,
    STANDARD,
    Clinic,
    _link,
    _merge,
    _ts,
    live,
    tick_and_send,
)

CLASS = 500
STARTS = NOW + 30 * HOUR  # its reminder is due at DUE (24 hours before), 2 hours' grace


@pytest.fixture
def clinic():
    c = Clinic()
    c.trigger("reminder", **REMINDER)
    live(c)
    c.patient(1)
    c._write("group_appointments", CLASS, {
        "id": str(CLASS), "created_at": _ts(NOW - 20 * DAY), "updated_at": _ts(NOW - 20 * DAY),
        "starts_at": _ts(STARTS), "ends_at": _ts(STARTS + 45 * MIN), "max_attendees": 8,
        "archived_at": None, "deleted_at": None, "appointment_type": _link("appointment_types", STANDARD),
        "business": _link("businesses", MAIN), "practitioner": _link("practitioners", SAM),
    })  # fmt: skip
    yield c
    c.con.close()


def _place(clinic: Clinic, id_: int, patient: int, *, cancelled: datetime | None = None) -> None:
    """Patient ``patient``'s place ``id_`` in the class (an attendee), booked ten days ago."""
    booked = NOW - 10 * DAY
    clinic._write("attendees", id_, {
        "id": str(id_), "created_at": _ts(booked), "updated_at": _ts(cancelled or booked),
        "arrived": False, "cancelled_at": _ts(cancelled), "cancellation_reason": 50 if cancelled else None,
        "archived_at": None, "deleted_at": None, "booking_ip_address": None,
        "patient": _link("patients", patient), "booking": _link("bookings", CLASS),
    })  # fmt: skip


def _run(clinic: Clinic, outbox, ticks, events=None) -> int:
    """Ticks at these moments (each after what ``events`` does at that moment); SMS sent."""
    sent = 0
    for at in ticks:
        for event in (events or {}).get(at, ()):
            event()
        sent += tick_and_send(clinic, at, outbox)["sent"]
    return sent


TICKS = (NOW, DUE - HOUR, DUE + MIN, DUE + 30 * MIN, DUE + 3 * HOUR)


def test_a_patient_with_two_places_in_a_class_gets_its_reminder_once(clinic, tmp_path):
    _place(clinic, 601, 1)
    _place(clinic, 602, 1)
    assert _run(clinic, tmp_path, TICKS) == 1
    rows = {r.appointment_id: (r.status, r.status_reason) for r in clinic.messages()}
    assert rows[601] == ("sent", None)
    assert rows[602] == ("skipped", "the patient's other place in this class has this message")


@pytest.mark.parametrize("cancelled", [601, 602])
def test_a_place_cancelled_before_the_reminder_leaves_the_others_reminder(
    clinic, tmp_path, cancelled
):
    _place(clinic, 601, 1)
    _place(clinic, 602, 1)
    at = DUE - HOUR + 5 * MIN
    cancel = {DUE - HOUR: [lambda: _place(clinic, cancelled, 1, cancelled=at)]}
    assert _run(clinic, tmp_path, TICKS, cancel) == 1
    sent = [r.appointment_id for r in clinic.messages() if r.status == "sent"]
    assert sent == [1203 - cancelled]


def test_the_place_whose_reminder_went_cancelled_after_it_sends_no_second(clinic, tmp_path):
    _place(clinic, 601, 1)
    _place(clinic, 602, 1)
    cancel = {DUE + 30 * MIN: [lambda: _place(clinic, 601, 1, cancelled=DUE + 20 * MIN)]}
    assert _run(clinic, tmp_path, TICKS, cancel) == 1


def test_two_records_each_booked_in_then_merged_get_one_reminder(clinic, tmp_path):
    clinic.patient(2)  # the same person booked in twice under two records
    _place(clinic, 601, 1)
    _place(clinic, 602, 2)
    merge = {DUE - HOUR: [lambda: _merge(clinic, 2, into=1, at=DUE - 2 * HOUR)]}
    assert _run(clinic, tmp_path, TICKS, merge) == 1


def test_a_place_cancelled_and_booked_again_gets_its_reminder(clinic, tmp_path):
    _place(clinic, 601, 1, cancelled=NOW - 5 * DAY)
    _place(clinic, 602, 1)
    assert _run(clinic, tmp_path, TICKS) == 1
