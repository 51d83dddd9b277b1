"""Opens and clicks: marketing email sent with tracking through the real postmarker client to the
Postmark sandbox, its opens and clicks pulled back over HTTP into DuckDB, and what each template
did per week (tasks/engagement.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandbox.postmark import PostmarkSandbox
from tasks import engagement, feedback
from tasks.messages import ledger
from tasks.messages.dispatch import dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.warehouse import memory_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # a Tuesday
TZ = "Australia/Sydney"


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


@pytest.fixture
def templates(tmp_path):
    footer = " Unsubscribe: {{ unsubscribe_url }}"
    for name, html, text_end in (
        ("news", '<p>News</p><a href="https://clinic.example/book">Book</a>'
                 '<a href="{{ unsubscribe_url }}">Unsubscribe</a>', footer),
        ("reminder", "<p>See you tomorrow</p>", ""),
    ):  # fmt: skip
        folder = tmp_path / "templates" / name
        folder.mkdir(parents=True)
        (folder / "subject.txt").write_text(name)
        (folder / "body.html").write_text(html)
        (folder / "body.txt").write_text(f"{name} https://clinic.example/book{text_end}")
    return Templates(tmp_path)


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    sandbox.clock = lambda: sandbox.now
    sandbox.now = NOW
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


def provider(postmark, *, opens=False, links=False) -> PostmarkProvider:
    p = PostmarkProvider(
        PostmarkSettings(server_token=postmark.server_token, from_address="d@demo.example",
                         base_url=postmark.url, timeout=5)
    )  # fmt: skip
    p.track_marketing(opens, links)
    return p


def send(con, postmark, templates, patients, *, purpose="marketing", template="news", **tracking):
    kind = "campaign" if purpose == "marketing" else "trigger"
    ledger.insert_planned(
        con,
        [PlannedMessage(make_send_key(kind, template, p, "2026-03"), kind, template, p, "email",
                        purpose, template, NOW) for p in patients],
        NOW,
    )  # fmt: skip
    dispatch(con, providers={"email": provider(postmark, **tracking)},
             prepare=lambda row: Ready(to=f"p{row.patient_id}@example.com", context={}),
             templates=templates, clock=lambda: NOW)  # fmt: skip
    return {m["To"]: m["MessageID"] for m in postmark.accepted}


def pull(con, postmark, now=NOW):
    p = provider(postmark)
    counts = {}
    try:
        for feed in p.engagement_feeds():
            counts.update(feed.pull(con, now))
    finally:
        p.close()
    return counts


def rows(con, now=NOW):
    return {(r["template"], r["week"]): {k: r[k] for k in engagement.COLUMNS}
            for r in engagement.weekly_rows(con, TZ, weeks=4, now=now)}  # fmt: skip


def test_without_the_clinics_setting_nothing_is_tracked_and_nothing_comes_back(
    con, postmark, templates
):
    ids = send(con, postmark, templates, [1])
    assert postmark.accepted[0]["TrackOpens"] is False
    assert postmark.accepted[0]["TrackLinks"] == "None"
    assert not postmark.open_message(ids["p1@example.com"])
    assert not postmark.click_message(ids["p1@example.com"])
    assert pull(con, postmark) == {}


def test_the_setting_tracks_marketing_email_and_never_reminders(con, postmark, templates):
    send(con, postmark, templates, [1], opens=True, links=True)
    send(con, postmark, templates, [2], purpose="transactional", template="reminder",
         opens=True, links=True)  # fmt: skip
    marketing, reminder = postmark.accepted
    assert (marketing["MessageStream"], marketing["TrackOpens"], marketing["TrackLinks"]) == (
        "broadcast",
        True,
        "HtmlAndText",
    )
    assert (reminder["MessageStream"], reminder["TrackOpens"], reminder["TrackLinks"]) == (
        "outbound", False, "None")  # fmt: skip
    assert not postmark.open_message(reminder["MessageID"])


def test_opens_and_clicks_count_once_per_message_however_often_and_however_often_pulled(
    con, postmark, templates
):
    ids = send(con, postmark, templates, [1, 2, 3, 4], opens=True, links=True)
    one, two, three, four = (ids[f"p{i}@example.com"] for i in (1, 2, 3, 4))
    postmark.now = NOW + timedelta(hours=2)
    for minute, message_id in enumerate((one, one, one, two)):  # three opens of the first
        assert postmark.open_message(message_id, at=NOW + timedelta(minutes=10 + minute))
    assert postmark.click_message(one, at=NOW + timedelta(minutes=20))
    assert postmark.click_message(one, at=NOW + timedelta(minutes=21))
    postmark.bounce("p3@example.com", "HardBounce", stream="broadcast", message_id=three,
                    at=NOW + timedelta(minutes=5))  # fmt: skip
    postmark.suppress("p4@example.com", "broadcast", at=NOW + timedelta(hours=1))  # unsubscribed

    first = pull(con, postmark, NOW + timedelta(hours=3))
    for feed in provider(postmark).feedback_feeds(5):
        feed.pull(con, NOW + timedelta(hours=3))

    assert first == {"opens_broadcast": 4, "clicks_broadcast": 2}
    assert pull(con, postmark, NOW + timedelta(hours=4)) == {}, "pulled twice, taken once"
    week = datetime(2026, 3, 9).date()  # Monday in Sydney
    assert rows(con) == {("news", week): {"sent": 4, "delivered": 3, "bounced": 1,
                                          "unsubscribed": 1, "opened": 2, "clicked": 1}}  # fmt: skip
    stored = con.execute(
        "SELECT kind, count(*), count(*) FILTER (WHERE first_open) FROM state.email_engagement "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert stored == [("click", 2, 0), ("open", 4, 2)]
    text = " ".join(str(r) for r in con.execute("SELECT * FROM state.email_engagement").fetchall())
    assert "@" not in text and "clinic.example" not in text, "no address, no link stored"


def test_activity_arrives_along_the_sandbox_clock_and_each_pull_takes_what_is_new(
    con, postmark, templates
):
    postmark.open_rate, postmark.click_rate = 1.0, 0.5
    send(con, postmark, templates, range(1, 21), opens=True, links=True)

    assert pull(con, postmark) == {}, "nobody has opened anything yet"
    postmark.now = NOW + timedelta(days=1)
    early = pull(con, postmark, postmark.now).get("opens_broadcast", 0)
    postmark.now = NOW + timedelta(days=4)
    late = pull(con, postmark, postmark.now).get("opens_broadcast", 0)

    assert early > 0 and early + late == len(postmark.opens) > 20, "repeated opens listed"
    (counts,) = rows(con, postmark.now).values()
    assert counts["opened"] == 20
    assert counts["clicked"] == len({c["MessageID"] for c in postmark.clicks}) > 0


def test_a_pull_pages_down_to_its_cursor_and_no_deeper_than_postmark_allows(
    con, postmark, templates
):
    ids = send(con, postmark, templates, [1], opens=True)
    message = postmark.accepted[0]
    for i in range(10_050):  # more opens than Postmark lets anyone page through
        postmark._record_open(message, NOW + timedelta(seconds=i), i == 0)
    postmark.now = NOW + timedelta(days=1)

    counts = pull(con, postmark, postmark.now)

    assert counts["opens_broadcast"] == 10_000
    assert counts["opens_broadcast_past_postmark_10000_limit"] == 1
    assert rows(con, postmark.now)[("news", datetime(2026, 3, 9).date())]["opened"] == 1
    postmark.requests.clear()
    postmark.open_message(ids["p1@example.com"], at=NOW + timedelta(hours=20))
    assert pull(con, postmark, postmark.now) == {"opens_broadcast": 1}
    opens_pages = [p for _, p in postmark.requests if p.endswith("/opens")]
    # an hour before the cursor (~3,600 opens: 8 pages) plus the other stream's one, not 21
    assert len(opens_pages) == 9
    assert feedback.cursor(con, "postmark", "opens:broadcast") == NOW + timedelta(hours=20)
