"""Journeys on hand-made clinics with an advancing clock: entry, waits, conditions, exit, re-entry,
no backfill, and the birthday on the clinic's calendar."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.marketing import journeys
from tasks.marketing import steps as journey_steps
from tasks.marketing.journeys import JourneyError

_spec = importlib.util.spec_from_file_location(
    "journey_clinic", Path(__file__).with_name("journey_clinic.py")
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)
Clinic = journey_clinic.Clinic

NEW_PATIENT = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [
        {"send": "email", "template": "new-patient-welcome"},
        {"wait": "3 days"},
        {"only_if": "still_in_segment"},
        {"send": "email", "template": "new-patient-tips"},
        {"wait": "7 days"},
        {"send": "email", "template": "new-patient-checkin"},
    ],
}
RECALL = {
    "name": "recall",
    "entry": {"enters_segment": "recall_90_179"},
    "steps": [
        {"send": "email", "template": "recall-checkin"},
        {"wait": "2 days"},
        {"send": "email", "template": "recall-checkin"},
    ],
}
BIRTHDAY = {
    "name": "birthday",
    "entry": {"date_field": "date_of_birth", "at": "09:00"},
    "steps": [{"send": "email", "template": "birthday"}],
    "reentry": "after_leaving",
}


def templates_sent(clinic, patient_id):
    return [t for _, _, t, p in clinic.all_messages() if p == patient_id]


@pytest.fixture
def clinic():
    c = Clinic(journeys=[NEW_PATIENT])
    yield c
    c.con.close()


def test_a_journey_created_today_does_not_enrol_people_who_entered_before_it_went_live():
    clinic = Clinic()
    clinic.patient(1)
    clinic.visit(1, days_ago=30)  # in "new" since the segment's first build: initial
    clinic.build()
    clinic.patient(2)
    clinic.visit(2, days_ago=1)  # entered last week, before the journey existed
    clinic.advance(days=7)
    clinic.build()

    clinic.tick(clinic.cfg(journeys=[NEW_PATIENT]), minutes=5)  # the journey goes live here
    assert clinic.enrolments("new-patient") == []
    assert clinic.all_messages() == []

    clinic.patient(3)
    clinic.visit(3, days_ago=0.1)
    clinic.tick(clinic.cfg(journeys=[NEW_PATIENT]), minutes=5)
    assert [e[0] for e in clinic.enrolments("new-patient")] == [3]
    assert templates_sent(clinic, 3) == ["new-patient-welcome"]


def test_a_new_patient_gets_the_three_emails_spaced_by_the_waits_then_completes(clinic):
    clinic.tick()  # go-live
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5)
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]

    clinic.tick(days=2, hours=23, build=False)  # not three days yet
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]
    clinic.tick(hours=1, build=False)
    assert templates_sent(clinic, 1) == ["new-patient-welcome", "new-patient-tips"]
    clinic.tick(days=6, build=False)
    assert len(templates_sent(clinic, 1)) == 2
    clinic.tick(days=1, build=False)
    assert templates_sent(clinic, 1) == [
        "new-patient-welcome",
        "new-patient-tips",
        "new-patient-checkin",
    ]
    assert clinic.enrolments("new-patient") == [(1, "completed", None, 6)]
    clinic.tick(days=30, build=False)
    assert len(templates_sent(clinic, 1)) == 3


def test_the_send_keys_name_journey_patient_entry_and_step(clinic):
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5)
    assert [k for k, *_ in clinic.all_messages()] == ["journey:new-patient:1:n1:s0"]


def test_a_patient_who_leaves_the_segment_exits_the_journey_before_step_2():
    clinic = Clinic(journeys=[RECALL])
    clinic.patient(1)
    clinic.visit(1, days_ago=89.5)
    clinic.tick()  # go-live; not yet in the 90-179 band
    clinic.tick(days=1)  # enters the band
    assert templates_sent(clinic, 1) == ["recall-checkin"]
    clinic.book(1, days_ahead=3)  # booked: leaves the recall band
    clinic.tick(days=1)
    # exited at the wait (step 1): it starts once the first email went, the tick after
    assert clinic.enrolments("recall") == [(1, "exited", "left the segment recall_90_179", 1)]
    clinic.tick(days=5)
    assert templates_sent(clinic, 1) == ["recall-checkin"]


def test_a_failed_condition_ends_the_enrolment_and_later_steps_never_go():
    clinic = Clinic()
    journey = {**NEW_PATIENT, "steps": [
        NEW_PATIENT["steps"][0], {"wait": "3 days"},
        {"only_if": "not_in_segment", "segment": "upcoming_appointment"},  # nothing booked yet
        {"send": "email", "template": "new-patient-tips"},
    ]}  # fmt: skip
    cfg = clinic.cfg(journeys=[journey])
    clinic.tick(cfg)
    for p in (1, 2):
        clinic.patient(p)
        clinic.visit(p, days_ago=0.1)
    clinic.tick(cfg, minutes=5)
    clinic.book(1, days_ahead=7)
    clinic.tick(cfg, days=3)
    assert sorted(clinic.enrolments("new-patient")) == [
        (1, "exited", "step 3 condition not met: in the segment upcoming_appointment", 2),
        (2, "completed", None, 4),
    ]
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]
    assert templates_sent(clinic, 2) == ["new-patient-welcome", "new-patient-tips"]


def test_still_in_segment_condition_fails_when_the_patient_left_and_exit_on_leaving_is_off():
    clinic = Clinic()
    journey = {**RECALL, "exit": {"leaves_segment": False},
               "steps": [RECALL["steps"][0], {"wait": "2 days"}, {"only_if": "still_in_segment"},
                         {"send": "email", "template": "recall-checkin"}]}  # fmt: skip
    cfg = clinic.cfg(journeys=[journey])
    clinic.patient(1)
    clinic.visit(1, days_ago=89.5)
    clinic.tick(cfg)
    clinic.tick(cfg, days=1)
    clinic.book(1, days_ahead=10)
    clinic.tick(cfg, days=1)
    assert clinic.enrolments("recall")[0][1] == "active"  # leaving alone does not end it
    clinic.tick(cfg, days=1)
    assert clinic.enrolments("recall") == [
        (1, "exited", "step 3 condition not met: not in the segment recall_90_179", 2)
    ]
    assert templates_sent(clinic, 1) == ["recall-checkin"]


def _leave_and_come_back(clinic, cfg):
    clinic.patient(1)
    visit = clinic.visit(1, days_ago=89.5)
    clinic.tick(cfg)
    clinic.tick(cfg, days=1)  # enters
    booked = clinic.book(1, days_ahead=3)
    clinic.tick(cfg, days=1)  # leaves
    clinic.cancel(booked)
    clinic.tick(cfg, days=1)  # the booking is cancelled: back in the band
    return visit


def test_reentry_once_never_enrols_the_same_patient_twice():
    clinic = Clinic()
    cfg = clinic.cfg(journeys=[{**RECALL, "reentry": "once"}])
    _leave_and_come_back(clinic, cfg)
    assert [e[1] for e in clinic.enrolments("recall")] == ["exited"]
    assert templates_sent(clinic, 1) == ["recall-checkin"]


def test_reentry_after_leaving_enrols_again_when_the_patient_enters_again():
    clinic = Clinic()
    cfg = clinic.cfg(journeys=[{**RECALL, "reentry": "after_leaving"}])
    _leave_and_come_back(clinic, cfg)
    assert [e[1] for e in clinic.enrolments("recall")] == ["exited", "active"]
    assert templates_sent(clinic, 1) == ["recall-checkin", "recall-checkin"]


def test_unsubscribing_ends_the_journey_and_nobody_off_the_list_enrols(clinic):
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.patient(2, email=None)  # in "new", on no marketing list
    clinic.visit(2, days_ago=0.1)
    clinic.tick(minutes=5)
    assert [e[0] for e in clinic.enrolments("new-patient")] == [1]
    clinic.unsubscribe("patient1@example.com")
    clinic.tick(hours=1)
    assert clinic.enrolments("new-patient") == [(1, "exited", "no longer on the email list", 1)]
    clinic.tick(days=4)
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]


def test_a_journey_removed_from_the_config_ends_its_enrolments_and_comes_back_without_backfill(
    clinic,
):
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5)
    clinic.tick(clinic.cfg(journeys=[]), hours=1)
    assert clinic.enrolments("new-patient") == [
        (1, "exited", "journey removed from the configuration", 1)
    ]
    clinic.patient(2)
    clinic.visit(2, days_ago=0.1)
    clinic.tick(clinic.cfg(journeys=[]), hours=1)  # entered while the journey was away
    clinic.tick(days=4)
    assert [e[0] for e in clinic.enrolments("new-patient")] == [1]
    assert templates_sent(clinic, 2) == []


def test_running_the_same_tick_twice_repeats_nothing(clinic):
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5)
    again = journeys.run_journeys(clinic.con, clinic.cfg(), clinic.now)
    assert again["new-patient"].get("queued", 0) == 0
    assert len(clinic.all_messages()) == 1


def test_a_crash_inside_a_step_rolls_back_the_step_and_the_rerun_does_it_once(clinic, monkeypatch):
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.advance(minutes=5)
    clinic.build()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-step")

    monkeypatch.setattr(journey_steps, "_record_steps", crash)
    with pytest.raises(KeyboardInterrupt):
        journeys.run_journeys(clinic.con, clinic.cfg(), clinic.now)
    assert clinic.all_messages() == [] and clinic.enrolments("new-patient") == []
    monkeypatch.undo()
    journeys.run_journeys(clinic.con, clinic.cfg(), clinic.now)
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]
    steps = clinic.con.execute("SELECT step, outcome FROM state.journey_steps").fetchall()
    assert steps == [(0, "queued")]  # the wait starts once the welcome went


# --- the birthday, on the clinic's calendar ----------------------------------------------------


def test_a_birthday_email_goes_at_nine_on_the_local_birthday_in_the_clinics_time_zone():
    # Auckland is UTC+13 in November: 09:00 on 24 November there is 20:00 UTC on 23 November.
    clinic = Clinic(time_zone="Pacific/Auckland", journeys=[BIRTHDAY])
    clinic.now = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    clinic.patient(1, born="1990-11-24")
    clinic.patient(2, born="1990-11-23")  # 23 Nov 09:00 NZDT = 22 Nov 20:00 UTC
    clinic.tick()
    clinic.now = datetime(2026, 11, 22, 19, 55, tzinfo=UTC)
    clinic.tick(build=False)
    assert clinic.all_messages() == []
    clinic.tick(minutes=5, build=False)  # 20:00 UTC = 09:00 on 23 November in Auckland
    assert [(p, t) for _, _, t, p in clinic.all_messages()] == [(2, "birthday")]
    clinic.tick(hours=23, minutes=55, build=False)
    assert clinic.all_messages()[-1][3] == 2
    clinic.tick(
        minutes=5, build=False
    )  # 09:00 on 24 November in Auckland, still 23 November in UTC
    assert [(p, t) for _, _, t, p in clinic.all_messages()] == [(2, "birthday"), (1, "birthday")]


def test_a_birthday_comes_back_next_year_but_not_twice_in_one_year():
    clinic = Clinic(journeys=[BIRTHDAY])
    clinic.patient(1, born="1985-11-03")
    clinic.visit(1, days_ago=1)  # keeps them on the list (active in the last 24 months)
    clinic.tick()  # 2 Nov 22:00 UTC = 3 Nov 09:00 in Melbourne: go-live, no backfill
    assert clinic.all_messages() == []
    clinic.tick(days=364)  # 1 Nov 2027 22:00 UTC = 2 Nov 2027 09:00 AEDT
    clinic.tick(hours=1, build=False)
    clinic.tick(days=1, build=False)
    keys = [k for k, *_ in clinic.all_messages()]
    assert keys == ["journey:birthday:1:y2027:s0"]
    assert clinic.enrolments("birthday")[0][:2] == (1, "completed")


def test_a_birthday_journey_created_after_nine_waits_for_next_year():
    clinic = Clinic(journeys=[BIRTHDAY])
    clinic.patient(1, born="1985-11-03")
    clinic.tick(hours=1)  # 10:00 on the birthday: the journey goes live now
    clinic.tick(hours=5, build=False)
    assert clinic.all_messages() == []


def test_a_date_field_that_is_not_a_date_column_is_a_clear_error():
    clinic = Clinic(journeys=[{**BIRTHDAY, "entry": {"date_field": "first_name"}}])
    clinic.patient(1)
    with pytest.raises(JourneyError, match="journey 'birthday': entry.date_field 'first_name'"):
        clinic.tick()
    assert clinic.con.execute("SELECT count(*) FROM state.journeys").fetchone()[0] == 0


def test_anniversaries_follow_the_local_calendar_across_a_dst_change():
    from zoneinfo import ZoneInfo

    from tasks.marketing.enrolment import anniversaries

    zone = ZoneInfo("Australia/Melbourne")  # clocks go back at 03:00 on 5 April 2026
    since = datetime(2026, 4, 3, 21, 0, tzinfo=UTC)  # 08:00 on 4 April in Melbourne
    days = anniversaries(
        since, since + timedelta(days=2), datetime.strptime("09:00", "%H:%M").time(), zone
    )
    assert [(d, m) for _, _, d, m in days] == [
        (4, datetime(2026, 4, 3, 22, 0, tzinfo=UTC)),  # AEDT, UTC+11
        (5, datetime(2026, 4, 4, 23, 0, tzinfo=UTC)),  # AEST, UTC+10
    ]


# --- through dispatch: the gate and the re-check -----------------------------------------------


def test_an_evening_journey_sms_waits_for_morning_and_is_cancelled_if_the_patient_exits_first(
    tmp_path,
):
    sms_recall = {**RECALL, "steps": [{"send": "sms", "template": "promo-sms"}]}
    clinic = Clinic(journeys=[sms_recall])
    for p in (1, 2):
        clinic.patient(p, mobile=f"041234567{p}", sms_opt_in=True)
        clinic.visit(p, days_ago=89.6)
    clinic.tick()  # 09:00 in Melbourne: go-live
    clinic.tick(hours=12)  # 21:00: both enter the recall band
    clinic.send(tmp_path)
    held = clinic.messages(status="planned")
    assert sorted((r.patient_id, r.status_reason) for r in held) == [
        (1, "deferred: quiet hours"),
        (2, "deferred: quiet hours"),
    ]
    clinic.book(1, days_ahead=5)
    clinic.tick(hours=2)  # 23:00: patient 1 booked, left the band, exits
    clinic.advance(hours=10)  # 09:00 the next morning
    clinic.send(tmp_path)
    assert [(r.patient_id, r.status_reason) for r in clinic.messages(status="cancelled")] == [
        (1, "journey ended before this step went: left the segment recall_90_179")
    ]
    (sent,) = clinic.messages(status="sent")
    assert (sent.patient_id, sent.sent_at) == (2, clinic.now)
    assert len(list(tmp_path.glob("*.txt"))) == 1


def test_a_wait_of_whole_days_keeps_the_local_time_across_a_dst_change():
    from zoneinfo import ZoneInfo

    from tasks.marketing.steps import wait_until

    zone = ZoneInfo("Australia/Melbourne")  # clocks go back at 03:00 on 5 April 2026
    saturday_nine = datetime(2026, 4, 3, 22, 0, tzinfo=UTC)  # Saturday 09:00 AEDT
    sunday_nine = datetime(2026, 4, 4, 23, 0, tzinfo=UTC)  # Sunday 09:00 AEST: 25 hours later
    assert wait_until(saturday_nine, timedelta(days=1), zone) == sunday_nine
    assert wait_until(saturday_nine, timedelta(hours=18), zone) == datetime(
        2026, 4, 4, 16, 0, tzinfo=UTC
    )  # elapsed hours: 02:00 AEST on Sunday


# --- the other entries ---------------------------------------------------------------------------


def test_joining_the_email_list_after_go_live_enrols_and_the_people_already_on_it_do_not():
    welcome = {"name": "newsletter-welcome", "entry": {"joins_list": "email"},
               "steps": [{"send": "email", "template": "new-patient-welcome"}]}  # fmt: skip
    clinic = Clinic(journeys=[welcome])
    clinic.patient(1)
    clinic.tick()  # patient 1 is on the list from the first build: initial, not an entry
    clinic.patient(2)  # a new patient with an email: joins the list at the next build
    clinic.tick(minutes=5)
    assert [(p, s) for p, s, *_ in clinic.enrolments("newsletter-welcome")] == [(2, "completed")]
    assert [p for *_, p in clinic.all_messages()] == [2]


def test_leaving_a_segment_can_be_the_entry():
    missed = {"name": "we-miss-you", "entry": {"exits_segment": "upcoming_appointment"},
              "steps": [{"send": "email", "template": "recall-checkin"}]}  # fmt: skip
    clinic = Clinic(journeys=[missed])
    for p in (1, 2):
        clinic.patient(p)
        clinic.visit(p, days_ago=30)
    booked = clinic.book(1, days_ahead=3)
    clinic.book(2, days_ahead=3)
    clinic.tick()
    clinic.cancel(booked)  # patient 1 cancels: leaves "upcoming appointment"
    clinic.tick(minutes=5)
    assert [p for *_, p in clinic.all_messages()] == [1]


def test_a_queued_step_is_skipped_if_the_patient_is_off_the_list_when_it_would_go(tmp_path):
    stay = {**NEW_PATIENT, "exit": {"leaves_segment": False, "unsubscribes": False}}
    clinic = Clinic(journeys=[stay])
    clinic.tick()
    clinic.patient(1)
    clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5, send=False)  # the welcome email is queued
    clinic.patient(1, email="not an email")  # the address on file became unusable
    clinic.advance(minutes=1)
    clinic.build()
    clinic.send(tmp_path)
    (skipped,) = clinic.messages(status="skipped")
    assert skipped.status_reason == "not on the email marketing list"


def test_a_birthday_email_the_cap_would_hold_past_its_day_is_skipped_not_sent_late(tmp_path):
    birthday = {**BIRTHDAY, "steps": [{"send": "email", "template": "birthday", "within": "1 day"}]}
    clinic = Clinic(journeys=[birthday])
    clinic.patient(1, born="1985-11-04")
    clinic.tick()  # go-live the day before the birthday
    for n in (1, 2):  # two promotions in the last two days: the cap is full for five more days
        clinic.con.execute(
            "INSERT INTO state.messages (send_key, source_kind, source_name, patient_id, channel, "
            "purpose, template, due_at, status, planned_at, sent_at, updated_at) VALUES "
            "(?, 'campaign', ?, 1, 'email', 'marketing', 'recall-checkin', ?, 'sent', ?, ?, ?)",
            [f"campaign:promo{n}:1:once", f"promo{n}"] + [clinic.now - timedelta(days=n)] * 4,
        )
    clinic.tick(days=1, build=False)  # 09:00 on the birthday
    clinic.send(tmp_path)
    (skipped,) = clinic.messages(status="skipped", source_name="birthday")
    assert skipped.status_reason == "frequency cap: could not go before its grace window ended"


@pytest.mark.parametrize("full_refresh", [False, True])
def test_a_shared_address_passed_to_a_new_patient_enrols_him_as_the_list_says(full_refresh):
    # A mother and her son share one address; the list holds it once, for whoever was seen most
    # recently. The son's first visit passes it to him: the journey sees the list as it is (he
    # is on it, subscribed), not as it was when the address first joined (his mother)
    clinic = Clinic(journeys=[NEW_PATIENT])
    clinic.patient(1, email="family@example.com")
    clinic.visit(1, days_ago=300)
    clinic.build()
    clinic.tick()  # go-live
    clinic.patient(2, email="family@example.com")
    clinic.visit(2, days_ago=0.1)
    clinic.advance(minutes=5)
    journey_clinic.models.build(
        clinic.con, journey_clinic.models.ListSettings(active_patient_months=24),
        sql_dir=journey_clinic.sql_dir(), now=clinic.now, full_refresh=full_refresh,
    )  # fmt: skip
    holder = "SELECT patient_id FROM marts.email_marketing_list WHERE status = 'subscribed'"
    assert clinic.con.execute(holder).fetchall() == [(2,)]
    clinic.tick(build=False)
    assert [e[:2] for e in clinic.enrolments("new-patient")] == [(2, "active")]
    assert templates_sent(clinic, 2) == ["new-patient-welcome"]


def test_a_patient_record_merged_into_another_does_not_start_the_series_again():
    # One new patient, two records (booked online twice); the first gets the welcome, then the
    # front desk merges it into the second, which takes its visit and so enters "new" itself:
    # the same person, already enrolled under the record merged away (reentry: once)
    clinic = Clinic(journeys=[NEW_PATIENT])
    clinic.tick()  # go-live
    clinic.patient(1, email="sam@example.com")
    clinic.patient(2, email="sam.new@example.com")
    visit = clinic.visit(1, days_ago=0.1)
    clinic.tick(minutes=5)
    assert templates_sent(clinic, 1) == ["new-patient-welcome"]
    kept = f"{journey_clinic.API}/patients/2"
    clinic._write("patients", 1, {**clinic.payloads[("patients", 1)], "archived_at":
                  journey_clinic._ts(clinic.now), "merged_at": journey_clinic._ts(clinic.now),
                  "merged_with_patient": {"links": {"self": kept}}})  # fmt: skip
    appointment = clinic.payloads[("individual_appointments", visit)]
    clinic._write("individual_appointments", visit,
                  {**appointment, "patient": {"links": {"self": kept}}})  # fmt: skip
    clinic.tick(hours=1)
    in_new = "SELECT patient_id FROM segments.new_patients"
    assert clinic.con.execute(in_new).fetchall() == [(2,)]
    clinic.tick(days=4, build=False)
    assert templates_sent(clinic, 2) == []
    assert [e[:2] for e in clinic.enrolments("new-patient")] == [(1, "exited")]
