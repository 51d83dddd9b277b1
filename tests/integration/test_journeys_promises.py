"""Journeys and campaigns keep their promises at send time (issue 11, section 8).

Each test replays a case observed in production on a hand-made clinic in a real DuckDB file: the
sync's raw rows written by hand, the real SQL models built at a clock the test moves, and each
tick as the scheduler runs it (journeys, due campaigns, then dispatch through the local outbox
with the marketing gate wired as flows/dispatch.py wires it).

- a journey's ``wait`` counts from when the previous step went, and an enrolment's steps arrive
  in order, whatever the frequency cap or quiet hours held back;
- a confirmed campaign sends what was confirmed (segment, channel, template), whatever
  clinic.yaml says later, and a send_at already past needs --force;
- the frequency cap gives its slots only to rows that will really be sent;
- a throttled campaign held by quiet hours keeps its throttle when released.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tasks.marketing import campaigns
from tasks.marketing.campaigns import CampaignError
from tasks.warehouse import open_db

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "journey_clinic", ROOT / "tests" / "unit" / "marketing" / "journey_clinic.py"
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)

NEW_PATIENT = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [
        {"send": "email", "template": "new-patient-welcome"},
        {"wait": "3 days"},
        {"send": "email", "template": "new-patient-tips"},
    ],
}
SMS_THEN_EMAIL = {
    "name": "sms-first",
    "entry": {"enters_segment": "new_patients"},
    "steps": [
        {"send": "sms", "template": "promo-sms"},
        {"wait": "2 hours"},
        {"send": "email", "template": "new-patient-welcome"},
    ],
}
RECALL = {"name": "autumn-recall", "segment": "recall_90_179", "channel": "email",
          "template": "recall-checkin", "per_minute": 100}  # fmt: skip
MOBILE = "+61491570156"


@pytest.fixture
def db(tmp_path):
    with open_db(tmp_path / "clinic.duckdb") as con:
        yield con


def clinic(con, **config):
    return journey_clinic.Clinic(con, **config)


def local(clinic, at: datetime) -> str:
    return at.astimezone(ZoneInfo(clinic.time_zone)).strftime("%a %H:%M")


def sent(clinic, source_name: str) -> list[tuple[str, str, datetime]]:
    """(template, channel, sent_at) of a source's messages that went, in the order they went."""
    return clinic.con.execute(
        "SELECT template, channel, sent_at FROM state.messages WHERE source_name = ? "
        "AND status = 'sent' ORDER BY sent_at, message_id",
        [source_name],
    ).fetchall()


def promos_sent(clinic, patient_id: int, *ago: timedelta) -> None:
    """Marketing this patient got before the test starts (they fill the frequency cap)."""
    for n, days in enumerate(ago):
        at = clinic.now - days
        clinic.con.execute(
            "INSERT INTO state.messages (send_key, source_kind, source_name, patient_id, channel, "
            "purpose, template, due_at, status, planned_at, sending_at, sent_at, updated_at) "
            "VALUES (?, 'campaign', ?, ?, 'email', 'marketing', 'recall-checkin', ?, 'sent', "
            "?, ?, ?, ?)",
            [f"campaign:promo{n}:{patient_id}:once", f"promo{n}", patient_id] + [at] * 5,
        )


# --- journeys: waits from the send, steps in order ---------------------------------------------


def test_a_welcome_held_five_days_by_the_cap_is_followed_by_the_tips_three_days_after_it(db):
    c = clinic(db, journeys=[NEW_PATIENT])
    c.tick()  # the journey goes live
    c.patient(1)
    promos_sent(c, 1, timedelta(days=2), timedelta(days=2))  # cap (2 in 7 days) full 5 more days
    c.visit(1, days_ago=0.1)
    c.tick(minutes=5)  # enrols; the welcome is queued and held by the cap
    entered = c.now
    for _ in range(2 * 10):  # ten days of ticks twice a day
        c.tick(hours=12, build=False)
    went = sent(c, "new-patient")
    assert [t for t, _, _ in went] == ["new-patient-welcome", "new-patient-tips"]
    (_, _, welcome), (_, _, tips) = went
    assert welcome - entered >= timedelta(days=4, hours=23)  # held by the cap
    assert tips - welcome >= timedelta(days=3), (local(c, welcome), local(c, tips))


def test_an_sms_held_overnight_by_quiet_hours_arrives_before_the_email_two_hours_after_it(db):
    c = clinic(db, journeys=[SMS_THEN_EMAIL])
    c.tick()  # 09:00 in Melbourne: the journey goes live
    c.patient(1, mobile=MOBILE, sms_opt_in=True)
    c.advance(hours=12)  # 21:00: in the quiet hours
    c.visit(1, days_ago=0.01)
    c.tick(minutes=1)  # enrols; the SMS is queued and held until 09:00
    for _ in range(16):  # ticks every hour through the night and the morning
        c.tick(hours=1, build=False)
    went = sent(c, "sms-first")
    assert [ch for _, ch, _ in went] == ["sms", "email"], [(ch, local(c, at)) for _, ch, at in went]
    (_, _, sms), (_, _, email) = went
    assert local(c, sms) == "Wed 09:01"  # the first tick after the quiet hours
    assert email - sms >= timedelta(hours=2)


# --- campaigns: what was confirmed is what goes ------------------------------------------------


@pytest.fixture
def recall_clinic(db):
    c = clinic(db, campaigns=[RECALL], marketing={"frequency_cap": None})
    for p in (1, 2, 3):  # in the 90-179 recall band, on the email and SMS lists
        c.patient(p, mobile=f"+6149157015{p}", sms_opt_in=True)
        c.visit(p, days_ago=100 + p)
    c.patient(4, mobile="+61491570154", sms_opt_in=True)  # booked: in upcoming_appointment
    c.visit(4, days_ago=30)
    c.book(4, days_ahead=3)
    c.build()
    return c


def later(c, **changes):
    return {**RECALL, "send_at": (c.now + timedelta(days=1)).isoformat(), **changes}


def test_changing_a_confirmed_campaigns_channel_in_clinic_yaml_sends_nothing_on_that_channel(
    recall_clinic,
):
    c = recall_clinic
    campaigns.confirm(c.con, c.cfg(campaigns=[later(c)]), "autumn-recall", c.now)
    edited = c.cfg(campaigns=[later(c, channel="sms", template="promo-sms")])
    c.tick(edited, days=1, minutes=1)
    went = sent(c, "autumn-recall")
    assert {(t, ch) for t, ch, _ in went} == {("recall-checkin", "email")}
    assert len(went) == 3
    preview = campaigns.preview(c.con, edited, "autumn-recall", c.now)
    assert preview.channel == "email" and preview.frozen_at is not None
    assert preview.changed_since_confirm == (
        "channel: confirmed email, clinic.yaml now says sms",
        "template: confirmed recall-checkin, clinic.yaml now says promo-sms",
    )


def test_changing_a_confirmed_campaigns_segment_freezes_the_confirmed_one_and_skips_nobody(
    recall_clinic,
):
    c = recall_clinic
    campaigns.confirm(c.con, c.cfg(campaigns=[later(c)]), "autumn-recall", c.now)
    edited = c.cfg(campaigns=[later(c, segment="upcoming_appointment")])
    c.tick(edited, days=1, minutes=1)
    statuses = Counter((p, s) for _, s, _, p in c.all_messages())
    assert statuses == Counter({(1, "sent"): 1, (2, "sent"): 1, (3, "sent"): 1})


def test_a_send_at_already_past_is_refused_without_force(recall_clinic):
    c = recall_clinic
    past = c.cfg(campaigns=[{**RECALL, "send_at": (c.now - timedelta(days=2)).isoformat()}])
    with pytest.raises(CampaignError, match="send_at .* has passed.*--force"):
        campaigns.confirm(c.con, past, "autumn-recall", c.now)
    assert c.all_messages() == []
    assert c.con.execute("SELECT count(*) FROM state.campaigns").fetchone()[0] == 0
    assert campaigns.confirm(c.con, past, "autumn-recall", c.now, force=True)["queued"] == 3


# --- the frequency cap: slots only for rows that will go ---------------------------------------


def test_a_journey_sms_cancelled_at_send_time_takes_no_cap_slot_from_the_campaign_behind_it(db):
    sms_journey = {"name": "sms-hello", "entry": {"joins_list": "sms"},
                   "steps": [{"send": "sms", "template": "promo-sms"}, {"wait": "7 days"},
                             {"send": "sms", "template": "promo-sms"}]}  # fmt: skip
    c = clinic(db, journeys=[sms_journey])
    c.patient(1, mobile=MOBILE, sms_opt_in=False)
    c.visit(1, days_ago=0.01)
    c.tick()  # 09:00: the journey goes live
    promos_sent(c, 1, timedelta(days=3))  # one slot of the cap (2 in 7 days) left
    c.advance(hours=12)  # 21:00
    c.patient(1, mobile=MOBILE, sms_opt_in=True)  # joins the SMS list
    c.tick(minutes=1)  # enrols; the journey SMS is queued and held by the quiet hours
    news = {"name": "news", "segment": "new_patients", "channel": "email",
            "template": "new-patient-tips", "send_at": (c.now + timedelta(hours=12)).isoformat()}  # fmt: skip
    cfg = c.cfg(journeys=[sms_journey], campaigns=[news])
    campaigns.confirm(c.con, cfg, "news", c.now)
    c.patient(1, mobile=MOBILE, sms_opt_in=False)  # opts out of SMS overnight: the journey ends
    c.tick(cfg, hours=12)  # 09:00: the campaign is frozen and due, the SMS is released
    (journey_sms,) = c.messages(status="cancelled")
    assert journey_sms.status_reason.startswith("journey ended before this step went")
    assert [t for t, _, _ in sent(c, "news")] == ["new-patient-tips"]


# --- quiet hours keep a campaign's throttle ---------------------------------------------------


def test_a_throttled_sms_campaign_held_by_quiet_hours_goes_at_its_pace_when_released(db):
    c = clinic(db, marketing={"frequency_cap": None})
    for p in range(1, 7):
        c.patient(p, mobile=f"+6149157015{p}", sms_opt_in=True)
        c.visit(p, days_ago=100 + p)
    c.build()
    c.advance(hours=11)  # 20:00 in Melbourne: the quiet hours start
    promo = {"name": "pilates", "segment": "recall_90_179", "channel": "sms",
             "template": "promo-sms", "per_minute": 2, "send_at": c.now.isoformat()}  # fmt: skip
    cfg = c.cfg(campaigns=[promo])
    campaigns.confirm(c.con, cfg, "pilates", c.now)  # 6 messages over 3 minutes, from 20:00
    c.tick(cfg, build=False)
    for _ in range(3):
        c.tick(cfg, minutes=1, build=False)
    assert sent(c, "pilates") == []  # all held by the quiet hours
    c.tick(cfg, hours=13, minutes=-3, build=False)  # 09:00
    for _ in range(5):
        c.tick(cfg, minutes=1, build=False)
    per_minute = Counter(local(c, at) for _, _, at in sent(c, "pilates"))
    assert per_minute == {"Wed 09:00": 2, "Wed 09:01": 2, "Wed 09:02": 2}
