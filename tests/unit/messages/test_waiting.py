"""Waiting: a changeable reason holds a planned message until its grace window ends, then the skip
is final with the reason; dispatch never sends a waiting row, and every deferral reads as waiting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.messages import ledger, waiting
from tasks.messages.dispatch import dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready, Wait
from tasks.messages.templates import Templates, build_context
from tasks.providers.outbox import OutboxProvider
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def planned(patient_id: int, *, due: datetime = NOW, grace: timedelta | None = 2 * HOUR):
    return PlannedMessage(
        send_key=make_send_key("trigger", "reminder-24h", patient_id, f"appointment:{patient_id}"),
        source_kind="trigger",
        source_name="reminder-24h",
        patient_id=patient_id,
        appointment_id=patient_id,
        channel="sms",
        purpose="transactional",
        template="reminder-24h",
        due_at=due,
        expires_at=None if grace is None else due + grace,
    )


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def by_key(con):
    return {r.send_key.split(":")[2]: r for r in ledger.in_status(con, "planned")} | {
        r.send_key.split(":")[2]: r for r in ledger.in_status(con, "skipped")
    }


def test_a_held_message_waits_inside_its_grace_window_and_is_skipped_with_the_reason_after(con):
    ledger.insert_planned(con, [planned(1), planned(2, due=NOW - 3 * HOUR), planned(3, grace=None)],
                          NOW - 4 * HOUR)  # fmt: skip
    ids = sorted(r.message_id for r in ledger.in_status(con, "planned"))
    held, late = waiting.hold(con, ids, ["no valid mobile number on file"] * 3, NOW)
    assert (len(held), len(late)) == (1, 2)
    rows = by_key(con)
    assert (rows["1"].status, rows["1"].waiting_reason) == (
        "planned",
        "no valid mobile number on file",
    )
    assert rows["1"].next_attempt_at == NOW + waiting.WAITING_RECHECK  # judged again at send time
    for past_or_no_grace in ("2", "3"):
        assert (rows[past_or_no_grace].status, rows[past_or_no_grace].status_reason) == (
            "skipped", "no valid mobile number on file")  # fmt: skip
    assert not ledger.due(con, NOW + timedelta(minutes=5)), "dispatch does not take a waiting row"
    assert ledger.due(con, NOW + waiting.WAITING_RECHECK), "the send-time check judges it again"


def test_a_released_message_is_sendable_at_once_and_a_deferral_is_left_alone(con):
    ledger.insert_planned(con, [planned(1), planned(2)], NOW - HOUR)
    one, two = sorted(r.message_id for r in ledger.in_status(con, "planned"))
    waiting.hold(con, [one], ["patient archived in Cliniko"], NOW)
    ledger.defer(con, [two], [NOW + HOUR], ["deferred: frequency cap"], NOW)
    assert waiting.release(con, [one, two], NOW + timedelta(seconds=1)) == [one]
    assert [r.message_id for r in ledger.due(con, NOW + timedelta(minutes=1))] == [one]
    assert ledger.get(con, planned(2).send_key).status_reason == "deferred: frequency cap"


def test_the_ledger_names_waiting_rows_and_why_the_gates_deferrals_included(con):
    ledger.insert_planned(con, [planned(1), planned(2), planned(3)], NOW - HOUR)
    one, two, three = sorted(r.message_id for r in ledger.in_status(con, "planned"))
    waiting.hold(con, [one], ["Cliniko reminder preference is None"], NOW)
    ledger.defer(con, [two], [NOW + HOUR], ["deferred: quiet hours"], NOW)
    assert waiting.state_counts(con, NOW) == {"waiting": 2, "planned": 1}
    assert [(r.message_id, why) for r, why in waiting.rows_waiting(con, NOW)] == [
        (one, "Cliniko reminder preference is None"),
        (two, "deferred: quiet hours"),
    ]
    assert waiting.state_counts(con, NOW + 2 * HOUR) == {"waiting": 1, "planned": 2}
    assert three not in {r.message_id for r, _ in waiting.rows_waiting(con, NOW)}


def test_dispatch_holds_a_row_its_preparer_says_waits_instead_of_skipping_it(con, tmp_path):
    ledger.insert_planned(con, [planned(1), planned(2)], NOW - HOUR)
    answers = {
        "1": Wait("no valid mobile number on file"),
        "2": Ready(
            to="+61412345678",
            context=build_context(
                clinic={
                    "name": "Demo Physio",
                    "phone": "03 9000 1234",
                    "website": "",
                    "address": "",
                    "email": "hello@demo.example",
                },
                first_name="Sam",
                appointment_starts_at=NOW + 3 * HOUR,
                time_zone="Australia/Melbourne",
                appointment_type="Follow-up",
                practitioner="Dr Who",
                business="Richmond",
            ),
        ),
    }
    outbox = OutboxProvider(tmp_path, email_from="c@example.com", sms_from="Clinic")
    result = dispatch(con, providers={"sms": outbox}, templates=Templates(),
                      prepare=lambda row: answers[row.send_key.split(":")[2]],
                      clock=lambda: NOW)  # fmt: skip
    assert (result.counts["waiting"], result.counts["sent"], result.counts["skipped"]) == (1, 1, 0)
    row = ledger.get(con, planned(1).send_key)
    assert (row.status, row.waiting_reason) == ("planned", "no valid mobile number on file")
    # past its grace window the same answer is final, with the reason
    late = NOW + 2 * HOUR
    result = dispatch(con, providers={"sms": outbox}, templates=Templates(),
                      prepare=lambda row: answers[row.send_key.split(":")[2]],
                      clock=lambda: late)  # fmt: skip
    row = ledger.get(con, planned(1).send_key)
    assert (row.status, row.status_reason) == ("skipped", "no valid mobile number on file")


def test_off_the_marketing_list_at_send_time_is_a_wait_for_journeys_and_campaigns(con):
    from tasks.config import ClinicConfig
    from tasks.marketing.recheck import Planned, SourcePreparer

    preparer = SourcePreparer(con, ClinicConfig(clinic="test", name="Test Physio"))
    off = Planned(message_id=1, channel="email", enrolment_status=None, exit_reason=None,
                  in_segment=True, address=None, first_name="Sam", preferred_first_name=None,
                  last_name="Tester")  # fmt: skip
    assert preparer.to_list_address(off) == Wait("not on the email marketing list")
