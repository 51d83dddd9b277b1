"""The delivery recorder: one final status per message, whichever way it came (poll or status
callback), and one suppression per number (the HTTP side: tests/integration/
test_feedback_delivery.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import feedback_delivery
from tasks.feedback_delivery import Delivery
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
LANDLINE = "+61255550006"


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def sent(con, n, to=LANDLINE, at=NOW - timedelta(hours=1)):
    key = make_send_key("trigger", "reminder", n, "o")
    ledger.insert_planned(con, [PlannedMessage(key, "trigger", "reminder", n, "sms",
                                               "transactional", "t", at)], at)  # fmt: skip
    mid = ledger.get(con, key).message_id
    ledger.transition(con, [mid], "planned", "sending", at,
                      values={"to_address": [to], "provider": ["twilio"]})  # fmt: skip
    ledger.transition(con, [mid], "sending", "sent", at, values={"provider_message_id": [f"SM{n}"]})
    return f"SM{n}"


def undelivered(sid):
    return Delivery(sid, "undelivered", "30006", NOW, ("all", "undeliverable"), "landline")


def test_a_status_told_twice_poll_and_callback_is_recorded_once(con):
    sid = sent(con, 1)
    first = feedback_delivery.record(con, "twilio", [undelivered(sid)], NOW, source="callback")
    again = feedback_delivery.record(con, "twilio", [undelivered(sid)], NOW, source="poll")
    assert first == {"sms_undelivered": 1, "suppressed_undeliverable": 1}
    assert again == {"delivery_already_final": 1}
    assert con.execute("SELECT count(*) FROM state.suppressions").fetchone() == (1,)
    assert con.execute("SELECT source, checks FROM state.sms_deliveries").fetchall() == [
        ("callback", 1)
    ]


def test_a_final_status_is_never_replaced_by_a_late_intermediate_one(con):
    sid = sent(con, 1)
    feedback_delivery.record(con, "twilio", [undelivered(sid)], NOW, source="poll")
    late = Delivery(sid, "sent", None, NOW - timedelta(minutes=1))
    assert feedback_delivery.record(con, "twilio", [late], NOW, source="callback") == {
        "delivery_already_final": 1
    }
    assert con.execute("SELECT status FROM state.sms_deliveries").fetchone() == ("undelivered",)


def test_a_status_for_a_message_the_ledger_does_not_hold_as_sent_is_left_to_the_poll(con):
    assert feedback_delivery.record(con, "twilio", [undelivered("SMnot-ours")], NOW,
                                    source="callback") == {"delivery_unmatched": 1}  # fmt: skip
    assert con.execute("SELECT count(*) FROM state.suppressions").fetchone() == (0,)


def test_the_evidence_names_the_message_and_code_never_the_number(con):
    sid = sent(con, 1)
    feedback_delivery.record(con, "twilio", [undelivered(sid)], NOW, source="poll")
    ((evidence,),) = con.execute("SELECT evidence FROM state.suppressions").fetchall()
    assert sid in evidence and "30006" in evidence and LANDLINE not in evidence
