"""Bookings won on a hand-made clinic where the answer is known: raw rows -> the real models ->
ledger rows written as dispatch writes them -> the counts, person by person.

The cohort is messages sent (or due, for the baseline) in the week [T0 - 1 day, T0 + 6 days);
bookings count within 14 days of each message. Every patient below says why they count or not.
"""

from __future__ import annotations

import pytest

from tasks import bookings_won
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tests.unit.triggers.test_plan import ADMIN_TAG, API, DAY, NOW, Clinic

T0 = NOW - 30 * DAY
FIRST, LAST = T0 - DAY, T0 + 6 * DAY


def message(con, kind, name, patient, at, *, status="sent", reason=None, occasion=None):
    """A ledger row as dispatch leaves it: sent at ``at``, or skipped (due ``at``) with a reason."""
    key = make_send_key(kind, name, patient, occasion or f"at:{at:%Y%m%d%H%M}")
    purpose = "transactional" if kind == "trigger" else "marketing"
    ledger.insert_planned(
        con, [PlannedMessage(key, kind, name, patient, "email", purpose, "t", at)], at - DAY
    )
    mid = ledger.get(con, key).message_id
    if status == "skipped":
        ledger.transition(con, [mid], "planned", "skipped", at, values={"status_reason": [reason]})
        return
    ledger.transition(con, [mid], "planned", "sending", at)
    ledger.transition(con, [mid], "sending", status, at)


@pytest.fixture(scope="module")
def won():
    c = Clinic()
    for p in range(1, 15):
        c.patient(p, created=T0 - 400 * DAY)
    # first visits, long before: every patient has history (none of it counts)
    for p in range(1, 15):
        c.appointment(1000 + p, p, T0 - 60 * DAY, created=T0 - 70 * DAY, arrived=True)
    appt = iter(range(2000, 3000))

    def booking(patient, created, **kw):
        c.appointment(next(appt), patient, created + 7 * DAY, created=created, **kw)

    recall = ("trigger", "recall")
    # --- recipients of the recall trigger ---
    message(c.con, *recall, 1, T0)  # 1: booked 2 days later: WON
    message(c.con, *recall, 1, T0 + DAY)  # ... and messaged again: still one person
    booking(1, T0 + 2 * DAY)
    message(c.con, *recall, 2, T0)  # 2: booked 20 days later: too late, not won
    booking(2, T0 + 20 * DAY)
    message(c.con, *recall, 3, T0)  # 3: only a tag appointment (Admin Only): not won
    booking(3, T0 + DAY, type_id=ADMIN_TAG)
    message(c.con, *recall, 4, T0)  # 4: booked the day before the message: not won
    booking(4, T0 - DAY)
    message(c.con, *recall, 5, T0)  # 5: booked 5 days later, cancelled since: WON (it was booked)
    booking(5, T0 + 5 * DAY, cancelled=T0 + 9 * DAY)
    message(c.con, *recall, 9, T0 + 2 * DAY)  # 9: messaged (after a cap skip, below): not won
    message(c.con, *recall, 12, T0)  # 12: merged into 13 since; 13's booking counts: WON
    c.update_patient(12, merged_with_patient={"links": {"self": f"{API}/patients/13"}})
    message(c.con, *recall, 13, T0 + DAY)  # ... and 13 messaged too: one person, counted once
    booking(13, T0 + 3 * DAY)
    # --- the recall's baseline: chosen, not sent for a reason unrelated to the patient ---
    cap = "frequency cap: could not go before its grace window ended"
    message(c.con, *recall, 6, T0, status="skipped", reason=cap)  # 6: booked: baseline WON
    booking(6, T0 + 3 * DAY)
    quiet = "quiet hours: could not go before its grace window ended"
    message(c.con, *recall, 7, T0 + DAY, status="skipped", reason=quiet)  # 7: no booking
    late = "past its grace window"
    message(c.con, *recall, 14, T0 + DAY, status="skipped", reason=late)  # 14: no booking
    # 8: skipped for a reason about the patient: not like-for-like, not a baseline
    message(c.con, *recall, 8, T0, status="skipped", reason="not subscribed to the email list")
    booking(8, T0 + DAY)
    # 9: skipped by the cap, then messaged two days later: a recipient, not a baseline
    message(c.con, *recall, 9, T0, status="skipped", reason=cap)
    # --- a campaign: booked on the 14th day exactly counts; a send outside the week does not ---
    message(c.con, "campaign", "spring", 10, T0)
    booking(10, T0 + 14 * DAY)
    message(c.con, "campaign", "spring", 11, T0 + 8 * DAY)  # after the cohort week
    booking(11, T0 + 9 * DAY)
    c.build(NOW)
    rows = bookings_won.bookings_won(
        c.con, FIRST, LAST, 14, [("journey", "birthday"), ("trigger", "recall")]
    )
    c.con.close()
    return {w.source: w for w in rows}


def test_recipients_and_bookings_within_the_window_are_counted_person_by_person(won):
    recall = won["trigger:recall"]
    # recipients 1, 2, 3, 4, 5, 9, 12 (and 13, the same person); booked 1, 5 and 12/13
    assert (recall.recipients, recall.booked) == (7, 3)
    assert recall.as_row()["booked_rate"] == "42.9%"


def test_the_baseline_is_the_same_trigger_not_sent_for_a_reason_unrelated_to_the_patient(won):
    recall = won["trigger:recall"]
    # 6 (cap, booked), 7 (quiet hours) and 14 (late); not 8 (unsubscribed) nor 9 (messaged)
    assert (recall.baseline, recall.baseline_booked) == (3, 1)
    assert recall.as_row()["baseline_rate"] == "33.3%"
    assert recall.as_row()["difference"] == "+9.5 points"


def test_a_source_without_a_baseline_says_so_and_an_idle_one_is_listed(won):
    spring = won["campaign:spring"]
    assert (spring.recipients, spring.booked, spring.baseline) == (1, 1, 0)
    assert spring.as_row()["baseline"] == "no baseline"
    assert spring.difference is None
    birthday = won["journey:birthday"]
    assert (birthday.recipients, birthday.booked, birthday.rate) == (0, 0, None)
    assert list(won) == ["trigger:recall", "journey:birthday", "campaign:spring"]


def test_a_clinic_never_built_has_no_bookings_to_count():
    from tasks.warehouse import memory_db

    con = memory_db()
    assert bookings_won.bookings_won(con, FIRST, LAST, 14, [("trigger", "x")]) == [
        bookings_won.Won("trigger", "x")
    ]
    with pytest.raises(ValueError):
        bookings_won.bookings_won(con, FIRST, LAST, 0)


def test_rows_hold_counts_only():
    row = bookings_won.Won("trigger", "recall", 4, 1, 2, 0).as_row()
    assert row == {
        "source": "trigger:recall", "recipients": 4, "booked": 1, "booked_rate": "25.0%",
        "baseline": 2, "baseline_booked": 0, "baseline_rate": "0.0%",
        "difference": "+25.0 points",
    }  # fmt: skip
