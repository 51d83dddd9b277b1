"""Per template and week (tasks/engagement.py): clinic-local weeks, unique opens and clicks, what
counts as delivered, bounced and unsubscribed, the pull's record-once, and the report section."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from tasks import engagement, reports
from tasks.warehouse import memory_db

TZ = "Australia/Melbourne"
NOW = datetime(2026, 3, 11, 1, 0, tzinfo=UTC)  # Wednesday 11 March, 12:00 in Melbourne
MONDAY = date(2026, 3, 9)


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def sent(con, message_id, *, at, template="news", channel="email", to=None, provider_id=None):
    con.execute(
        """INSERT INTO state.messages (message_id, send_key, source_kind, source_name, patient_id,
               channel, purpose, template, due_at, status, provider, provider_message_id,
               to_address, planned_at, sent_at, updated_at)
           VALUES (?, ?, 'campaign', ?, ?, ?, 'marketing', ?, ?, 'sent', 'postmark', ?, ?, ?, ?,
                   ?)""",
        [message_id, f"k{message_id}", template, message_id, channel, template, at,
         provider_id or f"pm-{message_id}", to or f"p{message_id}@example.com", at, at, at],
    )  # fmt: skip


def opened(con, message_id, at, kind="open", first=True):
    events = [{"MessageID": f"pm-{message_id}", "ReceivedAt": at.isoformat(), "FirstOpen": first}]
    return engagement.record_events(con, "postmark", kind, "broadcast", events, NOW)


def test_a_week_is_the_clinics_monday_to_sunday(con):
    # Sunday 8 March 23:30 in Melbourne is still the week before; Monday 00:30 starts this one
    sent(con, 1, at=datetime(2026, 3, 8, 12, 30, tzinfo=UTC))
    sent(con, 2, at=datetime(2026, 3, 8, 13, 30, tzinfo=UTC))
    weeks = [(r["week"], r["sent"]) for r in engagement.weekly_rows(con, TZ, 8, NOW)]
    assert weeks == [(MONDAY - timedelta(weeks=1), 1), (MONDAY, 1)]


def test_only_the_last_n_weeks_are_counted(con):
    sent(con, 1, at=NOW - timedelta(weeks=3))
    sent(con, 2, at=NOW)
    assert [r["week"] for r in engagement.weekly_rows(con, TZ, 2, NOW)] == [MONDAY]
    assert len(engagement.weekly_rows(con, TZ, 4, NOW)) == 2


def test_opens_and_clicks_count_messages_not_events_and_are_recorded_once(con):
    for i in (1, 2, 3):
        sent(con, i, at=NOW - timedelta(hours=5))
    assert opened(con, 1, NOW - timedelta(hours=4)) == {"opens_broadcast": 1}
    opened(con, 1, NOW - timedelta(hours=3), first=False)
    assert opened(con, 1, NOW - timedelta(hours=3), first=False) == {}, "the same event again"
    opened(con, 2, NOW - timedelta(hours=2))
    opened(con, 2, NOW - timedelta(hours=2), kind="click")

    (row,) = engagement.weekly_rows(con, TZ, 8, NOW)
    assert (row["template"], row["sent"], row["opened"], row["clicked"]) == ("news", 3, 2, 1)


def test_bounced_is_not_delivered_and_an_unsubscribe_counts_against_the_latest_message(con):
    sent(con, 1, at=NOW - timedelta(days=1), template="news", to="a@example.com")
    sent(con, 2, at=NOW - timedelta(hours=2), template="offer", to="A@example.com")
    sent(con, 3, at=NOW - timedelta(hours=2), template="offer", to="b@example.com")
    con.execute("INSERT INTO state.email_bounces VALUES ('b1', 'b@example.com', 'hard', ?, "
                "'postmark')", [NOW])  # fmt: skip
    con.execute("INSERT INTO state.email_bounce_messages VALUES ('b1', 'pm-3', 'broadcast', "
                "'HardBounce')")  # fmt: skip
    con.execute(
        "INSERT INTO state.suppressions (channel, address, action, reason, scope, source, "
        "evidence, occurred_at, recorded_at) VALUES ('email', 'a@example.com', 'suppress', "
        "'unsubscribed', 'marketing', 'postmark', 'test', ?, ?)",
        [NOW - timedelta(hours=1), NOW],
    )

    rows = {r["template"]: r for r in engagement.weekly_rows(con, TZ, 8, NOW)}
    assert {k: rows["offer"][k] for k in engagement.COLUMNS} == {
        "sent": 2,
        "delivered": 1,
        "bounced": 1,
        "unsubscribed": 1,
        "opened": 0,
        "clicked": 0,
    }
    assert rows["news"]["unsubscribed"] == 0 and rows["news"]["delivered"] == 1  # fmt: skip


def test_the_report_has_the_section_with_its_chart_and_its_caveat(con):
    sent(con, 1, at=NOW - timedelta(hours=5))
    opened(con, 1, NOW - timedelta(hours=4))
    report = reports.build_report(con, "demo", TZ, 14, NOW)
    page = reports.render_html(report, "Demo", NOW)

    assert "Per template and week" in page and "<svg" in page
    assert "Apple Mail" in page and "100%" in page  # one of one opened
    assert "p1@example.com" not in page


def test_no_messages_says_so_and_draws_no_chart():
    assert "No messages sent" in engagement.html_section([])
    assert "<svg" not in engagement.html_section([])
