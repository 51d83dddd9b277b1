"""Reports: per source and per local day, what went, bounced, failed or was skipped and why;
how the lists grew and churned; an HTML page with charts and no personal data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tasks import reports
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.warehouse import memory_db

# 10 March 2026, 20:00 in Melbourne (UTC+11): the report's "today" is 10 March there.
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
TZ = "Australia/Melbourne"


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def message(con, patient_id, *, source=("trigger", "reminder-24h"), channel="email",
            status="sent", at=NOW - timedelta(hours=1), reason=None, provider_id=None):  # fmt: skip
    kind, name = source
    key = make_send_key(kind, name, patient_id, f"o{patient_id}")
    purpose = "transactional" if kind == "trigger" else "marketing"
    ledger.insert_planned(con, [PlannedMessage(key, kind, name, patient_id, channel, purpose,
                                               "t", at)], at - timedelta(days=1))  # fmt: skip
    mid = ledger.get(con, key).message_id
    if status in ("skipped", "cancelled"):
        ledger.transition(con, [mid], "planned", status, at, values={"status_reason": [reason]})
        return mid
    ledger.transition(con, [mid], "planned", "sending", at,
                      values={"to_address": [f"person{patient_id}@example.com"]})  # fmt: skip
    values = {"status_reason": [reason]}
    if status == "sent":
        values["provider_message_id"] = [provider_id or f"pm-{patient_id}"]
        values["provider"] = ["twilio" if channel == "sms" else "postmark"]
    ledger.transition(con, [mid], "sending", status, at, values=values)
    return mid


def bounce(con, bounce_id, provider_id, at, kind="hard"):
    con.execute("INSERT INTO state.email_bounces VALUES (?, 'x@example.com', ?, ?, 'postmark')",
                [bounce_id, kind, at])  # fmt: skip
    con.execute("INSERT INTO state.email_bounce_messages VALUES (?, ?, 'outbound', 'HardBounce')",
                [bounce_id, provider_id])  # fmt: skip


def membership(con, audience, event, at, n, *, initial=False):
    con.execute(
        "INSERT INTO state.audiences VALUES (?, 'b0', ?, NULL) ON CONFLICT DO NOTHING",
        [audience, at],
    )
    for i in range(n):
        con.execute(
            "INSERT INTO state.membership_events (build_id, audience, member_key, patient_id, "
            "event, initial, occurred_at) VALUES ('b1', ?, ?, ?, ?, ?, ?)",
            [audience, f"m{event}{i}@example.com", i, event, initial, at],
        )
        if event == "joined":
            con.execute(  # one row per (audience, member_key), as the runner keeps it
                "INSERT INTO state.audience_members SELECT $a, $k, $p, $at WHERE NOT EXISTS "
                "(FROM state.audience_members WHERE audience = $a AND member_key = $k)",
                {"a": audience, "k": f"m{event}{i}@example.com", "p": i, "at": at},
            )


def build(con, days=7):
    return reports.build_report(con, "demo", TZ, days, NOW)


def test_messages_are_counted_per_source_per_outcome(con):
    message(con, 1)
    message(con, 2)
    message(con, 3, status="failed", reason="twilio: not a mobile number")
    message(con, 4, status="skipped", reason="past its grace window")
    message(con, 5, source=("campaign", "spring"), status="skipped",
            reason="address suppressed (marketing)")  # fmt: skip

    totals = build(con).totals_by_source()

    assert totals[("trigger", "reminder-24h")]["sent"] == 2
    assert totals[("trigger", "reminder-24h")]["failed"] == 1
    assert totals[("trigger", "reminder-24h")]["skipped"] == 1
    assert totals[("campaign", "spring")]["skipped"] == 1


def test_skips_and_failures_are_reported_with_their_reasons(con):
    message(con, 1, status="skipped", reason="past its grace window")
    message(con, 2, status="skipped", reason="past its grace window")
    message(con, 3, status="failed", reason="postmark: inactive recipient")
    reasons = build(con).reasons
    assert reasons[("trigger", "reminder-24h", "skipped", "past its grace window")] == 2
    assert reasons[("trigger", "reminder-24h", "failed", "postmark: inactive recipient")] == 1


def test_a_bounce_counts_against_the_source_of_the_message_that_bounced(con):
    message(con, 1, source=("journey", "new-patient"), provider_id="pm-A")
    message(con, 2, source=("journey", "new-patient"), provider_id="pm-B")
    bounce(con, "b1", "pm-A", NOW - timedelta(minutes=30))
    bounce(con, "b2", "pm-unknown", NOW - timedelta(minutes=30))

    totals = build(con).totals_by_source()[("journey", "new-patient")]
    assert (totals["sent"], totals["bounced"]) == (2, 1)


def test_days_are_the_clinics_local_days(con):
    # 13:30 UTC on 9 March is 00:30 on 10 March in Melbourne
    message(con, 1, at=datetime(2026, 3, 9, 13, 30, tzinfo=UTC))
    message(con, 2, at=datetime(2026, 3, 9, 12, 30, tzinfo=UTC))
    per_day = build(con).per_day()
    assert per_day[datetime(2026, 3, 10).date()]["sent"] == 1
    assert per_day[datetime(2026, 3, 9).date()]["sent"] == 1


def test_messages_outside_the_window_are_left_out(con):
    message(con, 1, at=NOW - timedelta(days=10))
    message(con, 2)
    report = build(con, days=7)
    assert sum(d["sent"] for d in report.per_day().values()) == 1
    assert report.first_day == datetime(2026, 3, 4).date()


def test_list_growth_and_churn_leave_out_the_members_a_list_started_with(con):
    membership(con, "email_marketing_list", "joined", NOW - timedelta(days=20), 50, initial=True)
    membership(con, "email_marketing_list", "joined", NOW - timedelta(days=2), 3)
    membership(con, "email_marketing_list", "left", NOW - timedelta(days=1), 2)
    report = build(con)
    assert reports.list_rows(report) == [
        {"day": "2026-03-08", "audience": "email_marketing_list", "joined": 3, "left": 0},
        {"day": "2026-03-09", "audience": "email_marketing_list", "joined": 0, "left": 2},
    ]
    assert report.list_sizes == {"email_marketing_list": 50}


def test_suppressions_are_counted_by_reason_and_source(con):
    for i in range(3):
        ledger.add_suppression(con, channel="sms", address=f"+6140000000{i}", scope="all",
                               reason="stop", source="twilio", evidence="t",
                               occurred_at=NOW - timedelta(hours=2))  # fmt: skip
    assert reports.suppression_rows(build(con)) == [
        {"day": "2026-03-10", "channel": "sms", "action": "suppress", "reason": "stop",
         "source": "twilio", "count": 3}
    ]  # fmt: skip


def delivered(con, message_id, status, code=None):
    """What the delivery feed records (tasks/feedback_delivery.py) for an SMS Twilio accepted."""
    con.execute(
        "INSERT INTO state.sms_deliveries VALUES (?, 'twilio', ?, ?, ?, ?, ?, ?, 1, 'poll')",
        [message_id, f"SM{message_id}", status, code,
         status in ("delivered", "undelivered", "failed"), NOW, NOW],
    )  # fmt: skip


def test_sms_delivered_vs_sent_per_trigger(con):
    reminder, welcome = ("trigger", "sms-reminder-24h"), ("trigger", "sms-welcome")
    for i in range(1, 5):
        delivered(con, message(con, i, source=reminder, channel="sms"), "delivered")
    delivered(con, message(con, 5, source=reminder, channel="sms"), "undelivered", "30006")
    delivered(con, message(con, 6, source=reminder, channel="sms"), "sent")  # no receipt yet
    message(con, 7, source=reminder, channel="sms")  # not asked about yet
    delivered(con, message(con, 8, source=welcome, channel="sms"), "failed", "30001")
    message(con, 9, source=reminder)  # email: not an SMS delivery
    message(con, 10, source=reminder, channel="sms", status="failed")  # never accepted

    rows = reports.delivery_rows(build(con))

    assert rows == [
        {"source": "trigger:sms-reminder-24h", "sent": 7, "delivered": 4, "undelivered": 1,
         "failed": 0, "no_receipt": 2, "delivered_pct": 57.1},
        {"source": "trigger:sms-welcome", "sent": 1, "delivered": 0, "undelivered": 0,
         "failed": 1, "no_receipt": 0, "delivered_pct": 0.0},
    ]  # fmt: skip
    page = reports.render_html(build(con), "Demo", NOW)
    assert "SMS: delivered vs sent" in page and "57.1%" in page


def test_sms_the_outbox_wrote_are_not_called_no_sms_in_the_delivery_table(con):
    # The demo's SMS go to the outbox, which reports no delivery: the table said "No SMS sent in
    # this period." above a per-template table counting them sent.
    mid = message(con, 1, source=("trigger", "sms-reminder-24h"), channel="sms")
    con.execute("UPDATE state.messages SET provider = 'outbox' WHERE message_id = ?", [mid])
    page = reports.render_html(build(con), "Demo", NOW)
    assert "No SMS sent in this period." not in page
    assert "No SMS sent through Twilio in this period" in page


def test_the_html_report_has_charts_tables_and_no_personal_data(con):
    message(con, 1, provider_id="pm-A")
    message(con, 2, status="failed", reason="twilio: not a mobile number")
    bounce(con, "b1", "pm-A", NOW - timedelta(minutes=30))
    membership(con, "email_marketing_list", "joined", NOW - timedelta(days=2), 3)
    ledger.add_suppression(con, channel="email", address="person9@example.com",
                           scope="marketing", reason="unsubscribed", source="unsubscribe_link",
                           evidence="t", occurred_at=NOW)  # fmt: skip

    page = reports.render_html(build(con), "Demo <Physio>", NOW)

    # outcomes, bounces, the email list's joins and leaves, email per week (tasks/engagement.py)
    assert page.count("<svg") == 4
    assert "Demo &lt;Physio&gt;" in page and "<Physio>" not in page
    assert "trigger:reminder-24h" in page and "twilio: not a mobile number" in page
    assert not re.search(r"[\w.]+@example\.com", page), "an address reached the report"


def test_an_empty_clinic_gives_a_report_that_says_so(con):
    page = reports.render_html(build(con), "Demo", NOW)
    assert "No messages in this period." in page
    assert page.count("<svg") == 2


def test_the_chart_draws_one_bar_per_day_and_outcome_with_a_height_for_its_count():
    days = [datetime(2026, 3, d).date() for d in (1, 2)]
    svg = reports.svg_bars(days, {"sent": [4, 2], "failed": [0, 1]}, title="t", height=136)
    bars = re.findall(r'height="([\d.]+)" fill="[^"]+"><title>([^<]+)</title>', svg)
    # plot height 136 - 28 - 36 = 72 for a top of 4: 18 per message
    assert bars == [("72.0", "2026-03-01: 4 sent"), ("36.0", "2026-03-02: 2 sent"),
                    ("18.0", "2026-03-02: 1 failed")]  # fmt: skip


@pytest.fixture
def report_clinic(tmp_path):
    """A clinic folder with clinic.yaml and its (empty) DuckDB file, as `relay report` finds it."""
    import yaml

    from tasks.warehouse import open_db

    (tmp_path / "clinic.yaml").write_text(yaml.safe_dump(
        {"clinic": "disk", "name": "Disk Physio", "database": "clinic.duckdb"}))  # fmt: skip
    with open_db(tmp_path / "clinic.duckdb"):
        pass
    return tmp_path / "clinic.yaml"


def test_report_command_makes_the_out_folder_and_refuses_a_name_that_is_not_html(
    report_clinic, tmp_path
):
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.errors import UserFacingError

    def report(out):
        return CliRunner().invoke(app, ["report", "--clinic", str(report_clinic), "--out", out])

    done = report(str(tmp_path / "reports" / "march.html"))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "reports" / "march.html").read_text().startswith("<!doctype html>")
    png = report(str(tmp_path / "chart.png"))  # HTML under a picture's name: refused, one line
    assert isinstance(png.exception, UserFacingError) and ".html" in str(png.exception)
    assert not (tmp_path / "chart.png").exists()
