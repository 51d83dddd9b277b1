"""The patient's real contact details and attendance (issue 11 §3), on hand-made clinics: raw
rows written the way the sync writes them -> the real models -> the planner as the tick runs it.

- The SMS number is the first entry that is a valid mobile: Mobile-typed entries first, then any
  other entry, each as Cliniko lists them; for reminders and the SMS marketing list alike.
- A class attendee not (yet) marked arrived before the class starts is upcoming, not a miss.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.messages.prepare import Ready
from tasks.triggers.prepare import Preparer

# The planning tests' hand-made clinic (raw rows -> the real models -> the planner).
_spec = importlib.util.spec_from_file_location(
    "plan_clinic", Path(__file__).parents[1] / "triggers" / "test_plan.py"
)
plan_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_clinic)

NOW, MIN, HOUR, DAY = plan_clinic.NOW, timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
REMINDER = plan_clinic.REMINDER
MISSED = dict(event="did_not_arrive", timing="1 hour after", channel="sms",
              template="reminder-24h", purpose="transactional")  # fmt: skip
PILATES_CLASS = 30


class Clinic(plan_clinic.Clinic):
    """The planning clinic, plus classes (group appointments) and their attendees."""

    def __init__(self):
        super().__init__()
        self._write("appointment_types", PILATES_CLASS,
                    {"id": str(PILATES_CLASS), "name": "Pilates Class", "category": "Pilates"})  # fmt: skip

    def group_class(self, id_: int, starts, minutes: int = 60, updated=None) -> int:
        link = plan_clinic._link
        self._write("group_appointments", id_, {
            "id": str(id_), "created_at": plan_clinic._ts(starts - 20 * DAY),
            "updated_at": plan_clinic._ts(updated or starts - 20 * DAY),
            "starts_at": plan_clinic._ts(starts), "ends_at": plan_clinic._ts(starts + minutes * MIN),
            "max_attendees": 8, "appointment_type": link("appointment_types", PILATES_CLASS),
            "business": link("businesses", plan_clinic.MAIN),
            "practitioner": link("practitioners", plan_clinic.SAM),
        })  # fmt: skip
        return id_

    def attendee(self, id_: int, patient: int, group: int, *, arrived: bool | None) -> int:
        self._write("attendees", id_, {
            "id": str(id_), "created_at": plan_clinic._ts(NOW - 10 * DAY), "arrived": arrived,
            "patient": plan_clinic._link("patients", patient),
            "booking": plan_clinic._link("bookings", group),
        })  # fmt: skip
        return id_

    def status(self, kind: str, appointment_id: int) -> str:
        return self.con.execute(
            "SELECT status FROM marts.appointments WHERE appointment_kind = ? "
            "AND appointment_id = ?",
            [kind, appointment_id],
        ).fetchone()[0]

    def phones(self, patient: int, *entries: tuple[str, str]) -> None:
        self.update_patient(patient, patient_phone_numbers=[
            {"phone_type": kind, "number": number} for kind, number in entries
        ])  # fmt: skip

    def sms_list(self) -> dict[int, str]:
        return dict(
            self.con.execute(
                "SELECT patient_id, mobile_e164 FROM marts.sms_marketing_list "
                "WHERE status = 'subscribed'"
            ).fetchall()
        )


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


# --- a class not yet held --------------------------------------------------------------------


def test_a_class_attendee_not_yet_marked_arrived_gets_the_reminder(clinic):
    clinic.trigger("reminder", **REMINDER)
    plan_clinic.live(clinic)
    clinic.patient(1)
    clinic.group_class(500, NOW + 30 * HOUR)
    clinic.attendee(900, 1, 500, arrived=False)  # what Cliniko sends until the class is marked
    clinic.plan(NOW)
    assert clinic.status("group", 900) == "upcoming"
    row = clinic.one("reminder")
    assert (row.patient_id, row.status, row.due_at) == (1, "planned", NOW + 6 * HOUR)


def test_a_class_moved_into_the_reminder_window_is_a_late_booking_for_its_attendees(clinic):
    """Moving a class edits the class, not its attendees: the class's edit is the move."""
    clinic.trigger("reminder", **{**REMINDER, "last_minute": "send"})
    plan_clinic.live(clinic)
    clinic.patient(1)
    clinic.group_class(500, NOW + 7 * DAY)
    clinic.attendee(900, 1, 500, arrived=False)
    clinic.plan(NOW)
    assert clinic.messages("reminder") == [], "a week away: beyond the planning horizon"
    moved_at = NOW + HOUR
    clinic.group_class(500, moved_at + 4 * HOUR, updated=moved_at - 5 * MIN)
    clinic.plan(moved_at)
    row = clinic.one("reminder")
    assert (row.patient_id, row.status, row.due_at) == (1, "planned", moved_at - 5 * MIN)


def test_no_missed_you_message_is_planned_for_a_class_that_has_not_happened(clinic):
    clinic.trigger("missed", **MISSED)
    plan_clinic.live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.group_class(500, NOW + 30 * HOUR)
    clinic.attendee(900, 1, 500, arrived=False)
    clinic.attendee(901, 2, 500, arrived=True)
    clinic.plan(NOW)
    assert clinic.messages("missed") == []
    # The class starts and ends; patient 1 is still not marked arrived: now that is a miss.
    clinic.plan(NOW + 31 * HOUR)
    assert clinic.status("group", 900) == "did_not_arrive"
    row = clinic.one("missed")
    assert (row.patient_id, row.status, row.due_at) == (1, "planned", NOW + 32 * HOUR)


def test_an_attendee_of_a_past_class_not_marked_arrived_is_still_a_miss(clinic):
    clinic.patient(1)
    clinic.group_class(500, NOW - 3 * HOUR)
    clinic.attendee(900, 1, 500, arrived=False)
    clinic.build(NOW)
    assert clinic.status("group", 900) == "did_not_arrive"


# --- every phone entry is read ---------------------------------------------------------------

# (entries as Cliniko lists them, the SMS number)
PHONE_CASES = {
    "a landline typed Mobile, then the mobile": (
        [("Mobile", "03 9000 1111"), ("Mobile", "0412 345 678")], "+61412345678"),
    "a mobile typed Home": ([("Home", "0412 345 678")], "+61412345678"),
    "a Mobile entry before an earlier listed other entry": (
        [("Home", "0499 000 111"), ("Mobile", "0412 345 678")], "+61412345678"),
    "an invalid Mobile entry, a landline, then a mobile typed Work": (
        [("Mobile", "12345"), ("Home", "03 9000 1111"), ("Work", "0412 345 678")],
        "+61412345678"),
    "no entry is a mobile": ([("Mobile", "03 9000 1111"), ("Home", "03 9000 2222")], None),
    "a mobile typed with a note": ([("Mobile", "0412 345 678 (mum)")], "+61412345678"),
}  # fmt: skip


@pytest.mark.parametrize("entries, sms_number", PHONE_CASES.values(), ids=PHONE_CASES)
def test_the_reminder_goes_to_the_first_entry_that_is_a_valid_mobile(clinic, entries, sms_number):
    clinic.trigger("reminder", **REMINDER)
    plan_clinic.live(clinic)
    clinic.patient(1)
    clinic.phones(1, *entries)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    row = clinic.one("reminder")
    if sms_number is None:
        # waits for a mobile to be added before it is due (issue 11: skipped only after grace)
        assert (row.status, row.waiting_reason) == ("planned", "no valid mobile number on file")
        return
    assert row.status == "planned"
    decision = Preparer(clinic.con, clinic.config, clock=lambda: NOW + 6 * HOUR)(row)
    assert isinstance(decision, Ready) and decision.to == sms_number


def test_the_sms_marketing_list_reads_the_same_number_as_reminders(clinic):
    clinic.patient(1, sms_opt_in=True)
    clinic.phones(1, ("Mobile", "03 9000 1111"), ("Mobile", "0412 345 678"))
    clinic.patient(2, sms_opt_in=True)
    clinic.phones(2, ("Home", "0499 000 111"))
    clinic.build(NOW)
    assert clinic.sms_list() == {1: "+61412345678", 2: "+61499000111"}


def test_a_mobile_added_as_a_second_entry_reaches_the_list_on_the_next_build(clinic):
    clinic.patient(1, sms_opt_in=True)
    clinic.phones(1, ("Mobile", "03 9000 1111"))
    clinic.build(NOW)
    assert clinic.sms_list() == {}
    clinic.phones(1, ("Mobile", "03 9000 1111"), ("Mobile", "0412 345 678"))
    clinic.build(NOW + 5 * MIN)
    assert clinic.sms_list() == {1: "+61412345678"}
