"""marts.appointments numbers each appointment on a narrow copy of the rows and joins the numbers
back by the appointment's key, (appointment_kind, appointment_id): an individual appointment and
a class attendee may share an id, and each must keep its own numbers (one row each)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.models.test_lists import NOW, Clinic, _link, _ts


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


def test_an_appointment_and_a_class_attendee_with_the_same_id_keep_their_own_numbers(clinic):
    clinic.patient(1)
    clinic.appointment(9, 1, NOW + timedelta(days=3))  # individual appointment 9
    clinic._write(
        "group_appointments",
        70,
        {
            "id": "70",
            "starts_at": _ts(NOW + timedelta(days=2)),
            "ends_at": _ts(NOW + timedelta(days=2, hours=1)),
            "appointment_type": _link("appointment_types", 1),
            "business": _link("businesses", 1),
            "practitioner": _link("practitioners", 7),
        },
    )
    # attendee 9 of class 70: the same id as the individual appointment
    clinic._write(
        "attendees",
        9,
        {"id": "9", "patient": _link("patients", 1), "booking": _link("bookings", 70)},
    )
    clinic.build()
    rows = clinic.con.execute(
        "SELECT appointment_kind, appointment_id, sequence_number, type_sequence_number "
        "FROM marts.appointments ORDER BY sequence_number"
    ).fetchall()
    assert rows == [("group", 9, 1, 1), ("individual", 9, 2, 2)]
