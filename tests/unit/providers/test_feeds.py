"""Each provider says what it reports back after sending; the feedback flow pulls exactly that."""

from __future__ import annotations

from pathlib import Path

from tasks.providers.outbox import OutboxProvider
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings


def test_the_outbox_reports_nothing_back(tmp_path):
    outbox = OutboxProvider(tmp_path, email_from="d@demo.example", sms_from="Demo")
    assert outbox.feedback_feeds(5) == []


def test_postmark_reports_each_streams_bounces_and_suppressions_once():
    postmark = PostmarkProvider(PostmarkSettings("token", "d@demo.example"))
    assert [f.name for f in postmark.feedback_feeds(5)] == [
        "postmark-bounces-outbound", "postmark-bounces-broadcast",
        "postmark-suppressions-outbound", "postmark-suppressions-broadcast",
    ]  # fmt: skip
    same = PostmarkProvider(
        PostmarkSettings("token", "d@demo.example", marketing_stream="outbound")
    )
    assert [f.name for f in same.feedback_feeds(5)] == [
        "postmark-bounces-outbound", "postmark-suppressions-outbound"
    ]  # fmt: skip


def test_twilio_reports_replies_and_what_became_of_each_sms():
    twilio = TwilioProvider(TwilioSettings("AC" + "0" * 32, "token", from_number="+61400000000"))
    assert [f.name for f in twilio.feedback_feeds(5)] == ["twilio-replies", "twilio-delivery"]


def test_postmark_mail_reaches_people_unless_postmark_is_a_stand_in_on_this_machine():
    """Dispatch insists on a working unsubscribe link only where mail reaches patients."""
    real = PostmarkProvider(PostmarkSettings("token", "d@demo.example"))
    sandbox = PostmarkProvider(
        PostmarkSettings("token", "d@demo.example", base_url="http://127.0.0.1:8123")
    )
    outbox = OutboxProvider(Path("/nonexistent"), email_from="d@demo.example", sms_from="Demo")
    assert real.reaches_people and not sandbox.reaches_people
    assert not getattr(outbox, "reaches_people", False)
