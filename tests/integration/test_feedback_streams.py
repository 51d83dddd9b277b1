"""Postmark as it really behaves with two streams, over real HTTP through postmarker, into a real
DuckDB file, run the way the tick runs dispatch and the feedback step.

- The outbound search and the bounce list read the transactional stream unless told another:
  a broadcast email sent just before a crash must be found on its own stream (not sent twice),
  and broadcast bounces must count.
- The broadcast stream's UnsubscribeHandlingType decides whose unsubscribe link and RFC 8058
  headers a marketing email carries: Postmark's (its default) or ours (Custom). Exactly one.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.postmark import PostmarkSandbox
from sandbox.server import ThreadedServer
from tasks.config import ClinicConfig, MarketingListSettings
from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.unsubscribe.app import create_app
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
PATIENT = "pat@example.com"
KEY = b"streams-test-key"
LIMIT = MarketingListSettings().soft_bounce_limit


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    sandbox.clock = lambda: NOW  # a recipient's click on Postmark's page happens "now"
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


@pytest.fixture
def clinic(tmp_path):
    folder = tmp_path / "templates" / "news"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Spring news")
    (folder / "body.html").write_text('<p>News</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>')
    (folder / "body.txt").write_text("News. Unsubscribe: {{ unsubscribe_url }}")
    (tmp_path / "templates" / "reminder").mkdir()
    for part, text in {"subject.txt": "Your visit", "body.html": "<p>See you</p>",
                       "body.txt": "See you"}.items():  # fmt: skip
        (tmp_path / "templates" / "reminder" / part).write_text(text)
    return ClinicConfig(clinic="demo", name="Demo", database=tmp_path / "demo.duckdb")


def provider(postmark, **kw) -> PostmarkProvider:
    return PostmarkProvider(
        PostmarkSettings(server_token=postmark.server_token, from_address="d@demo.example",
                         base_url=postmark.url, timeout=5, **kw)
    )  # fmt: skip


def plan(con, name: str, purpose: str = "marketing", at: datetime = NOW) -> str:
    kind, template = ("campaign", "news") if purpose == "marketing" else ("trigger", "reminder")
    send_key = make_send_key(kind, name, 7, "2026-03")
    ledger.insert_planned(
        con, [PlannedMessage(send_key, kind, name, 7, "email", purpose, template, at)], at
    )
    return send_key


def run_dispatch(con, clinic, email_provider, at: datetime, unsubscribe_url="http://x/u"):
    return dispatch(
        con, providers={"email": email_provider}, prepare=lambda row: Ready(to=PATIENT, context={}),
        templates=Templates(clinic.database_path.parent), clock=lambda: at,
        unsubscribe=Unsubscribe("demo", unsubscribe_url, KEY),
    )  # fmt: skip


def pull_feedback(con, postmark, at: datetime) -> Counter:
    """The tick's feedback step for Postmark: every feed the provider names."""
    counts: Counter = Counter()
    p = provider(postmark)
    for feed in p.feedback_feeds(LIMIT):
        counts.update(feed.pull(con, at))
    p.close()
    return +counts


# --- crash reconciliation searches the message's own stream -------------------------------------


class DiesAfterPostmarkAccepts(PostmarkProvider):
    """The run is killed after Postmark took the batch, before the outcome is recorded."""

    def send(self, messages):
        super().send(messages)
        raise KeyboardInterrupt("killed")


def test_a_broadcast_email_sent_just_before_a_crash_is_found_and_not_sent_again(postmark, clinic):
    dead = DiesAfterPostmarkAccepts(provider(postmark).settings)
    with open_db(clinic.database_path) as con:
        key = plan(con, "spring")
        with pytest.raises(KeyboardInterrupt):
            run_dispatch(con, clinic, dead, NOW)
        assert ledger.get(con, key).status == "sending"
    assert postmark.accepted[0]["MessageStream"] == "broadcast"

    # the next tick, after the 5-minute settle
    with open_db(clinic.database_path) as con:
        result = run_dispatch(con, clinic, provider(postmark), NOW + timedelta(minutes=10))
        row = ledger.get(con, key)
    assert postmark.send_key_counts() == {key: 1}  # not a second marketing email
    assert (row.status, row.status_reason) == ("sent", "reconciled")
    assert row.provider_message_id == postmark.accepted[0]["MessageID"]
    assert result.counts["reconciled_sent"] == 1


def test_postmarks_search_reads_the_transactional_stream_unless_told_another(postmark):
    p = provider(postmark)
    postmark.accepted.append({"To": PATIENT, "MessageID": "m-1", "MessageStream": "broadcast",
                              "Metadata": {"send_key": "k"}, "ReceivedAt": NOW})  # fmt: skip
    assert p.client.call("GET", "/messages/outbound", count=10, offset=0)["TotalCount"] == 0
    assert p.find_by_send_key("k", "broadcast") == "m-1"
    assert p.find_by_send_key("k", "outbound") is None
    p.close()


# --- bounces are read per stream ----------------------------------------------------------------


def test_broadcast_soft_bounces_count_towards_the_limit_with_transactional_ones(postmark, clinic):
    for i in range(LIMIT):
        stream = "broadcast" if i % 2 == 0 else "outbound"
        postmark.bounce(PATIENT, "SoftBounce", stream=stream, at=NOW - timedelta(hours=10 - i))
    postmark.bounce(
        "hard@example.com", "HardBounce", stream="broadcast", at=NOW - timedelta(hours=1)
    )

    with open_db(clinic.database_path) as con:
        counts = pull_feedback(con, postmark, NOW)
        assert counts["bounces_soft"] == LIMIT and counts["bounces_hard"] == 1
        assert counts["suppressed_soft_bounce_limit"] == 1
        assert ledger.suppressed_addresses(con, "email", [PATIENT], "marketing")
        assert ledger.suppressed_addresses(con, "email", ["hard@example.com"], "transactional")
        streams = con.execute(
            "SELECT message_stream, count(*) FROM state.email_bounce_messages GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert streams == [("broadcast", 4), ("outbound", 2)]
        # each stream has its own cursor; a second pull counts nothing twice
        assert pull_feedback(con, postmark, NOW + timedelta(minutes=5)) == {}


# --- unsubscribe handling on the broadcast stream -----------------------------------------------


def unsubscribe_links(text: str) -> list[str]:
    return re.findall(r"https?://[^\s\"<>]+/unsubscribe[^\s\"<>]*", text)


def test_with_postmark_handling_the_mail_carries_only_postmarks_link_and_its_unsubscribes_come_back(
    postmark, clinic
):
    with open_db(clinic.database_path) as con:
        key = plan(con, "spring")
        reminder = plan(con, "visit", purpose="transactional", at=NOW + timedelta(hours=1))
        result = run_dispatch(con, clinic, provider(postmark), NOW)
        assert ledger.get(con, key).status == "sent"
        assert result.counts["unsubscribe_link_by_postmark"] == 1  # what the run reports

    (sent,) = postmark.accepted
    assert sent["Headers"] == []  # no List-Unsubscribe of ours: Postmark adds its own
    assert (
        "{{{ pm:unsubscribe }}}" in sent["HtmlBody"]
        and "{{{ pm:unsubscribe }}}" in sent["TextBody"]
    )
    got = postmark.delivered(sent["MessageID"])
    (html_link,), (text_link,) = (
        unsubscribe_links(got["HtmlBody"]),
        unsubscribe_links(got["TextBody"]),
    )
    assert html_link == text_link and html_link.startswith(postmark.url)
    assert got["Headers"]["List-Unsubscribe"] == f"<{html_link}>"

    # the recipient's mail client does RFC 8058 one-click on Postmark's header
    assert httpx.post(html_link, data={"List-Unsubscribe": "One-Click"}, timeout=10).is_success

    with open_db(clinic.database_path) as con:
        assert pull_feedback(con, postmark, NOW + timedelta(minutes=5)) == {
            "suppressed_unsubscribed": 1
        }
        (evidence,) = con.execute(
            "SELECT evidence FROM state.suppressions WHERE reason = 'unsubscribed'"
        ).fetchone()
        assert "stream broadcast" in evidence and "origin Recipient" in evidence
        assert PATIENT not in evidence
        later = plan(con, "summer", at=NOW + timedelta(hours=2))
        run_dispatch(con, clinic, provider(postmark), NOW + timedelta(hours=2))
        assert ledger.get(con, later).status_reason == "address suppressed (marketing)"
        assert ledger.get(con, reminder).status == "sent"  # reminders still go


def test_with_custom_handling_the_mail_carries_only_our_link_and_headers(postmark, clinic):
    postmark.set_unsubscribe_handling("broadcast", "Custom")
    with ThreadedServer(create_app({"demo": clinic}, key=KEY, clock=lambda: NOW)) as app:
        with open_db(clinic.database_path) as con:
            plan(con, "spring")
            result = run_dispatch(con, clinic, provider(postmark), NOW, f"{app.url}/unsubscribe")
        assert "unsubscribe_link_by_postmark" not in result.counts
        (sent,) = postmark.accepted
        got = postmark.delivered(sent["MessageID"])
        (html_link,), (text_link,) = (unsubscribe_links(got["HtmlBody"]),
                                      unsubscribe_links(got["TextBody"]))  # fmt: skip
        assert html_link.replace("&amp;", "&") == text_link and text_link.startswith(app.url)
        assert got["Headers"] == {"List-Unsubscribe": f"<{text_link}>",
                                  "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}  # fmt: skip
        assert "pm:unsubscribe" not in sent["HtmlBody"] + sent["TextBody"]


def test_a_marketing_stream_postmark_does_not_know_holds_email_and_says_which_setting(
    postmark, clinic
):
    with open_db(clinic.database_path) as con:
        key = plan(con, "spring")
        result = run_dispatch(con, clinic, provider(postmark, marketing_stream="news"), NOW)
        assert ledger.get(con, key).status == "planned"
    assert postmark.accepted == []
    (problem,) = result.problems
    assert "'news'" in problem and "marketing_stream" in problem and PATIENT not in problem


def test_a_marketing_stream_postmark_does_not_know_holds_marketing_only(postmark, clinic):
    """A failure holds only what depends on it: the reminder beside the campaign still goes."""
    with open_db(clinic.database_path) as con:
        campaign = plan(con, "spring")
        reminder = plan(con, "reminder-24h", purpose="transactional")
        result = run_dispatch(con, clinic, provider(postmark, marketing_stream="news"), NOW)
        assert ledger.get(con, campaign).status == "planned"
        assert ledger.get(con, reminder).status == "sent"
    assert len(postmark.accepted) == 1
    assert result.counts["sent"] == 1
