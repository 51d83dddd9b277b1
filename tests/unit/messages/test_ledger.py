"""The ledger's promises: a send key is planned once, states move only as the machine allows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from tasks.messages import ledger
from tasks.messages.ledger import IllegalTransition, PlannedMessage, make_send_key
from tasks.warehouse import memory_db, open_db, transaction

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def planned(patient_id: int, *, due: datetime = NOW, channel="email", purpose="transactional"):
    return PlannedMessage(
        send_key=make_send_key("trigger", "reminder-24h", patient_id, f"appointment:{patient_id}"),
        source_kind="trigger",
        source_name="reminder-24h",
        patient_id=patient_id,
        appointment_id=patient_id,
        channel=channel,
        purpose=purpose,
        template="reminder-24h",
        due_at=due,
        expires_at=due + timedelta(hours=2),
    )


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def ids_of(con, status):
    return [r.message_id for r in ledger.in_status(con, status)]


def test_the_send_key_is_the_same_for_the_same_source_patient_and_occasion():
    a = make_send_key("trigger", "welcome", 42, "appointment:7")
    assert a == make_send_key("trigger", "welcome", 42, "appointment:7")
    assert a != make_send_key("trigger", "welcome", 42, "appointment:8")
    with pytest.raises(ValueError):
        make_send_key("trigger", "bad:name", 42, "x")
    with pytest.raises(ValueError):
        make_send_key("newsletter", "welcome", 42, "x")


def test_planning_the_same_key_twice_plans_it_once(con):
    assert ledger.insert_planned(con, [planned(1), planned(2), planned(1)], NOW) == 2
    assert ledger.insert_planned(con, [planned(1), planned(2), planned(3)], NOW) == 1
    assert ledger.status_counts(con) == {"planned": 3}


def test_replanning_never_resets_a_message_that_went(con):
    ledger.insert_planned(con, [planned(1)], NOW)
    (row,) = ledger.due(con, NOW)
    ledger.transition(con, [row.message_id], "planned", "sending", NOW, count_attempt=True)
    ledger.transition(
        con, [row.message_id], "sending", "sent", NOW, values={"provider_message_id": ["pm-1"]}
    )
    later = NOW + timedelta(days=1)
    assert ledger.insert_planned(con, [planned(1, due=later)], later) == 0
    again = ledger.get(con, row.send_key)
    assert (again.status, again.provider_message_id, again.due_at) == ("sent", "pm-1", NOW)
    assert again.attempts == 1 and again.sent_at == NOW


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ("planned", "sent"),
        ("planned", "failed"),
        ("planned", "unknown"),
        ("sending", "cancelled"),
        ("sending", "skipped"),
        ("sent", "planned"),
        ("failed", "sending"),
        ("unknown", "planned"),
        ("cancelled", "planned"),
        ("skipped", "sending"),
    ],
)
def test_moves_the_state_machine_does_not_allow_raise(con, start, to):
    with pytest.raises(IllegalTransition):
        ledger.transition(con, [1], start, to, NOW)


def test_a_row_not_in_the_expected_state_is_refused_and_nothing_half_moves(con):
    ledger.insert_planned(con, [planned(1), planned(2)], NOW)
    first, second = ids_of(con, "planned")
    ledger.transition(con, [first], "planned", "sending", NOW)
    with pytest.raises(IllegalTransition, match="not planned"), transaction(con):
        ledger.transition(con, [first, second], "planned", "skipped", NOW)
    assert ids_of(con, "planned") == [second]
    assert ids_of(con, "skipped") == []


def test_each_transition_stamps_its_time_and_reason(con):
    ledger.insert_planned(con, [planned(1), planned(2)], NOW)
    a, b = ids_of(con, "planned")
    t1, t2 = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    ledger.cancel(con, [a], "appointment cancelled", t1)
    ledger.transition(con, [b], "planned", "sending", t1, count_attempt=True)
    ledger.transition(
        con, [b], "sending", "failed", t2,
        values={"error_code": ["21211"], "status_reason": ["twilio: not a valid number"]},
    )  # fmt: skip
    rows = {
        r.message_id: r
        for r in ledger.in_status(con, "cancelled") + ledger.in_status(con, "failed")
    }
    assert rows[a].status_reason == "appointment cancelled"
    assert (
        con.execute("SELECT cancelled_at FROM state.messages WHERE message_id = ?", [a]).fetchone()[
            0
        ]
        == t1
    )
    assert (rows[b].sending_at, rows[b].error_code, rows[b].attempts) == (t1, "21211", 1)
    assert (
        con.execute("SELECT failed_at FROM state.messages WHERE message_id = ?", [b]).fetchone()[0]
        == t2
    )


def test_due_rows_wait_for_their_moment_and_for_any_retry_time(con):
    ledger.insert_planned(
        con,
        [planned(1), planned(2, due=NOW + timedelta(hours=1)), planned(3, channel="sms")],
        NOW,
    )
    assert [r.patient_id for r in ledger.due(con, NOW)] == [1, 3]
    assert [r.patient_id for r in ledger.due(con, NOW, channel="sms")] == [3]
    (row,) = ledger.due(con, NOW, channel="email")
    ledger.transition(con, [row.message_id], "planned", "sending", NOW, count_attempt=True)
    ledger.transition(
        con, [row.message_id], "sending", "planned", NOW,
        values={"next_attempt_at": [NOW + timedelta(minutes=5)]},
    )  # fmt: skip
    assert ledger.due(con, NOW, channel="email") == []
    assert [r.patient_id for r in ledger.due(con, NOW + timedelta(minutes=5), channel="email")] == [
        1
    ]


def test_only_a_planned_message_can_be_moved_to_a_new_time(con):
    ledger.insert_planned(con, [planned(1), planned(2)], NOW)
    a, b = ids_of(con, "planned")
    ledger.reschedule(con, a, NOW + timedelta(days=1), None, NOW)
    assert ledger.due(con, NOW)[0].message_id == b
    ledger.skip(con, [b], "unsubscribed", NOW)
    with pytest.raises(IllegalTransition):
        ledger.reschedule(con, b, NOW, None, NOW)


def test_the_latest_suppression_row_per_scope_decides(con):
    def add(address, scope, action="suppress", at=NOW):
        con.execute(
            "INSERT INTO state.suppressions (channel, address, action, reason, scope, source, occurred_at) "
            "VALUES ('email', ?, ?, 'manual', ?, 'operator', ?)",
            [address, action, scope, at],
        )

    add("marketing-off@x.test", "marketing")
    add("dead@x.test", "all")
    add("back@x.test", "marketing")
    add("back@x.test", "marketing", "lift", NOW + timedelta(days=1))
    everyone = ["Marketing-Off@x.test ", "dead@x.test", "back@x.test", "fine@x.test"]
    assert ledger.suppressed_addresses(con, "email", everyone, "marketing") == {
        "marketing-off@x.test",
        "dead@x.test",
    }
    assert ledger.suppressed_addresses(con, "email", everyone, "transactional") == {"dead@x.test"}
    assert ledger.suppressed_addresses(con, "sms", everyone, "marketing") == set()


def test_two_runs_claiming_the_same_rows_at_once_never_both_get_one(tmp_path):
    """Within one process, two cursors race to mark the same rows sending; each row goes to one."""
    with open_db(tmp_path / "clinic.duckdb") as con:
        ledger.insert_planned(con, [planned(i) for i in range(200)], NOW)
        ids = [r.message_id for r in ledger.due(con, NOW, limit=1000)]
        claimed: list[list[int]] = []
        barrier = threading.Barrier(2)

        def claim(tag):
            cur = con.cursor()
            barrier.wait()
            try:
                with transaction(cur):
                    got = ledger.transition(
                        cur, ids, "planned", "sending", NOW,
                        values={"claim_id": [tag] * len(ids)}, strict=False,
                    )  # fmt: skip
                claimed.append(got)
            except duckdb.TransactionException:
                claimed.append([])

        threads = [threading.Thread(target=claim, args=(t,)) for t in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed[0] + claimed[1]) == sorted(ids)
        assert not set(claimed[0]) & set(claimed[1])


def _unknown(con, patient_id: int) -> str:
    message = planned(patient_id)
    ledger.insert_planned(con, [message], NOW)
    (row,) = [r for r in ledger.in_status(con, "planned") if r.send_key == message.send_key]
    ledger.transition(con, [row.message_id], "planned", "sending", NOW, count_attempt=True)
    ledger.transition(con, [row.message_id], "sending", "unknown", NOW,
                      values={"status_reason": ["twilio: ReadTimeout after sending"]})  # fmt: skip
    return message.send_key


def test_a_person_resolving_an_unknown_message_is_recorded_with_who_when_and_why(con):
    went, again = _unknown(con, 1), _unknown(con, 2)
    later = NOW + timedelta(hours=3)
    row = ledger.resolve(con, went, "sent", "alice", later, "seen in the Twilio console")
    assert (row.status, row.sent_at) == ("sent", later)
    assert row.status_reason == ("sent, confirmed by a person (alice: seen in the Twilio "
                                 "console); was unknown: twilio: ReadTimeout after sending")  # fmt: skip
    row = ledger.resolve(con, again, "resend", "bob", later)
    assert (row.status, row.next_attempt_at, row.attempts) == ("planned", later, 1)
    # the decision stays on the row after the message is sent again
    ledger.transition(con, [row.message_id], "planned", "sending", later)
    ledger.transition(
        con, [row.message_id], "sending", "sent", later, values={"status_reason": [None]}
    )
    recorded = con.execute(
        "SELECT send_key, resolved_by, resolved_at, resolution FROM state.messages "
        "WHERE resolved_by IS NOT NULL ORDER BY 1"
    ).fetchall()
    assert [(k, by, at) for k, by, at, _ in recorded] == [
        (went, "alice", later),
        (again, "bob", later),
    ]
    assert recorded[1][3].startswith("resend, decided by a person (bob)")


def test_only_an_unknown_message_is_resolved_by_a_person(con):
    ledger.insert_planned(con, [planned(1)], NOW)
    with pytest.raises(IllegalTransition, match="is planned, not unknown"):
        ledger.resolve(con, planned(1).send_key, "sent", "alice", NOW)
    with pytest.raises(LookupError, match="no message has send key 'trigger:nope'"):
        ledger.resolve(con, "trigger:nope", "resend", "alice", NOW)
    assert ledger.status_counts(con) == {"planned": 1}
