"""The feedback pulls through the real postmarker and twilio clients, over HTTP, against the
sandboxes, into DuckDB: bounce thresholds, complaints, Postmark-managed unsubscribes, STOP/START.

What "suppressed" means is what sending reads (ledger.suppressed_addresses): suppressed for
marketing stops marketing only; suppressed for everything stops reminders too.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.postmark import PostmarkSandbox
from sandbox.server import ThreadedServer
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks import feedback
from tasks.config import ClinicConfig, MarketingListSettings
from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings
from tasks.unsubscribe.app import create_app
from tasks.warehouse import memory_db, open_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
SOFT_BOUNCE_LIMIT = MarketingListSettings().soft_bounce_limit  # the clinic default: 5
PATIENT = "pat@example.com"
MOBILE = "+61411111111"
OUR_NUMBER = "+61400000000"


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:
        provider = PostmarkProvider(
            PostmarkSettings(server_token=sandbox.server_token, from_address="d@demo.example",
                             base_url=server.url, timeout=5)
        )  # fmt: skip
        sandbox.provider = provider
        sandbox.client = provider.client
        yield sandbox
        provider.close()


@pytest.fixture
def twilio():
    sandbox = TwilioSandbox()
    with sandbox.serve() as server:
        provider = TwilioProvider(
            TwilioSettings(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN,
                           from_number=OUR_NUMBER, base_url=server.url, timeout=5)
        )  # fmt: skip
        sandbox.provider = provider
        sandbox.provider = provider
        sandbox.client = provider.client
        yield sandbox
        provider.close()


def pull_bounces(con, postmark, now=NOW, limit=SOFT_BOUNCE_LIMIT):
    """Every stream's bounces, as the tick's feedback step pulls them."""
    counts = Counter()
    for feed in postmark.provider.feedback_feeds(limit):
        if feed.name.startswith("postmark-bounces-"):
            counts.update(feed.pull(con, now))
    return +counts


def pull_dump(con, postmark, stream, now=NOW):
    return postmark.provider.pull_suppressions(con, stream, now)


def pull_replies(con, twilio, now=NOW):
    return twilio.provider.pull_replies(con, now)


def blocked(con, address, purpose, channel="email") -> bool:
    return bool(ledger.suppressed_addresses(con, channel, [address], purpose))


def soft_bounces(postmark, n, *, start=NOW - timedelta(days=3), email=PATIENT):
    for i in range(n):
        postmark.bounce(email, "SoftBounce", stream="broadcast", at=start + timedelta(hours=i))


def suppressions(con, channel="email"):
    return con.execute(
        "SELECT action, reason, scope FROM state.suppressions WHERE channel = ? "
        "ORDER BY occurred_at, suppression_id",
        [channel],
    ).fetchall()


# --- Postmark bounces ---------------------------------------------------------------------------


def test_a_hard_bounce_stops_every_email_to_the_address(con, postmark):
    postmark.bounce(PATIENT, "HardBounce", at=NOW - timedelta(hours=2))

    counts = pull_bounces(con, postmark)

    assert counts == {"bounces_hard": 1, "suppressed_hard_bounce": 1}
    assert blocked(con, PATIENT, "transactional") and blocked(con, PATIENT, "marketing")
    assert con.execute("SELECT email, kind FROM state.email_bounces").fetchall() == [
        (PATIENT, "hard")
    ]


def test_an_unsubscribe_request_bounce_takes_the_address_off_marketing_only(con, postmark):
    """Postmark's "Unsubscribe" bounce type (a reply asking to be taken off): Postmark leaves the
    address active, so it is ours to honour, as an unsubscribe click is."""
    postmark.bounce(PATIENT, "Unsubscribe", stream="broadcast", at=NOW - timedelta(hours=2))

    counts = pull_bounces(con, postmark)

    assert counts == {"bounces_other": 1, "suppressed_unsubscribed": 1}
    assert blocked(con, PATIENT, "marketing")
    assert not blocked(con, PATIENT, "transactional"), "reminders still go"
    assert suppressions(con) == [("suppress", "unsubscribed", "marketing")]


def test_a_bad_email_address_bounce_stops_every_email_to_it(con, postmark):
    postmark.bounce(PATIENT, "BadEmailAddress", at=NOW - timedelta(hours=2))

    assert pull_bounces(con, postmark) == {"bounces_hard": 1, "suppressed_hard_bounce": 1}
    assert blocked(con, PATIENT, "transactional") and blocked(con, PATIENT, "marketing")


def test_four_soft_bounces_keep_an_address_and_the_fifth_takes_it_off_marketing(con, postmark):
    soft_bounces(postmark, 4)
    pull_bounces(con, postmark)
    assert not blocked(con, PATIENT, "marketing")

    postmark.bounce(PATIENT, "SoftBounce", stream="broadcast", at=NOW - timedelta(hours=1))
    counts = pull_bounces(con, postmark)

    assert counts == {"bounces_soft": 1, "suppressed_soft_bounce_limit": 1}
    assert blocked(con, PATIENT, "marketing")
    assert not blocked(con, PATIENT, "transactional"), "reminders still go after soft bounces"
    assert suppressions(con) == [("suppress", "soft_bounce_limit", "marketing")]


def test_a_clinic_with_a_lower_soft_bounce_limit_loses_the_address_sooner(con, postmark):
    soft_bounces(postmark, 3)
    counts = pull_bounces(con, postmark, limit=3)
    assert counts["suppressed_soft_bounce_limit"] == 1
    assert blocked(con, PATIENT, "marketing") and not blocked(con, PATIENT, "transactional")


def test_bounces_after_the_limit_add_no_more_suppressions(con, postmark):
    soft_bounces(postmark, 7)
    pull_bounces(con, postmark)
    assert suppressions(con) == [("suppress", "soft_bounce_limit", "marketing")]


def test_pulling_the_same_days_again_counts_no_bounce_twice(con, postmark):
    soft_bounces(postmark, 3)
    pull_bounces(con, postmark)
    soft_bounces(postmark, 1, start=NOW - timedelta(minutes=5))
    second = pull_bounces(con, postmark, NOW + timedelta(minutes=1))
    third = pull_bounces(con, postmark, NOW + timedelta(minutes=2))

    assert second == {"bounces_soft": 1} and third == {}
    assert con.execute("SELECT count(*) FROM state.email_bounces").fetchone() == (4,)
    assert not blocked(con, PATIENT, "marketing")


def test_an_opt_in_starts_the_soft_bounce_count_again(con, postmark):
    soft_bounces(postmark, 5, start=NOW - timedelta(days=5))
    pull_bounces(con, postmark)
    feedback.lift(con, "email", PATIENT, reason="opt_in", source="operator", evidence="test",
                  occurred_at=NOW - timedelta(days=4))  # fmt: skip
    assert not blocked(con, PATIENT, "marketing")

    soft_bounces(postmark, 4, start=NOW - timedelta(days=2))
    pull_bounces(con, postmark)
    assert not blocked(con, PATIENT, "marketing"), "four since the opt-in"

    soft_bounces(postmark, 1, start=NOW - timedelta(hours=1))
    pull_bounces(con, postmark)
    assert blocked(con, PATIENT, "marketing")


def test_the_marketing_lists_bounce_count_is_the_one_feedback_uses(con, postmark):
    soft_bounces(postmark, 5)
    postmark.bounce("other@example.com", "Transient", at=NOW - timedelta(hours=1))
    counts = pull_bounces(con, postmark)

    assert counts["bounces_other"] == 1
    assert con.execute(
        "SELECT email, hard_bounces, soft_bounces FROM state.email_bounce_counts ORDER BY 1"
    ).fetchall() == [("other@example.com", 0, 0), (PATIENT, 0, 5)]


def test_a_spam_complaint_about_marketing_stops_marketing_but_not_reminders(con, postmark):
    postmark.bounce(PATIENT, "SpamComplaint", stream="broadcast", at=NOW - timedelta(hours=1))
    pull_bounces(con, postmark)
    assert blocked(con, PATIENT, "marketing")
    assert not blocked(con, PATIENT, "transactional")
    assert suppressions(con) == [("suppress", "spam_complaint", "marketing")]


def test_a_spam_complaint_about_a_reminder_stops_everything(con, postmark):
    postmark.bounce(PATIENT, "SpamComplaint", stream="outbound", at=NOW - timedelta(hours=1))
    pull_bounces(con, postmark)
    assert blocked(con, PATIENT, "transactional")


def test_a_pull_killed_before_its_commit_records_nothing_and_the_next_records_all_once(
    con, postmark, monkeypatch
):
    postmark.bounce(PATIENT, "HardBounce", at=NOW - timedelta(hours=3))
    soft_bounces(postmark, 5, email="soft@example.com")

    def killed(*args):
        raise KeyboardInterrupt  # what a kill looks like to the transaction: it never commits

    with monkeypatch.context() as m:
        m.setattr(feedback, "_soft_bounce_limits", killed)
        with pytest.raises(KeyboardInterrupt):
            pull_bounces(con, postmark)
    assert con.execute("SELECT count(*) FROM state.email_bounces").fetchone() == (0,)
    assert suppressions(con) == []
    assert feedback.cursor(con, "postmark", "bounces") is None

    counts = pull_bounces(con, postmark)
    assert counts == {"bounces_hard": 1, "bounces_soft": 5, "suppressed_hard_bounce": 1,
                      "suppressed_soft_bounce_limit": 1}  # fmt: skip


def test_an_unreachable_postmark_records_nothing_and_says_so(con, postmark):
    postmark.bounce(PATIENT, "HardBounce", at=NOW - timedelta(hours=3))
    postmark.faults.add("5xx", path_prefix="/bounces")
    with pytest.raises(
        feedback.FeedbackUnavailable,
        match="Postmark bounces of stream 'outbound' could not be read",
    ):
        pull_bounces(con, postmark)
    assert feedback.cursor(con, "postmark", "bounces") is None
    assert pull_bounces(con, postmark) == {"bounces_hard": 1, "suppressed_hard_bounce": 1}


def test_bounces_hold_the_message_they_were_about_for_the_reports(con, postmark):
    postmark.bounce(PATIENT, "HardBounce", at=NOW - timedelta(hours=3), message_id="pm-1")
    pull_bounces(con, postmark)
    assert con.execute(
        "SELECT provider_message_id, bounce_type FROM state.email_bounce_messages"
    ).fetchall() == [("pm-1", "HardBounce")]


# --- Postmark suppression dumps -----------------------------------------------------------------


def test_a_postmark_managed_unsubscribe_comes_back_as_a_marketing_suppression(con, postmark):
    postmark.suppress(PATIENT, "broadcast", reason="ManualSuppression", origin="Recipient",
                      at=NOW - timedelta(hours=1))  # fmt: skip

    assert pull_dump(con, postmark, "outbound") == {}
    assert pull_dump(con, postmark, "broadcast") == {"suppressed_unsubscribed": 1}
    assert blocked(con, PATIENT, "marketing") and not blocked(con, PATIENT, "transactional")
    assert pull_dump(con, postmark, "broadcast", NOW + timedelta(minutes=5)) == {}


def test_a_dump_entry_already_known_from_a_bounce_adds_no_second_row(con, postmark):
    postmark.bounce(PATIENT, "HardBounce", stream="outbound", at=NOW - timedelta(hours=1))
    pull_bounces(con, postmark)
    assert pull_dump(con, postmark, "outbound") == {"already_suppressed": 1}
    assert suppressions(con) == [("suppress", "hard_bounce", "all")]


def test_a_suppression_lifted_here_is_not_reimposed_by_the_old_dump_entry(con, postmark):
    postmark.suppress(PATIENT, "broadcast", at=NOW - timedelta(hours=2))
    pull_dump(con, postmark, "broadcast")
    feedback.lift(con, "email", PATIENT, reason="opt_in", source="operator", evidence="test",
                  occurred_at=NOW - timedelta(hours=1))  # fmt: skip
    pull_dump(con, postmark, "broadcast", NOW + timedelta(minutes=5))
    assert not blocked(con, PATIENT, "marketing")


# --- Twilio replies -----------------------------------------------------------------------------


def test_stop_suppresses_the_number_for_every_sms_and_start_lifts_it(con, twilio):
    twilio.receive(MOBILE, "Stop", to=OUR_NUMBER, at=NOW - timedelta(hours=2))
    assert pull_replies(con, twilio) == {"sms_stop": 1}
    assert blocked(con, MOBILE, "transactional", "sms")

    twilio.receive(MOBILE, "START", to=OUR_NUMBER, at=NOW - timedelta(minutes=10))
    assert pull_replies(con, twilio, NOW + timedelta(minutes=1)) == {"sms_start": 1}
    assert not blocked(con, MOBILE, "marketing", "sms")
    assert suppressions(con, "sms") == [("suppress", "stop", "all"), ("lift", "opt_in", "all")]


@pytest.mark.parametrize("word", ["STOPALL", "unsubscribe", "CANCEL", "end", "Quit", "REVOKE",
                                  "optout"])  # fmt: skip
def test_every_opt_out_word_stops_sms(con, twilio, word):
    """Twilio's default words, REVOKE and OPTOUT among them since 2025: Twilio blocks the number
    on each (21610 at the next send), and we stop it too."""
    twilio.receive(MOBILE, word, to=OUR_NUMBER, at=NOW - timedelta(hours=1))
    pull_replies(con, twilio)
    assert blocked(con, MOBILE, "marketing", "sms")


def test_stop_then_start_in_one_pull_leaves_the_number_subscribed(con, twilio):
    twilio.receive(MOBILE, "STOP", to=OUR_NUMBER, at=NOW - timedelta(hours=2))
    twilio.receive(MOBILE, "yes", to=OUR_NUMBER, at=NOW - timedelta(hours=1))
    assert pull_replies(con, twilio) == {"sms_stop": 1, "sms_start": 1}
    assert not blocked(con, MOBILE, "marketing", "sms")


def test_ordinary_replies_and_our_own_messages_change_nothing(con, twilio):
    twilio.receive(MOBILE, "Can I move my booking to Friday?", to=OUR_NUMBER,
                   at=NOW - timedelta(hours=1))  # fmt: skip
    twilio.client.messages.create(to=MOBILE, from_=OUR_NUMBER, body="STOP")
    assert pull_replies(con, twilio) == {"replies_other": 1}
    assert suppressions(con, "sms") == []


def test_each_reply_is_acted_on_once_however_often_it_is_read(con, twilio):
    twilio.receive(MOBILE, "STOP", to=OUR_NUMBER, at=NOW - timedelta(hours=1))
    pull_replies(con, twilio)
    feedback.lift(con, "sms", MOBILE, reason="opt_in", source="operator", evidence="test",
                  occurred_at=NOW - timedelta(minutes=30))  # fmt: skip
    assert pull_replies(con, twilio, NOW + timedelta(minutes=5)) == {}
    assert not blocked(con, MOBILE, "marketing", "sms")


def test_replies_are_read_across_pages(con, twilio):
    for i in range(1005):
        twilio.receive(f"+6141{i:07d}", "STOP", to=OUR_NUMBER, at=NOW - timedelta(seconds=i + 1))
    assert pull_replies(con, twilio) == {"sms_stop": 1005}


def test_a_reply_stop_reaches_sending_both_ways(con, twilio, tmp_path):
    """Before the pull, Twilio itself refuses (21610) and dispatch records it; after the pull the
    number is suppressed, so nothing more is even attempted."""
    (tmp_path / "templates" / "ping").mkdir(parents=True)
    (tmp_path / "templates" / "ping" / "sms.txt").write_text("Your appointment is tomorrow.")
    twilio.receive(MOBILE, "STOP", to=OUR_NUMBER, at=NOW - timedelta(hours=1))

    def plan(n):
        key = make_send_key("trigger", "reminder", 1, f"appointment:{n}")
        ledger.insert_planned(con, [PlannedMessage(key, "trigger", "reminder", 1, "sms",
                                                   "transactional", "ping", NOW)], NOW)  # fmt: skip
        return key

    def send():
        return dispatch(con, providers={"sms": twilio.provider},
                        prepare=lambda row: Ready(to=MOBILE, context={}),
                        templates=Templates(tmp_path), clock=lambda: NOW)  # fmt: skip

    first = plan(1)
    twilio.provider = TwilioProvider(twilio.provider.settings)  # dispatch closes its providers
    send()
    assert ledger.get(con, first).error_code == "21610"
    assert suppressions(con, "sms") == [("suppress", "stop", "all")]

    pull_replies(con, twilio)  # the same STOP, now read back: nothing new to record
    assert suppressions(con, "sms") == [("suppress", "stop", "all")]
    second = plan(2)
    before = len(twilio.requests)
    twilio.provider = TwilioProvider(twilio.provider.settings)
    send()
    assert ledger.get(con, second).status == "skipped"
    assert not [r for r in twilio.requests[before:] if r[0] == "POST"]


# --- one pull per clinic file ---------------------------------------------------------------


def test_pulls_work_on_a_real_database_file_and_survive_reopening(tmp_path, postmark, twilio):
    db = tmp_path / "clinic.duckdb"
    postmark.bounce(PATIENT, "HardBounce", at=NOW - timedelta(hours=1))
    twilio.receive(MOBILE, "STOP", to=OUR_NUMBER, at=NOW - timedelta(hours=1))
    with open_db(db) as con:
        pull_bounces(con, postmark)
        pull_replies(con, twilio)
    with open_db(db) as con:
        assert pull_bounces(con, postmark, NOW + timedelta(minutes=5)) == {}
        assert pull_replies(con, twilio, NOW + timedelta(minutes=5)) == {}
        assert blocked(con, PATIENT, "transactional") and blocked(con, MOBILE, "marketing", "sms")


# --- the whole loop: a marketing email's one-click header stops the next one ------------------


def test_the_one_click_header_of_a_sent_marketing_email_stops_the_next_one(tmp_path, postmark):
    postmark.set_unsubscribe_handling("broadcast", "Custom")  # ours: our link, our headers
    key = b"loop-test-key"
    folder = tmp_path / "templates" / "news"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Spring news")
    (folder / "body.html").write_text('<p>News</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>')
    (folder / "body.txt").write_text("News. Unsubscribe: {{ unsubscribe_url }}")
    clinic = ClinicConfig(clinic="demo", name="Demo", database=tmp_path / "demo.duckdb")

    def send(campaign: str) -> str:
        send_key = make_send_key("campaign", campaign, 7, "2026-03")
        provider = PostmarkProvider(settings)  # dispatch closes it
        with open_db(clinic.database_path) as con:
            ledger.insert_planned(con, [PlannedMessage(send_key, "campaign", campaign, 7, "email",
                                                       "marketing", "news", NOW)], NOW)  # fmt: skip
            dispatch(con, providers={"email": provider},
                     prepare=lambda row: Ready(to=PATIENT, context={}),
                     templates=Templates(tmp_path), clock=lambda: NOW,
                     unsubscribe=Unsubscribe("demo", f"{app.url}/unsubscribe", key))  # fmt: skip
            return ledger.get(con, send_key).status

    settings = PostmarkSettings(server_token=postmark.server_token, from_address="d@demo.example",
                                base_url=postmark.client.root_api_url, timeout=5)  # fmt: skip
    with ThreadedServer(create_app({"demo": clinic}, key=key, clock=lambda: NOW)) as app:
        assert send("spring") == "sent"
        headers = postmark.accepted[-1]["Headers"]
        if isinstance(headers, list):
            headers = {h["Name"]: h["Value"] for h in headers}
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = re.fullmatch(r"<(.+)>", headers["List-Unsubscribe"])[1]

        # what a mail client does for RFC 8058 one-click
        reply = httpx.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert reply.status_code == 200

        assert send("summer") == "skipped"
    assert len(postmark.accepted) == 1
