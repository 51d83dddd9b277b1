"""A skip about time is reopened when the appointment moves so that its moment is ahead again
(tasks/triggers/reopen.py); every other skip, and every row once attempted, stays as it is.

On test_plan's hand-made clinic, as the tick runs it (build, plan, re-check, dispatch).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tasks.messages import ledger
from tasks.triggers import plan as planning
from tasks.warehouse import transaction
from tests.unit.triggers.test_plan import DAY, HOUR, MIN, NOW, REMINDER, Clinic, live, tick_and_send

MOBILE = [{"phone_type": "Mobile", "number": "0412 345 678"}]


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


def _move(clinic: Clinic, id_: int, starts: datetime, at: datetime) -> None:
    """The front desk moves the appointment to ``starts``, at ``at`` (Cliniko's updated_at)."""
    clinic.update_appointment(id_, starts_at=starts, ends_at=starts + 30 * MIN, updated_at=at)


def _reopened(clinic: Clinic, message_id: int) -> str | None:
    row = clinic.con.execute(
        "SELECT reopened FROM state.messages WHERE message_id = ?", [message_id]
    ).fetchone()
    return row[0]


def _row(clinic: Clinic, appointment_id: int) -> ledger.LedgerRow:
    (row,) = [r for r in clinic.messages() if r.appointment_id == appointment_id]
    return row


def test_a_last_minute_skip_moved_back_out_is_reminded_like_a_new_booking(clinic, tmp_path):
    clinic.trigger("reminder", **{**REMINDER, "last_minute": "skip"})
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 3 * DAY, created=NOW - 10 * DAY)
    tick_and_send(clinic, NOW, tmp_path)
    _move(clinic, 10, NOW + 5 * HOUR, at=NOW + HOUR - MIN)
    tick_and_send(clinic, NOW + HOUR, tmp_path)
    skipped = clinic.one()
    assert (skipped.status, skipped.status_reason) == (
        "skipped",
        "appointment moved to less than 24 hours before it (last_minute: skip)",
    )

    _move(clinic, 10, NOW + 7 * DAY, at=NOW + 2 * HOUR)  # the front desk moves it to next week
    clinic.appointment(11, 2, NOW + 7 * DAY, created=NOW + 2 * HOUR)  # a new booking beside it
    for day in range(5):  # daily ticks until its reminder is within the planning horizon
        tick_and_send(clinic, NOW + 2 * HOUR + day * DAY, tmp_path)
    row, new = _row(clinic, 10), _row(clinic, 11)
    assert row.message_id == skipped.message_id, "the same row: one send key per occasion"
    assert (row.status, row.due_at, row.expires_at) == ("planned", new.due_at, new.expires_at)
    assert (row.due_at, row.expires_at) == (NOW + 6 * DAY, NOW + 6 * DAY + 2 * HOUR)
    assert row.status_reason.startswith("reopened 2026-11-26 11:00 UTC, the appointment moved")
    assert row.status_reason.endswith("(appointment moved to less than 24 hours before it "
                                      "(last_minute: skip))")  # fmt: skip

    counts = tick_and_send(clinic, NOW + 6 * DAY + 30 * MIN, tmp_path)
    assert counts["sent"] == 2
    assert [r.status for r in clinic.messages()] == ["sent", "sent"]
    assert "was skipped 2026-11-22 10:00 UTC" in _reopened(clinic, row.message_id), "kept after"


def test_a_wait_that_ran_out_goes_when_the_appointment_moves_and_the_mobile_is_added(
    clinic, tmp_path
):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, mobile=None)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    for hours in (0, 6, 7, 9):
        tick_and_send(clinic, NOW + hours * HOUR, tmp_path)
    skipped = clinic.one()
    assert (skipped.status, skipped.status_reason) == ("skipped", "no valid mobile number on file")

    _move(clinic, 10, NOW + 5 * DAY, at=NOW + 10 * HOUR)
    clinic.update_patient(1, patient_phone_numbers=MOBILE)
    tick_and_send(clinic, NOW + 10 * HOUR, tmp_path)
    assert clinic.one().status == "skipped", "beyond the planning horizon: as a new booking"
    tick_and_send(clinic, NOW + 3 * DAY, tmp_path)
    row = clinic.one()
    assert (row.status, row.waiting_reason, row.due_at) == ("planned", None, NOW + 4 * DAY)
    assert row.status_reason.endswith("(no valid mobile number on file)")
    counts = tick_and_send(clinic, NOW + 4 * DAY + 30 * MIN, tmp_path)
    assert (clinic.one().status, counts["sent"]) == ("sent", 1)
    assert clinic.one().message_id == skipped.message_id


def test_a_wait_that_ran_out_stays_skipped_while_its_reason_holds(clinic, tmp_path):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, mobile=None)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    for hours in (0, 9):
        tick_and_send(clinic, NOW + hours * HOUR, tmp_path)
    _move(clinic, 10, NOW + 3 * DAY, at=NOW + 10 * HOUR)  # moved, but still no mobile
    tick_and_send(clinic, NOW + DAY, tmp_path)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("skipped", "no valid mobile number on file")
    clinic.update_patient(1, patient_phone_numbers=MOBILE)  # cleared before the new moment
    tick_and_send(clinic, NOW + DAY + 12 * HOUR, tmp_path)
    assert (clinic.one().status, clinic.one().due_at) == ("planned", NOW + 2 * DAY)
    counts = tick_and_send(clinic, NOW + 2 * DAY + 30 * MIN, tmp_path)
    assert (clinic.one().status, counts["sent"]) == ("sent", 1)


def test_a_skip_past_grace_is_not_reopened_by_an_edit_that_moves_nothing(clinic, tmp_path):
    clinic.trigger("reminder", **{**REMINDER, "last_minute": "send"})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    clinic.plan(NOW + 9 * HOUR)  # no tick while it was due: skipped past its grace window
    assert (clinic.one().status, clinic.one().status_reason) == ("skipped", "past its grace window")
    clinic.update_appointment(10, updated_at=NOW + 10 * HOUR)  # a note, after its moment
    tick_and_send(clinic, NOW + 10 * HOUR + MIN, tmp_path)
    assert clinic.one().status == "skipped", "an edit is no move: not sent late"
    _move(clinic, 10, NOW + 3 * DAY, at=NOW + 11 * HOUR)  # a real move: reopened
    tick_and_send(clinic, NOW + DAY + HOUR, tmp_path)
    assert (clinic.one().status, clinic.one().due_at) == ("planned", NOW + 2 * DAY)


def _skip_due_reminder(clinic: Clinic, reason: str) -> ledger.LedgerRow:
    """A reminder planned, then skipped when due for ``reason`` (as dispatch or the re-check
    would record it)."""
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    with transaction(clinic.con):
        ledger.skip(clinic.con, [clinic.one().message_id], reason, NOW + 6 * HOUR)
    return clinic.one()


@pytest.mark.parametrize(
    "reason",
    [
        "a future appointment is booked",
        "not rendered: 'first_name' is undefined",
        "address suppressed (transactional)",
        "the re-check before sending failed (KeyError)",
        "no valid mobile number on file",  # never waited for: not a wait that ran out
    ],
)
def test_a_skip_for_a_reason_not_about_time_stays_final_when_the_appointment_moves(
    clinic, tmp_path, reason
):
    skipped = _skip_due_reminder(clinic, reason)
    _move(clinic, 10, NOW + 3 * DAY, at=NOW + 7 * HOUR)
    for day in (1, 2):
        result = tick_and_send(clinic, NOW + day * DAY, tmp_path)
        assert result["sent"] == 0
    row = clinic.one()
    assert (row.status, row.status_reason, row.due_at) == ("skipped", reason, skipped.due_at)
    assert _reopened(clinic, row.message_id) is None


def test_a_cancelled_reminder_stays_cancelled_when_the_appointment_is_restored_and_moved(
    clinic, tmp_path
):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    clinic.update_appointment(10, cancelled_at=NOW + MIN)
    clinic.plan(NOW + 5 * MIN)
    clinic.update_appointment(10, cancelled_at=None)
    _move(clinic, 10, NOW + 3 * DAY, at=NOW + HOUR)
    tick_and_send(clinic, NOW + 2 * DAY, tmp_path)
    assert (clinic.one().status, clinic.one().status_reason) == (
        "cancelled",
        "appointment cancelled",
    )


def test_a_row_ever_attempted_is_never_reopened(clinic, tmp_path):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    message_id = clinic.one().message_id
    due = NOW + 6 * HOUR
    with transaction(clinic.con):  # claimed; the provider certainly did not take it: retry later
        ledger.transition(clinic.con, [message_id], "planned", "sending", due, count_attempt=True,
                          values={"claim_id": ["run-1"]})  # fmt: skip
        ledger.transition(clinic.con, [message_id], "sending", "planned", due,
                          values={"next_attempt_at": [due + DAY]})  # fmt: skip
    clinic.plan(due + 3 * HOUR)
    assert (clinic.one().status, clinic.one().status_reason) == ("skipped", "past its grace window")
    _move(clinic, 10, NOW + 3 * DAY, at=due + 4 * HOUR)
    for day in (1, 2):
        tick_and_send(clinic, NOW + day * DAY, tmp_path)
    row = clinic.one()
    assert (row.status, row.attempts) == ("skipped", 1)
    assert _reopened(clinic, message_id) is None


def test_the_ledger_plans_a_skip_again_only_if_it_was_never_claimed(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    for patient in (1, 2):
        clinic.patient(patient)
        clinic.appointment(10 + patient, patient, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    never, claimed = (r.message_id for r in clinic.messages())
    at = NOW + HOUR
    with transaction(clinic.con):
        ledger.transition(clinic.con, [claimed], "planned", "sending", at, count_attempt=True)
        ledger.transition(clinic.con, [claimed], "sending", "planned", at)
        ledger.skip(clinic.con, [never, claimed], "past its grace window", at)
    with pytest.raises(ledger.IllegalTransition, match="not skipped \\(never attempted\\)"):
        with transaction(clinic.con):
            ledger.transition(clinic.con, [never, claimed], "skipped", "planned", at)
    assert [r.status for r in clinic.messages()] == ["skipped", "skipped"], "nothing half-moved"
    with transaction(clinic.con):
        moved = ledger.transition(clinic.con, [never, claimed], "skipped", "planned", at,
                                  strict=False)  # fmt: skip
        again = ledger.transition(clinic.con, [never], "skipped", "planned", at, strict=False)
    assert (moved, again) == ([never], []), "at most once: a second run finds it planned"


def _skipped_by_a_late_move(clinic: Clinic) -> None:
    """A ``last_minute: skip`` reminder, skipped when its appointment moved to 5 hours away."""
    clinic.trigger("reminder", **{**REMINDER, "last_minute": "skip"})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * DAY, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    _move(clinic, 10, NOW + 5 * HOUR, at=NOW + HOUR - MIN)
    clinic.plan(NOW + HOUR)


def test_a_trigger_switched_on_again_reopens_nothing_it_skipped_before(clinic, tmp_path):
    _skipped_by_a_late_move(clinic)
    assert clinic.one().status == "skipped"
    clinic.triggers[0]["enabled"] = False
    clinic.plan(NOW + 2 * HOUR)
    clinic.triggers[0]["enabled"] = True
    clinic.plan(NOW + 3 * HOUR)  # live again from here
    _move(clinic, 10, NOW + 3 * DAY, at=NOW + 4 * HOUR)
    result = tick_and_send(clinic, NOW + 2 * DAY, tmp_path)
    assert clinic.one().status == "skipped"
    assert result.get("sent", 0) == 0


def test_the_tick_counts_what_it_reopened(clinic):
    _skipped_by_a_late_move(clinic)
    _move(clinic, 10, NOW + 30 * HOUR, at=NOW + 2 * HOUR)
    result: planning.PlanResult = clinic.plan(NOW + 2 * HOUR)
    assert (result.totals["reopened"], result.totals["planned"]) == (1, 0)
    assert (clinic.one().status, clinic.one().due_at) == ("planned", NOW + 6 * HOUR)


def test_a_reminder_whose_send_died_is_sent_at_its_new_time_when_the_appointment_moved_since(
    clinic, tmp_path
):
    """A dispatch killed between its claim and its request (row left ``sending``), then the front
    desk moves the appointment to next week before the next tick: the next run finds the
    provider never had it (planned again, at once) and its send-time check sees the move. The
    reminder goes at its new moment; it is not skipped "not sent early" for good (a row once
    claimed is never reopened, so such a skip cost the patient the reminder)."""
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    tick_and_send(clinic, NOW, tmp_path)
    message_id = clinic.one().message_id
    due = NOW + 6 * HOUR
    with transaction(clinic.con):  # the run claimed it, then died before its request left
        ledger.transition(clinic.con, [message_id], "planned", "sending", due, count_attempt=True,
                          values={"claim_id": ["dead-run"], "to_address": ["+61412345678"],
                                  "content_hash": ["0" * 64],
                                  "provider": ["outbox"]})  # fmt: skip
    _move(clinic, 10, NOW + 4 * DAY, at=due + MIN)  # the front desk moves it to Thursday

    tick_and_send(clinic, due + 10 * MIN, tmp_path)
    row = clinic.one()
    assert row.status == "planned", (row.status, row.status_reason)
    for hour in range(0, 4 * 24, 6):  # the ticks of the days that follow
        tick_and_send(clinic, due + 10 * MIN + hour * HOUR, tmp_path)
    row = clinic.one()
    assert (row.status, row.attempts) == ("sent", 2), (row.status, row.status_reason)
    assert NOW + 3 * DAY <= row.sent_at <= NOW + 3 * DAY + 2 * HOUR, "24 hours before, as moved"
