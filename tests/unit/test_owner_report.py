"""The owner's weekly report: its week, its settings, its content (counts only), and that it goes
once per week even across a crash between sending and recording (the outbox as the provider)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from html import escape

import pytest

from tasks import engagement, owner_report
from tasks.config import ClinicConfig, ConfigError, load_clinic
from tasks.providers.outbox import OutboxProvider, list_messages
from tasks.report_settings import ReportSettings
from tests.unit.test_bookings_won import message
from tests.unit.triggers.test_plan import Clinic

TZ = "Australia/Melbourne"
MONDAY = ReportSettings(to="owner@clinic.example")


def at_local(day: date, hour: int) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


# --- which week --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_on", "hour", "week"),
    [
        (date(2026, 11, 23), 8, (date(2026, 11, 16), date(2026, 11, 22))),  # Monday 08:00
        (date(2026, 11, 23), 0, (date(2026, 11, 16), date(2026, 11, 22))),  # Monday 00:00 local
        (date(2026, 11, 27), 15, (date(2026, 11, 16), date(2026, 11, 22))),  # a rerun on Friday
        (date(2026, 11, 22), 23, (date(2026, 11, 9), date(2026, 11, 15))),  # Sunday: the one before
    ],
)
def test_every_run_in_a_week_reports_the_same_week_in_clinic_time(run_on, hour, week):
    found = owner_report.week_for("demo", MONDAY, TZ, at_local(run_on, hour))
    assert (found.start, found.end) == week
    assert found.send_key == f"report:demo:{week[0].isoformat()}"


def test_the_week_follows_the_configured_weekday():
    friday = ReportSettings(to="owner@clinic.example", weekday="friday")
    found = owner_report.week_for("demo", friday, TZ, at_local(date(2026, 11, 23), 8))
    assert (found.start, found.end) == (date(2026, 11, 13), date(2026, 11, 19))


def test_bookings_won_counts_the_week_that_ended_n_days_before_the_reported_week():
    week = owner_report.Week("demo", date(2026, 11, 16), date(2026, 11, 22))
    first, last = owner_report.cohort(week, 14, TZ)
    assert (first, last) == (at_local(date(2026, 11, 2), 0), at_local(date(2026, 11, 9), 0))


# --- settings ----------------------------------------------------------------------------------


def test_the_report_settings_give_the_schedule_as_cron_in_clinic_time():
    assert MONDAY.cron == "0 8 * * 1"
    assert ReportSettings(to="o@c.example", weekday="sunday", at="18:30").cron == "30 18 * * 0"
    assert load_clinic("demo").report.to == "owner@demo-physio.example"


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("  to: owner at clinic\n", "report.to: Value error, 'owner at clinic' is not one email"),
        ("  to: a@b.example\n  at: 8:00\n", 'write the time in quotes, e.g. "08:00"'),
        ("  to: a@b.example\n  weekday: mon\n", "report.weekday: Input should be 'monday'"),
        ("  to: a@b.example\n  booked_within_days: 0\n", "report.booked_within_days"),
        ("  too: a@b.example\n", "report.too: unknown setting"),
    ],
)
def test_a_bad_report_section_is_a_clear_error_naming_the_field(tmp_path, section, says):
    path = tmp_path / "clinic.yaml"
    path.write_text(f"clinic: x\nname: X\nreport:\n{section}", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    assert says in str(err.value)


@pytest.mark.parametrize(
    "to",
    ["owner@192.168.0.1", "owner@clinic.c0m", "o" * 65 + "@clinic.com.au", "owner@localhost"],
)
def test_an_address_the_report_cannot_go_to_is_refused_when_the_clinic_loads(tmp_path, to):
    # One rule for an email address: the one the report flow checks before sending. An address
    # loading accepted was refused only on the Monday morning, a week after the edit.
    path = tmp_path / "clinic.yaml"
    path.write_text(f"clinic: x\nname: X\nreport:\n  to: {to}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not one email address"):
        load_clinic(path)


# --- the content and once a week ---------------------------------------------------------------

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # Monday 19:00 in Melbourne


@pytest.fixture
def clinic():
    c = Clinic()
    for p in (1, 2):
        c.patient(p)
    message(c.con, "trigger", "welcome", 1, NOW - 3 * timedelta(days=1))
    message(c.con, "trigger", "welcome", 2, NOW - 20 * timedelta(days=1))
    c.build(NOW)
    yield c
    c.con.close()


def config() -> ClinicConfig:
    return ClinicConfig(
        clinic="test", name="Test Physio", time_zone=TZ, report={"to": "owner@clinic.example"}
    )


def test_the_report_holds_counts_and_how_they_are_counted_never_a_patient(clinic):
    cfg = config()
    week = owner_report.week_for("test", cfg.report, TZ, NOW)
    done = owner_report.compose(clinic.con, cfg, week, NOW)
    html, text, md = done.email.html, done.email.text, done.markdown
    assert "<svg" in html and "Bookings won" in html and "How it is counted" in html
    # the engagement section (tasks/engagement.py) with its note on what opens can't tell
    assert "delivered, bounced, unsubscribed, opened, clicked" in html
    assert escape(engagement.NOTE) in html
    assert "trigger:welcome: 1 sent" in text  # this week's; the other was weeks ago
    assert "within 14 days" in md
    for personal in ("Pat1", "Pat2", "Tester", "patient1@", "patient2@", "0412"):
        assert personal not in html + text + md


def _outbox(tmp_path) -> OutboxProvider:
    return OutboxProvider(tmp_path / "outbox", email_from="clinic@x.example", sms_from="X")


def _send(con, week, provider, now, *, crash_before_send=False, crash_before_record=False):
    """What flows/report.py does, with a crash where asked; returns the week's status."""
    status = owner_report.settle(con, week, provider, now)
    if status is not None:
        return status
    email = owner_report.compose(con, config(), week, now).email
    message_ = owner_report.outgoing(week, "owner@clinic.example", email)
    owner_report.claim(con, week, provider.name, message_.content_hash, now)
    if crash_before_send:
        return "crashed"
    (outcome,) = provider.send([message_])
    if crash_before_record:
        return "crashed"
    return owner_report.record(con, week, outcome, now)


def test_a_second_run_in_the_week_sends_nothing(clinic, tmp_path):
    provider = _outbox(tmp_path)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    assert _send(clinic.con, week, provider, NOW) == "sent"
    assert _send(clinic.con, week, provider, NOW + timedelta(days=2)) == "sent"
    sent = list_messages(tmp_path / "outbox")
    assert [(m["to"], m["source"]) for m in sent] == [("owner@clinic.example", "owner-report")]
    # the next week is another report
    later = owner_report.week_for("test", config().report, TZ, NOW + timedelta(days=7))
    assert _send(clinic.con, later, provider, NOW + timedelta(days=7)) == "sent"
    assert len(list_messages(tmp_path / "outbox")) == 2
    newest = owner_report.latest(clinic.con)  # what the tick summary links
    assert (newest["week_start"], newest["status"]) == (later.start, "sent")


def test_a_crash_after_sending_is_settled_by_asking_the_provider_not_sent_twice(clinic, tmp_path):
    provider = _outbox(tmp_path)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    assert _send(clinic.con, week, provider, NOW, crash_before_record=True) == "crashed"
    assert owner_report.current(clinic.con, week)["status"] == "sending"
    assert _send(clinic.con, week, provider, NOW + timedelta(minutes=1)) == "sent"
    assert len(list_messages(tmp_path / "outbox")) == 1


def test_a_crash_before_sending_sends_it_on_the_next_run(clinic, tmp_path):
    provider = _outbox(tmp_path)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    assert _send(clinic.con, week, provider, NOW, crash_before_send=True) == "crashed"
    assert list_messages(tmp_path / "outbox") == []
    assert _send(clinic.con, week, provider, NOW + timedelta(minutes=1)) == "sent"
    assert len(list_messages(tmp_path / "outbox")) == 1


def test_an_unknown_report_is_never_resent_unless_a_person_says_so(clinic, tmp_path):
    provider = _outbox(tmp_path)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    _send(clinic.con, week, provider, NOW, crash_before_send=True)
    from tasks.providers.common import Outcome

    owner_report.record(clinic.con, week, Outcome("unknown", reason="timed out"), NOW)
    assert owner_report.settle(clinic.con, week, provider, NOW + timedelta(hours=1)) == "unknown"
    assert owner_report.settle(clinic.con, week, provider, NOW, resend=True) is None
    assert _send(clinic.con, week, provider, NOW + timedelta(hours=2)) == "sent"


def test_the_tick_summary_links_the_latest_report():
    from flows.report import summary_line

    assert summary_line(None, "north_side") == ""
    line = summary_line(
        {"week_start": date(2026, 11, 16), "week_end": date(2026, 11, 22), "status": "sent",
         "sent_at": NOW}, "north_side",
    )  # fmt: skip
    assert "[relay-report-north-side](/artifacts/key/relay-report-north-side)" in line
    assert "2026-11-16 to 2026-11-22, sent 2026-11-23 08:00 UTC" in line


def test_the_weeks_engagement_table_counts_that_week_whatever_its_weekday():
    """Per template and week, in the owner's report, is the reported week (a Wednesday report:
    Wednesday to Tuesday), not the calendar week of its last day: the Thursday and Friday sends
    were left out, and one sent on the report's own morning (after the week) was counted."""
    from tasks.warehouse import memory_db
    from tests.unit.test_engagement import sent

    con = memory_db()
    for n, (day, hour) in enumerate([(12, 10), (13, 10), (16, 10), (18, 7)], start=1):
        sent(con, n, at=at_local(date(2026, 11, day), hour))  # the last: after the week
    cfg = ClinicConfig(
        clinic="test", name="Test Physio", time_zone=TZ,
        report={"to": "owner@clinic.example", "weekday": "wednesday"},
    )  # fmt: skip
    now = at_local(date(2026, 11, 18), 8)
    week = owner_report.week_for("test", cfg.report, TZ, now)
    assert (week.start, week.end) == (date(2026, 11, 11), date(2026, 11, 17))
    html = owner_report.compose(con, cfg, week, now).email.html
    con.close()
    rows = html.split("delivered, bounced, unsubscribed, opened, clicked</h2>")[1]
    assert "<td>news</td><td>email</td><td>2026-11-11</td><td>3</td>" in rows
    assert rows.count("<td>news</td>") == 1  # one week, the reported one


@pytest.mark.parametrize(
    ("sent_on", "booked_on", "minute", "won"),
    [
        # Melbourne's clocks go back on Sunday 5 April 2026: 09:00 Saturday to 08:30 Saturday
        # two weeks later is within 14 days on the clinic's clock (14 days and 30 min in UTC)
        (date(2026, 4, 4), date(2026, 4, 18), 30 - 60, 1),
        # and forward on Sunday 4 October: 09:00 to 09:30 two weeks later is not (13 days 23:30)
        (date(2026, 10, 3), date(2026, 10, 17), 30, 0),
    ],
)
def test_booked_within_n_days_is_counted_on_the_clinics_clock_across_a_dst_change(
    sent_on, booked_on, minute, won
):
    c = Clinic()
    c.patient(1, created=at_local(sent_on, 9) - 400 * timedelta(days=1))
    message(c.con, "trigger", "recall", 1, at_local(sent_on, 9))
    booked = at_local(booked_on, 9) + timedelta(minutes=minute)
    c.appointment(2001, 1, booked + timedelta(days=3), created=booked)
    now = at_local(sent_on + timedelta(days=16), 8)  # the Monday the cohort's week is reported
    c.build(now)
    cfg = ClinicConfig(
        clinic="test", name="Test Physio", time_zone=TZ, triggers=c.triggers,
        report={"to": "owner@clinic.example"},
    )  # fmt: skip
    done = owner_report.compose(c.con, cfg, owner_report.week_for("test", cfg.report, TZ, now), now)
    c.con.close()
    assert [(w.source, w.recipients, w.booked) for w in done.won] == [("trigger:recall", 1, won)]


def test_a_report_left_sending_through_a_provider_no_longer_used_is_unknown_not_stuck(
    clinic, tmp_path
):
    # A run died mid-request through Postmark, then the clinic moved to the outbox: nothing
    # asks Postmark again, and the week stayed 'sending' ("the next run asks again") for good.
    provider = _outbox(tmp_path)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    owner_report.claim(clinic.con, week, "postmark", "digest", NOW)
    soon = NOW + timedelta(minutes=1)  # too early: the request may still be in flight
    assert owner_report.settle(clinic.con, week, provider, soon) == "sending"
    later = NOW + timedelta(hours=1)
    assert owner_report.settle(clinic.con, week, provider, later) == "unknown"
    row = owner_report.current(clinic.con, week)
    assert "left sending through postmark" in row["status_reason"]
    assert list_messages(tmp_path / "outbox") == []  # not sent again on its own
    assert owner_report.settle(clinic.con, week, provider, later, resend=True) is None
    assert _send(clinic.con, week, provider, later) == "sent"
