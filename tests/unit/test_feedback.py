"""Feedback that needs no provider: pull windows, cursors, lifts, unsubscribe clicks.

The provider pulls (bounces, suppression dumps, Twilio replies) are exercised through the real
clients against the sandboxes in tests/integration/test_feedback.py; reply words in
tests/unit/providers/test_twilio.py; CSV imports in tests/unit/test_feedback_import.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import feedback
from tasks.config import ClinicConfig, MarketingListSettings
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.unsubscribe.tokens import UnsubscribeClaim
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def sent_message(con, patient_id: int, to: str, *, channel="email") -> int:
    """A marketing message that went to ``to``: what an unsubscribe link points back at."""
    key = make_send_key("campaign", "spring", patient_id, "2026-03")
    ledger.insert_planned(
        con,
        [PlannedMessage(key, "campaign", "spring", patient_id, channel, "marketing", "recall",
                        NOW - timedelta(days=1))],
        NOW - timedelta(days=2),
    )  # fmt: skip
    message_id = ledger.get(con, key).message_id
    ledger.transition(con, [message_id], "planned", "sending", NOW - timedelta(days=1),
                      values={"to_address": [to]})  # fmt: skip
    ledger.transition(con, [message_id], "sending", "sent", NOW - timedelta(days=1))
    return message_id


def marketing_blocked(con, address: str, channel="email") -> bool:
    return bool(ledger.suppressed_addresses(con, channel, [address], "marketing"))


def suppression_rows(con):
    return con.execute(
        "SELECT channel, address, action, reason, scope, source FROM state.suppressions "
        "ORDER BY suppression_id"
    ).fetchall()


# --- pull windows ----------------------------------------------------------------------------


def test_a_first_pull_reads_postmarks_45_days_of_bounces():
    days = feedback.pull_days(None, NOW)
    assert days[0] == (NOW - timedelta(days=45)).date()
    assert days[-1] == NOW.date()
    assert len(days) == 46


def test_a_later_pull_rereads_from_the_day_before_its_cursor():
    days = feedback.pull_days(datetime(2026, 3, 10, 0, 30, tzinfo=UTC), NOW)
    assert [d.isoformat() for d in days] == ["2026-03-09", "2026-03-10"]


def test_a_cursor_only_moves_forward(con):
    feedback.advance(con, "postmark", "bounces", NOW, 3, NOW)
    feedback.advance(con, "postmark", "bounces", NOW - timedelta(days=3), 1, NOW)
    assert feedback.cursor(con, "postmark", "bounces") == NOW
    assert con.execute("SELECT items FROM state.feedback_cursors").fetchone() == (4,)


# --- lifting --------------------------------------------------------------------------------


def test_a_lift_clears_every_scope_the_address_is_suppressed_in(con):
    for scope, reason in (("all", "stop"), ("marketing", "manual")):
        ledger.add_suppression(con, channel="sms", address="+61400000001", scope=scope,
                               reason=reason, source="operator", evidence="t",
                               occurred_at=NOW - timedelta(hours=1))  # fmt: skip
    assert feedback.lift(con, "sms", "+61400000001", reason="opt_in", source="twilio",
                         evidence="t", occurred_at=NOW) == 2  # fmt: skip
    assert not ledger.suppressed_addresses(con, "sms", ["+61400000001"], "marketing")
    assert feedback.lift(con, "sms", "+61400000001", reason="opt_in", source="twilio",
                         evidence="t", occurred_at=NOW) == 0  # fmt: skip


# --- unsubscribe clicks ----------------------------------------------------------------------


def test_a_click_suppresses_the_address_its_message_went_to_for_marketing_only(con, tmp_path):
    message_id = sent_message(con, 7, "Pat@Example.com")
    inbox = tmp_path / "clinic.duckdb.unsubscribes.jsonl"
    feedback.spool_unsubscribe(inbox, UnsubscribeClaim("demo", 7, message_id, "email"), NOW)

    counts = feedback.drain_unsubscribes(con, inbox, NOW)

    assert counts == {"unsubscribe_suppress": 1}
    assert marketing_blocked(con, "pat@example.com")
    assert not ledger.suppressed_addresses(con, "email", ["pat@example.com"], "transactional")
    assert suppression_rows(con) == [
        ("email", "pat@example.com", "suppress", "unsubscribed", "marketing", "unsubscribe_link")
    ]
    assert inbox.read_text() == ""


def test_the_inbox_holds_ids_not_addresses(con, tmp_path):
    message_id = sent_message(con, 7, "pat@example.com")
    inbox = tmp_path / "inbox.jsonl"
    feedback.spool_unsubscribe(inbox, UnsubscribeClaim("demo", 7, message_id, "email"), NOW)
    assert "example.com" not in inbox.read_text()


def test_a_drain_that_died_before_emptying_the_inbox_records_nothing_twice(con, tmp_path):
    message_id = sent_message(con, 7, "pat@example.com")
    inbox = tmp_path / "inbox.jsonl"
    feedback.spool_unsubscribe(inbox, UnsubscribeClaim("demo", 7, message_id, "email"), NOW)
    kept = inbox.read_text()
    feedback.drain_unsubscribes(con, inbox, NOW)
    inbox.write_text(kept)  # as if the process died after the commit, before the truncate

    assert feedback.drain_unsubscribes(con, inbox, NOW) == {}
    assert len(suppression_rows(con)) == 1


def test_clicking_twice_records_one_suppression(con, tmp_path):
    message_id = sent_message(con, 7, "pat@example.com")
    inbox = tmp_path / "inbox.jsonl"
    claim = UnsubscribeClaim("demo", 7, message_id, "email")
    feedback.spool_unsubscribe(inbox, claim, NOW)
    feedback.spool_unsubscribe(inbox, claim, NOW + timedelta(minutes=1))

    counts = feedback.drain_unsubscribes(con, inbox, NOW)

    assert counts == {"unsubscribe_suppress": 1, "unsubscribe_already": 1}
    assert len(suppression_rows(con)) == 1


def test_a_click_for_a_message_of_another_patient_suppresses_nobody(con, tmp_path):
    message_id = sent_message(con, 7, "pat@example.com")
    inbox = tmp_path / "inbox.jsonl"
    feedback.spool_unsubscribe(inbox, UnsubscribeClaim("demo", 8, message_id, "email"), NOW)

    assert feedback.drain_unsubscribes(con, inbox, NOW) == {"unsubscribe_unmatched": 1}
    assert suppression_rows(con) == []


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_rest_recorded(con, tmp_path):
    message_id = sent_message(con, 7, "pat@example.com")
    inbox = tmp_path / "inbox.jsonl"
    feedback.spool_unsubscribe(inbox, UnsubscribeClaim("demo", 7, message_id, "email"), NOW)
    with inbox.open("a") as f:
        f.write('{"click": "abc", "patient')

    counts = feedback.drain_unsubscribes(con, inbox, NOW)

    assert counts == {"unsubscribe_suppress": 1, "clicks_unreadable": 1}


def test_the_email_list_and_feedback_agree_on_the_soft_bounce_limit_and_its_count():
    """One count (state.email_bounce_counts) and one limit (marketing_list.soft_bounce_limit,
    which the build hands the models in state.build_context): the list model must read both."""
    from tasks.models.runner import ListSettings
    from tasks.paths import PROJECT_ROOT

    model = (PROJECT_ROOT / "sql/marts/email_marketing_list.sql").read_text()
    assert "from state.email_bounce_counts" in model
    assert "soft_bounces >= soft_bounce_limit" in model
    assert "settings.soft_bounce_limit" in model
    config = ClinicConfig(clinic="t", name="T", marketing_list={"soft_bounce_limit": 3})
    assert ListSettings.from_config(config).soft_bounce_limit == 3
    assert ListSettings().soft_bounce_limit == MarketingListSettings().soft_bounce_limit == 5
