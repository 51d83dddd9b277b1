"""The marketing gate: frequency cap with a stated priority, quiet hours for marketing SMS in the
clinic's time zone (across midnight and daylight-saving changes), and reminders never held."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from tasks.config import ClinicConfig, FrequencyCap, QuietHours
from tasks.messages import ledger
from tasks.messages.dispatch import dispatch
from tasks.messages.gate import Gate
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates, build_context
from tasks.providers.outbox import OutboxProvider
from tasks.warehouse import memory_db

MELBOURNE = "Australia/Melbourne"
# Tuesday 3 November 2026, 10:00 in Melbourne (AEDT, UTC+11)
DAY = datetime(2026, 11, 2, 23, 0, tzinfo=UTC)
GATE = Gate(MELBOURNE, FrequencyCap(messages=2, days=7), ("trigger", "journey", "campaign"),
            QuietHours())  # fmt: skip


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def plan(con, patient_id, *, kind="campaign", name="spring", channel="email",
         purpose="marketing", due=DAY, expires=None, occasion="once"):  # fmt: skip
    message = PlannedMessage(
        send_key=make_send_key(kind, name, patient_id, occasion), source_kind=kind,
        source_name=name, patient_id=patient_id, channel=channel, purpose=purpose,
        template="promo-sms" if channel == "sms" else "recall-checkin", due_at=due,
        expires_at=expires,
    )  # fmt: skip
    ledger.insert_planned(con, [message], due)
    return ledger.get(con, message.send_key)


def sent_before(con, patient_id, at, n=1):
    """n marketing messages this patient already got at ``at``."""
    for i in range(n):
        row = plan(con, patient_id, name=f"earlier{int(at.timestamp())}-{i}", due=at)
        ledger.transition(con, [row.message_id], "planned", "sending", at)
        ledger.transition(con, [row.message_id], "sending", "sent", at)


def gate(con, now, g=GATE):
    rows = ledger.due(con, now)
    return {r.send_key for r in g(con, rows, now)}


def row(con, r):
    return ledger.get(con, r.send_key)


# --- quiet hours -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_now", "expected_local"),
    [
        ("2026-11-03 19:59", None),  # before 20:00: goes
        ("2026-11-03 21:30", "2026-11-04 09:00"),  # evening: next morning
        ("2026-11-03 23:50", "2026-11-04 09:00"),  # deferred across midnight
        ("2026-11-04 00:30", "2026-11-04 09:00"),  # after midnight: the same morning
        ("2026-11-04 08:59", "2026-11-04 09:00"),
        ("2026-11-04 09:00", None),
    ],
)
def test_quiet_hours_defer_marketing_sms_to_nine_the_next_morning(local_now, expected_local):
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(MELBOURNE)
    now = datetime.fromisoformat(local_now).replace(tzinfo=zone)
    expected = (
        datetime.fromisoformat(expected_local).replace(tzinfo=zone) if expected_local else now
    )
    assert GATE.quiet_until(now) == expected
    assert GATE.is_quiet(now) == (expected_local is not None)


def test_a_message_held_on_the_night_the_clocks_go_back_goes_at_nine_local_not_nine_hours_on(con):
    # Melbourne leaves daylight saving at 03:00 on Sunday 5 April 2026 (UTC+11 -> UTC+10).
    evening = datetime(2026, 4, 4, 10, 30, tzinfo=UTC)  # Saturday 21:30 AEDT
    sms = plan(con, 1, channel="sms", due=evening)
    assert gate(con, evening) == set()
    held = row(con, sms)
    assert held.status == "planned" and held.status_reason == "deferred: quiet hours"
    assert held.next_attempt_at == datetime(2026, 4, 4, 23, 0, tzinfo=UTC)  # Sunday 09:00 AEST
    assert held.due_at == evening  # when it was planned for is kept


def test_a_message_held_on_the_night_the_clocks_go_forward_goes_at_nine_local(con):
    # Melbourne starts daylight saving at 02:00 on Sunday 4 October 2026 (UTC+10 -> UTC+11).
    evening = datetime(2026, 10, 3, 11, 0, tzinfo=UTC)  # Saturday 21:00 AEST
    sms = plan(con, 1, channel="sms", due=evening)
    gate(con, evening)
    assert row(con, sms).next_attempt_at == datetime(2026, 10, 3, 22, 0, tzinfo=UTC)  # 09:00 AEDT


def test_quiet_hours_hold_only_marketing_sms(con):
    night = datetime(2026, 11, 3, 11, 0, tzinfo=UTC)  # 22:00 in Melbourne
    plan(con, 1, channel="sms", due=night)
    reminder = plan(con, 2, kind="trigger", name="reminder", channel="sms",
                    purpose="transactional", due=night)  # fmt: skip
    email = plan(con, 3, channel="email", due=night)
    assert gate(con, night) == {reminder.send_key, email.send_key}


def test_no_quiet_hours_when_the_clinic_turns_them_off(con):
    night = datetime(2026, 11, 3, 11, 0, tzinfo=UTC)
    sms = plan(con, 1, channel="sms", due=night)
    cfg = ClinicConfig(clinic="t", name="T", marketing={"quiet_hours": None})
    assert gate(con, night, Gate.from_config(cfg)) == {sms.send_key}


# --- frequency cap -----------------------------------------------------------------------------


def test_the_third_marketing_message_in_seven_days_waits_until_the_oldest_leaves_the_window(con):
    sent_before(con, 1, DAY - timedelta(days=5))
    sent_before(con, 1, DAY - timedelta(days=2))
    third = plan(con, 1)
    assert gate(con, DAY) == set()
    held = row(con, third)
    assert held.status_reason == "deferred: frequency cap"
    assert held.next_attempt_at == DAY + timedelta(days=2)  # 5 days ago + 7 days
    assert gate(con, DAY + timedelta(days=2)) == {third.send_key}  # deferred, not dropped


def test_when_more_are_due_than_the_cap_allows_the_priority_decides(con):
    campaign = plan(con, 1, kind="campaign", name="spring")
    journey = plan(
        con, 1, kind="journey", name="series", occasion="e1:s0", due=DAY - timedelta(hours=1)
    )
    trigger = plan(con, 1, kind="trigger", name="rebook", occasion="appointment:9")
    sent_before(con, 1, DAY - timedelta(days=1))
    assert gate(con, DAY) == {trigger.send_key}  # one slot left: triggers first
    assert row(con, journey).next_attempt_at == DAY + timedelta(days=6)
    assert row(con, campaign).next_attempt_at == DAY + timedelta(days=6)


def test_the_cap_counts_every_channel_and_each_patient_separately(con):
    sent_before(con, 1, DAY - timedelta(days=1))
    sms = plan(con, 1, channel="sms", name="sms-promo")
    email = plan(con, 1, channel="email", name="email-promo")
    other = plan(con, 2, name="email-promo")
    # patient 1 has one slot left for two messages; the SMS was planned first (same priority and
    # due moment: the older row goes first)
    assert gate(con, DAY) == {sms.send_key, other.send_key}
    assert row(con, email).status_reason == "deferred: frequency cap"


def test_reminders_are_never_held_back_by_the_cap(con):
    sent_before(con, 1, DAY - timedelta(days=1), n=2)
    reminder = plan(con, 1, kind="trigger", name="reminder", purpose="transactional",
                    occasion="appointment:1")  # fmt: skip
    promo = plan(con, 1)
    assert gate(con, DAY) == {reminder.send_key}
    assert row(con, promo).status == "planned"


def test_a_message_that_could_only_go_after_its_grace_window_is_skipped_not_sent_late(con):
    sent_before(con, 1, DAY - timedelta(days=1), n=2)
    timely = plan(con, 1, kind="trigger", name="post-visit", occasion="appointment:3",
                  expires=DAY + timedelta(days=1))  # fmt: skip
    assert gate(con, DAY) == set()
    skipped = row(con, timely)
    assert skipped.status == "skipped"
    assert skipped.status_reason == "frequency cap: could not go before its grace window ended"


def test_no_cap_when_the_clinic_turns_it_off(con):
    sent_before(con, 1, DAY - timedelta(days=1), n=5)
    promo = plan(con, 1)
    cfg = ClinicConfig(clinic="t", name="T", marketing={"frequency_cap": None})
    assert gate(con, DAY, Gate.from_config(cfg)) == {promo.send_key}


def test_config_priority_must_name_each_source_once():
    with pytest.raises(ValueError, match="each once"):
        ClinicConfig(clinic="t", name="T", marketing={"priority": ["journey", "journey"]})


# --- through dispatch --------------------------------------------------------------------------


def test_dispatch_with_the_gate_sends_the_evening_sms_at_nine_and_the_reminder_at_once(
    con, tmp_path
):
    evening = datetime(2026, 11, 3, 10, 30, tzinfo=UTC)  # 21:30 in Melbourne
    promo = plan(con, 1, channel="sms", due=evening)
    reminder = plan(con, 2, kind="trigger", name="reminder", channel="sms",
                    purpose="transactional", due=evening)  # fmt: skip
    clock = [evening]
    context = build_context(clinic={"name": "Demo", "website": "https://d.example"},
                            first_name="Sam")  # fmt: skip
    outbox = OutboxProvider(tmp_path, email_from="d@example.com", sms_from="Demo")

    def run():
        return dispatch(
            con, providers={"sms": outbox},
            prepare=lambda r: Ready(to=f"+6140000000{r.patient_id}", context=context),
            templates=Templates(None), clock=lambda: clock[0], gate=GATE,
        )  # fmt: skip

    run()
    assert row(con, reminder).status == "sent"
    assert row(con, promo).status == "planned"
    clock[0] = datetime(2026, 11, 3, 21, 59, tzinfo=UTC)  # 08:59
    run()
    assert row(con, promo).status == "planned"
    clock[0] = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)  # 09:00
    run()
    assert row(con, promo).status == "sent"
    assert row(con, promo).sent_at == datetime(2026, 11, 3, 22, 0, tzinfo=UTC)
    assert row(con, promo).attempts == 1


def test_quiet_hours_setting_accepts_other_windows():
    g = Gate(MELBOURNE, None, ("trigger", "journey", "campaign"),
             QuietHours(start=time(0, 0), end=time(7, 0)))  # fmt: skip
    assert g.is_quiet(datetime(2026, 11, 3, 14, 0, tzinfo=UTC))  # 01:00 local
    assert not g.is_quiet(datetime(2026, 11, 3, 10, 0, tzinfo=UTC))  # 21:00 local


@pytest.mark.parametrize(
    ("zone", "start", "end", "at", "until"),
    [
        # Melbourne leaves daylight saving at 03:00 AEDT on 5 April 2026: 02:00-03:00 comes twice.
        # 02:10 AEST (the second pass) is quiet until 02:30 AEST, not 02:30 AEDT an hour ago.
        (
            MELBOURNE,
            "22:00",
            "02:30",
            datetime(2026, 4, 4, 16, 10, tzinfo=UTC),
            datetime(2026, 4, 4, 16, 30, tzinfo=UTC),
        ),
        # 02:10 AEDT (the first pass) is quiet until 02:30 AEDT
        (
            MELBOURNE,
            "22:00",
            "02:30",
            datetime(2026, 4, 4, 15, 10, tzinfo=UTC),
            datetime(2026, 4, 4, 15, 30, tzinfo=UTC),
        ),
        # New York leaves daylight saving at 02:00 EDT on 1 November 2026: 01:00-02:00 twice
        (
            "America/New_York",
            "21:00",
            "01:30",
            datetime(2026, 11, 1, 6, 5, tzinfo=UTC),
            datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
        ),
    ],
)
def test_quiet_hours_ending_in_the_hour_the_clocks_go_back_end_after_now(zone, start, end, at,
                                                                           until):  # fmt: skip
    g = Gate(zone, None, ("trigger", "journey", "campaign"), QuietHours(start=start, end=end))
    assert g.is_quiet(at)
    assert g.quiet_until(at) == until  # never a moment already past: held until it really ends
    assert not g.is_quiet(g.quiet_until(at))
    assert g.quiet_since(at) <= at


def test_quiet_hours_starting_in_the_hour_the_clocks_skip_began_before_now():
    # New York starts daylight saving at 02:00 EST on 8 March 2026 (02:00-03:00 never happens):
    # at 03:05 EDT the quiet hours from 02:30 have begun, not 25 minutes from now
    g = Gate("America/New_York", None, ("trigger", "journey", "campaign"),
             QuietHours(start="02:30", end="08:00"))  # fmt: skip
    at = datetime(2026, 3, 8, 7, 5, tzinfo=UTC)
    assert g.is_quiet(at)
    assert g.quiet_since(at) <= at
    assert g.quiet_until(at) == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # 08:00 EDT


def test_a_message_held_in_the_repeated_hour_is_deferred_to_a_moment_to_come(con):
    # quiet 22:00-02:30 in Melbourne; at 02:10 AEST on 5 April 2026 (the repeated hour) an SMS
    # is held until 02:30 AEST, not to 02:30 AEDT (an hour before it was due: due again at once)
    g = Gate(MELBOURNE, None, ("trigger", "journey", "campaign"),
             QuietHours(start="22:00", end="02:30"))  # fmt: skip
    at = datetime(2026, 4, 4, 16, 10, tzinfo=UTC)
    sms = plan(con, 1, channel="sms", due=at)
    assert gate(con, at, g) == set()
    assert row(con, sms).next_attempt_at == datetime(2026, 4, 4, 16, 30, tzinfo=UTC)
