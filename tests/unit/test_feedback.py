"""Feedback that needs no provider: reply words, pull windows, unsubscribe clicks, CSV imports.

The provider pulls (bounces, suppression dumps, Twilio replies) are exercised through the real
clients against the sandboxes in tests/integration/test_feedback.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import feedback
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


# --- reply words -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "Cancel",
                                  "END", "quit!"])  # fmt: skip
def test_opt_out_words_in_any_case_stop_sms(body):
    assert feedback.reply_keyword(body) == "stop"


@pytest.mark.parametrize("body", ["START", "yes", "Unstop"])
def test_opt_in_words_start_sms_again(body):
    assert feedback.reply_keyword(body) == "start"


@pytest.mark.parametrize("body", ["Please stop texting me on Sundays", "yes please", "", None,
                                  "STOP IT"])  # fmt: skip
def test_a_sentence_is_not_a_keyword(body):
    assert feedback.reply_keyword(body) is None


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
    feedback._advance(con, "postmark", "bounces", NOW, 3, NOW)
    feedback._advance(con, "postmark", "bounces", NOW - timedelta(days=3), 1, NOW)
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


# --- CSV import -----------------------------------------------------------------------------


def write_csv(tmp_path, text: str, name="unsubscribed_members.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MAILCHIMP = (
    "\ufeffEmail Address,First Name,Last Name,UNSUB_TIME\n"
    "ann@example.com,Ann,A,2026-01-02 10:00:00\n"
    "BOB@Example.com ,Bob,B,2026-01-03 10:00:00\n"
    "ann@example.com,Ann,A,2026-01-04 10:00:00\n"
    "\n"
)


def test_a_mailchimp_export_unsubscribes_each_address_once(con, tmp_path):
    result = feedback.import_unsubscribes(con, write_csv(tmp_path, MAILCHIMP), NOW)

    assert result.as_dict() == {"imported": 2, "already_unsubscribed": 0, "duplicate": 1,
                                "invalid": 0}  # fmt: skip
    assert result.column == "Email Address"
    assert marketing_blocked(con, "ann@example.com") and marketing_blocked(con, "bob@example.com")
    assert {r[5] for r in suppression_rows(con)} == {"csv_import"}
    evidence = con.execute("SELECT evidence FROM state.suppressions ORDER BY 1").fetchall()
    assert evidence == [("unsubscribed_members.csv line 2",), ("unsubscribed_members.csv line 3",)]


def test_importing_the_same_file_again_adds_nothing(con, tmp_path):
    path = write_csv(tmp_path, MAILCHIMP)
    feedback.import_unsubscribes(con, path, NOW)
    again = feedback.import_unsubscribes(con, path, NOW + timedelta(hours=1))
    assert (again.imported, again.already) == (0, 2)
    assert len(suppression_rows(con)) == 2


def test_an_invalid_address_refuses_the_whole_file_naming_its_line(con, tmp_path):
    path = write_csv(tmp_path, "email;name\nann@example.com;Ann\nnot-an-address;X\n")
    with pytest.raises(feedback.ImportRefused, match=r"line\(s\) 3\. Nothing was imported"):
        feedback.import_unsubscribes(con, path, NOW)
    assert suppression_rows(con) == []


def test_skip_invalid_imports_the_valid_rest_and_counts_the_invalid(con, tmp_path):
    path = write_csv(tmp_path, "email;name\nann@example.com;Ann\nnot-an-address;X\n")
    result = feedback.import_unsubscribes(con, path, NOW, skip_invalid=True)
    assert (result.imported, result.invalid, result.invalid_lines) == (1, 1, [3])


def test_a_file_without_a_header_is_refused_without_repeating_its_first_address(con, tmp_path):
    path = write_csv(tmp_path, "ann@example.com,Ann\nbob@example.com,Bob\n")
    with pytest.raises(feedback.ImportRefused, match="header line") as refused:
        feedback.import_unsubscribes(con, path, NOW)
    assert "ann@" not in str(refused.value)


def test_a_file_without_an_email_column_is_refused_with_what_to_name_it(con, tmp_path):
    path = write_csv(tmp_path, "name,phone\nAnn,0400\n")
    with pytest.raises(feedback.ImportRefused, match="Email Address"):
        feedback.import_unsubscribes(con, path, NOW)


def test_an_import_that_fails_before_its_commit_writes_nothing(con, tmp_path, monkeypatch):
    path = write_csv(tmp_path, MAILCHIMP)
    real = feedback.Book.write

    def written_then_killed(book, con):
        real(book, con)
        raise KeyboardInterrupt

    monkeypatch.setattr(feedback.Book, "write", written_then_killed)
    with pytest.raises(KeyboardInterrupt):
        feedback.import_unsubscribes(con, path, NOW)
    assert suppression_rows(con) == []


def test_the_email_list_and_feedback_agree_on_the_soft_bounce_limit_and_its_count():
    """One count (state.email_bounce_counts) and one limit: the list model must read both."""
    from relay.env import PROJECT_ROOT

    model = (PROJECT_ROOT / "sql/marts/email_marketing_list.sql").read_text()
    assert "from state.email_bounce_counts" in model
    assert f"soft_bounces >= {feedback.SOFT_BOUNCE_LIMIT}" in model
