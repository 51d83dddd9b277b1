"""Planning, shown on small hand-made clinics: raw rows -> the real models -> plan, at a fixed clock.

Every event, timing, filter and exclusion of tasks/triggers/definition.py has a test here that reads as the
behaviour a clinic expects. Raw rows are written the way the sync writes them (payloads shaped
like Cliniko's), then the models are built at ``now`` and the planner runs at ``now``.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import ClinicConfig
from tasks.errors import UserFacingError
from tasks.messages import ledger
from tasks.messages.prepare import Ready, Skip
from tasks.models import runner as models
from tasks.triggers import plan as planning
from tasks.triggers import preview
from tasks.triggers.prepare import Preparer
from tasks.warehouse import RAW_COLUMNS, memory_db, transaction

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)  # 20:00 in Melbourne
API = "https://api.au1.cliniko.com/v1"
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

INITIAL, STANDARD, ADMIN_TAG = 1, 2, 12
MAIN, ADMIN_BUSINESS = 1, 2
SAM, ALEX = 7, 8


# Removed when the test process exits (TemporaryDirectory's finalizer).
_FOLDER = tempfile.TemporaryDirectory(prefix="relay-planning-sql-")


def _models_for_planning() -> Path:
    """The real staging and marts files (linked, not copied): segments and data tests are other
    tests' business, and leaving them out halves the time of each build."""
    root = Path(_FOLDER.name) / "sql"
    for folder in ("staging", "marts"):
        (root / folder).mkdir(parents=True)
        for path in (models.SQL_DIR / folder).glob("*.sql"):
            (root / folder / path.name).symlink_to(path)
    return root


MODELS_DIR = _models_for_planning()


def _link(resource: str, id_: int | None) -> dict | None:
    return None if id_ is None else {"links": {"self": f"{API}/{resource}/{id_}"}}


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Clinic:
    """A clinic in raw.*, with a clock: build() rebuilds the models, plan() runs a tick."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None = None):
        self.con = con or memory_db()
        self._synced = NOW - 30 * DAY
        self._appointments: dict[int, dict] = {}
        self._patients: dict[int, dict] = {}
        self.triggers: list[dict] = []
        self.settings: dict = {}  # other clinic.yaml settings, e.g. tag_categories
        self._write("businesses", MAIN, {"id": str(MAIN), "business_name": "Richmond",
                    "time_zone_identifier": "Australia/Melbourne"})  # fmt: skip
        self._write("businesses", ADMIN_BUSINESS, {"id": str(ADMIN_BUSINESS),
                    "business_name": "Admin", "time_zone_identifier": "Australia/Melbourne"})  # fmt: skip
        for id_, name, category in (
            (INITIAL, "Initial Consultation", "Physiotherapy"),
            (STANDARD, "Standard Consultation", "Physiotherapy"),
            (ADMIN_TAG, "Admin - Insurance Patient", "Admin Only"),
        ):
            self._write(
                "appointment_types", id_, {"id": str(id_), "name": name, "category": category}
            )
        for id_, first, last in ((SAM, "Sam", "Example"), (ALEX, "Alex", "Other")):
            self._write(
                "practitioners", id_, {"id": str(id_), "first_name": first, "last_name": last}
            )

    def _write(self, table: str, id_: int, payload: dict) -> None:
        self._synced += timedelta(seconds=1)
        self.con.execute(
            f"INSERT OR REPLACE INTO raw.{table} {RAW_COLUMNS} VALUES (?, NULL, ?, ?, NULL)",
            [id_, json.dumps(payload), self._synced],
        )

    def patient(self, id_: int, *, email: str | None = "", mobile: str | None = "0412 345 678",
                created: datetime = NOW - 400 * DAY, reminder_type: str = "SMS & Email",
                email_opt_in: bool | None = True, sms_opt_in: bool | None = True,
                born: str = "1980-05-26", first_name: str | None = None, archived: bool = False,
                ) -> int:  # fmt: skip
        payload = {
            "id": str(id_),
            "first_name": first_name or f"Pat{id_}",
            "last_name": "Tester",
            "email": f"patient{id_}@example.com" if email == "" else email,
            "created_at": _ts(created),
            "archived_at": _ts(NOW - 3 * DAY) if archived else "",
            "accepted_email_marketing": email_opt_in,
            "accepted_sms_marketing": sms_opt_in,
            "reminder_type": reminder_type,
            "patient_phone_numbers": [{"phone_type": "Mobile", "number": mobile}] if mobile else [],
            "date_of_birth": born,
        }
        self._patients[id_] = payload
        self._write("patients", id_, payload)
        return id_

    def update_patient(self, id_: int, **changes) -> None:
        self._patients[id_].update(changes)
        self._write("patients", id_, self._patients[id_])

    def appointment(self, id_: int, patient: int, starts: datetime, *, type_id: int = STANDARD,
                    created: datetime | None = None, business: int = MAIN, practitioner: int = SAM,
                    arrived: bool = False, did_not_arrive: bool = False,
                    cancelled: datetime | None = None, minutes: int = 30) -> int:  # fmt: skip
        payload = {
            "id": str(id_),
            "created_at": _ts(created or starts - 14 * DAY),
            "updated_at": _ts(created or starts - 14 * DAY),
            "starts_at": _ts(starts),
            "ends_at": _ts(starts + minutes * MIN),
            "cancelled_at": _ts(cancelled),
            "did_not_arrive": did_not_arrive,
            "patient_arrived": arrived,
            "archived_at": None,
            "patient": _link("patients", patient),
            "appointment_type": _link("appointment_types", type_id),
            "business": _link("businesses", business),
            "practitioner": _link("practitioners", practitioner),
        }
        self._appointments[id_] = payload
        self._write("individual_appointments", id_, payload)
        return id_

    def update_appointment(self, id_: int, **changes) -> None:
        """Cliniko's payload as edited; pass ``updated_at`` (when the edit was made) where the
        edit's moment matters."""
        payload = self._appointments[id_]
        for key, value in changes.items():
            payload[key] = _ts(value) if isinstance(value, datetime) else value
        self._write("individual_appointments", id_, payload)

    def trigger(self, name: str, **definition) -> dict:
        self.triggers = [t for t in self.triggers if t["name"] != name]
        self.triggers.append({"name": name, "enabled": True, **definition})
        return self.triggers[-1]

    @property
    def config(self) -> ClinicConfig:
        return ClinicConfig(
            clinic="test", name="Test Physio", triggers=self.triggers, **self.settings
        )

    def build(self, now: datetime, **settings) -> None:
        """As the tick builds: the clinic.yaml settings (``settings`` overrides some)."""
        listed = models.ListSettings.from_config(self.config)
        listed = replace(listed, **{"active_patient_months": 24, **settings})
        models.build(self.con, listed, sql_dir=MODELS_DIR, now=now)

    def plan(self, now: datetime, *, build: bool = True) -> planning.PlanResult:
        if build:
            self.build(now)
        return planning.plan(self.con, self.config, now)

    def messages(self, trigger: str | None = None) -> list[ledger.LedgerRow]:
        rows = []
        for status in ledger.STATUSES:
            rows += ledger.in_status(self.con, status)
        return sorted(
            (r for r in rows if trigger is None or r.source_name == trigger),
            key=lambda r: r.message_id,
        )

    def one(self, trigger: str | None = None) -> ledger.LedgerRow:
        rows = self.messages(trigger)
        assert len(rows) == 1, rows
        return rows[0]

    def patients_messaged(self, trigger: str | None = None, status: str | None = None) -> set[int]:
        return {
            r.patient_id for r in self.messages(trigger) if status is None or r.status == status
        }


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


WELCOME = dict(event="appointment_booked", timing="5 minutes after", channel="email",
               template="welcome", purpose="transactional",
               filters={"appointment_types": ["Admin - Insurance Patient"]})  # fmt: skip
REMINDER = dict(event="before_appointment", timing="24 hours before", channel="sms",
                template="reminder-24h", purpose="transactional", grace="2 hours",
                exclude={"categories": ["Admin Only"]})  # fmt: skip
RECALL = dict(event="after_appointment", timing="6 weeks after", channel="email",
              template="recall", purpose="marketing",
              filters={"appointment_types": ["Initial Consultation"],
                       "no_future_appointment": True})  # fmt: skip


def live(clinic: Clinic, at: datetime = NOW - 60 * DAY) -> None:
    """Record the clinic's triggers as live since ``at`` (what the first tick then did)."""
    with transaction(clinic.con):
        planning.activate(clinic.con, clinic.config.triggers, at)


# --- seed 000: the dummy admin appointment -------------------------------------------------------


def test_the_welcome_email_goes_5_minutes_after_the_insurance_tag_appointment_is_booked(clinic):
    clinic.trigger("welcome", **WELCOME)
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    booked = NOW - 2 * MIN
    clinic.appointment(10, 1, NOW, type_id=ADMIN_TAG, created=booked, business=ADMIN_BUSINESS)
    clinic.appointment(11, 2, NOW + DAY, type_id=STANDARD, created=booked)
    clinic.plan(NOW)
    row = clinic.one("welcome")
    assert (row.patient_id, row.appointment_id, row.channel) == (1, 10, "email")
    assert row.due_at == booked + 5 * MIN
    assert row.send_key == "trigger:welcome:1:appointment:10"


def test_the_welcome_on_the_tag_goes_whatever_categories_tag(clinic):
    """Declaring the admin category a tag (clinic.yaml tag_categories, the default) keeps the
    trigger that targets it by type; so does declaring no tags at all."""
    clinic.trigger("welcome", **WELCOME)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW, type_id=ADMIN_TAG, created=NOW - 2 * MIN)
    for tags in (["admin only"], []):
        clinic.settings = {"tag_categories": tags}
        clinic.plan(NOW)
        assert clinic.one("welcome").appointment_id == 10


def test_a_tag_is_never_the_first_or_nth_appointment(clinic):
    clinic.trigger("first", event="first_appointment", timing="2 days before", channel="email",
                   template="welcome", purpose="transactional")  # fmt: skip
    clinic.trigger("second", event="nth_appointment", n=2, timing="1 hour after",
                   channel="email", template="welcome", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1)  # tagged last week, first real appointment in 36 hours
    clinic.appointment(9, 1, NOW - 7 * DAY, type_id=ADMIN_TAG, arrived=True)
    clinic.appointment(10, 1, NOW + 36 * HOUR, type_id=INITIAL)
    clinic.patient(2)  # a tag booked in 36 hours: no appointment at all
    clinic.appointment(20, 2, NOW + 36 * HOUR, type_id=ADMIN_TAG)
    clinic.patient(3)  # a visit, a tag, and the second visit two hours ago
    clinic.appointment(30, 3, NOW - 20 * DAY, type_id=INITIAL, arrived=True)
    clinic.appointment(31, 3, NOW - 10 * DAY, type_id=ADMIN_TAG, arrived=True)
    clinic.appointment(32, 3, NOW - 2 * HOUR, arrived=True)
    clinic.plan(NOW)
    sent = {(r.source_name, r.patient_id, r.appointment_id) for r in clinic.messages()}
    assert sent == {("first", 1, 10), ("second", 3, 32)}


def test_a_trigger_naming_the_tag_type_still_counts_tags(clinic):
    """Named by type or category, a tag is targeted: the first insurance tag of a patient."""
    clinic.trigger("first-tag", event="first_appointment", timing="5 minutes after",
                   channel="email", template="welcome", purpose="transactional",
                   filters={"categories": ["Admin Only"]})  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.appointment(9, 1, NOW - 30 * DAY, type_id=INITIAL, arrived=True)
    clinic.appointment(10, 1, NOW - 2 * MIN, type_id=ADMIN_TAG, arrived=True)
    clinic.plan(NOW)
    assert clinic.one("first-tag").appointment_id == 10


@pytest.mark.parametrize(
    ("count", "patients"),
    [
        ({"max": 1}, {1}),  # "new patients": the tag is not a prior appointment
        ({"min": 1, "types": ["Admin - Insurance Patient"]}, {1}),  # named: counted
    ],
)
def test_a_tag_counts_in_an_appointment_count_only_where_its_type_is_named(clinic, count, patients):
    clinic.trigger("reminder", **{**REMINDER, "filters": {"appointment_count": count}})
    live(clinic)
    clinic.patient(1)  # tagged, then a first appointment
    clinic.appointment(9, 1, NOW - 7 * DAY, type_id=ADMIN_TAG, arrived=True)
    clinic.appointment(10, 1, NOW + 30 * HOUR, type_id=INITIAL)
    clinic.patient(2)  # a visit, then a second appointment
    clinic.appointment(19, 2, NOW - 7 * DAY, type_id=INITIAL, arrived=True)
    clinic.appointment(20, 2, NOW + 30 * HOUR)
    clinic.plan(NOW)
    assert clinic.patients_messaged() == patients


def test_a_tag_booked_ahead_is_not_a_future_appointment_for_a_recall(clinic):
    clinic.trigger("recall", **{**RECALL, "grace": "2 days"})
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    ended = NOW - 42 * DAY + 30 * MIN
    clinic.appointment(10, 1, ended - 30 * MIN, type_id=INITIAL, arrived=True)
    clinic.appointment(11, 1, NOW + 5 * DAY, type_id=ADMIN_TAG)
    clinic.plan(NOW - 10 * HOUR)
    clinic.plan(NOW + HOUR)
    row = clinic.one("recall")
    assert (row.status, row.status_reason) == ("planned", None)


def test_a_broad_reminder_leaves_out_the_admin_only_category(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 20 * HOUR, type_id=ADMIN_TAG, business=ADMIN_BUSINESS)
    clinic.appointment(11, 1, NOW + 30 * HOUR, type_id=STANDARD)
    clinic.plan(NOW)
    row = clinic.one("reminder")
    assert row.appointment_id == 11
    assert row.due_at == NOW + 6 * HOUR


def test_excluding_the_admin_business_leaves_out_its_appointments(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"businesses": ["admin"]}})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, type_id=STANDARD, business=ADMIN_BUSINESS)
    clinic.appointment(11, 1, NOW + 31 * HOUR, type_id=STANDARD, business=MAIN)
    clinic.plan(NOW)
    assert [r.appointment_id for r in clinic.messages()] == [11]


def test_excluding_an_appointment_type_by_its_cliniko_id(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"appointment_types": [ADMIN_TAG]}})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, type_id=ADMIN_TAG)
    clinic.appointment(11, 1, NOW + 31 * HOUR, type_id=INITIAL)
    clinic.plan(NOW)
    assert [r.appointment_id for r in clinic.messages()] == [11]


# --- go-live: never a blast of history ------------------------------------------------------------


def test_a_trigger_switched_on_does_not_fire_for_history(clinic):
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW - DAY, type_id=ADMIN_TAG, created=NOW - 2 * DAY)
    clinic.appointment(11, 2, NOW + 3 * HOUR, created=NOW - 10 * DAY)  # its reminder moment passed
    clinic.trigger("welcome", **{**WELCOME, "grace": "30 days"})
    clinic.trigger("reminder", **{**REMINDER, "grace": "30 days"})
    result = clinic.plan(NOW)
    assert clinic.messages() == []
    assert result.totals["planned"] == 0
    clinic.appointment(12, 1, NOW + 3 * DAY, type_id=ADMIN_TAG, created=NOW + MIN)
    clinic.plan(NOW + 10 * MIN)
    assert [r.appointment_id for r in clinic.messages()] == [12]


def test_an_after_trigger_looks_back_exactly_its_own_offset(clinic):
    clinic.trigger("welcome", **WELCOME)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + DAY, type_id=ADMIN_TAG, created=NOW - 6 * MIN)
    clinic.appointment(11, 2, NOW + DAY, type_id=ADMIN_TAG, created=NOW - 4 * MIN)
    clinic.plan(NOW)
    row = clinic.one()
    assert (row.patient_id, row.due_at) == (2, NOW + MIN)


def test_the_go_live_moment_is_recorded_once_not_taken_from_the_config(clinic):
    clinic.trigger("welcome", **WELCOME)
    clinic.plan(NOW - DAY)
    clinic.plan(NOW)
    rows = clinic.con.execute(
        "SELECT went_live_at, ended_at FROM state.trigger_activations"
    ).fetchall()
    assert rows == [(NOW - DAY, None)]


def test_a_booking_made_in_the_second_a_trigger_went_live_is_not_history(clinic):
    # Cliniko stamps a booking to the second, a tick's clock has microseconds: went live at
    # 09:00:00.4, a booking made at 09:00:00.7 reads 09:00:00, and was never welcomed.
    clinic.trigger("welcome", event="appointment_booked", timing="immediately", channel="email",
                   template="welcome", purpose="transactional")  # fmt: skip
    clinic.patient(1)
    clinic.plan(NOW + timedelta(milliseconds=400))  # goes live; nothing booked yet
    assert clinic.messages() == []
    clinic.appointment(10, 1, NOW + 3 * DAY, created=NOW)  # booked at 09:00:00.7
    clinic.plan(NOW + MIN)
    row = clinic.one()
    assert (row.appointment_id, row.status, row.due_at) == (10, "planned", NOW)


def test_switching_a_trigger_off_cancels_its_planned_messages_and_on_again_starts_afresh(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    clinic.triggers[0]["enabled"] = False
    clinic.plan(NOW + MIN)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("cancelled", "trigger switched off")
    clinic.appointment(11, 1, NOW + 40 * HOUR, created=NOW - DAY)  # booked while it was off
    clinic.triggers[0]["enabled"] = True
    clinic.plan(NOW + 2 * MIN)
    # 10's reminder (cancelled when it went off, its moment still ahead) goes after all
    assert {r.appointment_id: r.status for r in clinic.messages()} == {
        10: "planned",
        11: "planned",
    }
    went_live = clinic.con.execute(
        "SELECT went_live_at FROM state.trigger_activations WHERE ended_at IS NULL"
    ).fetchall()
    assert went_live == [(NOW + 2 * MIN,)]


def test_a_trigger_switched_off_and_on_again_sends_what_falls_due_after_it_is_back(clinic):
    # Off for an hour (a template fixed, a toggle by mistake): the reminders planned before were
    # cancelled, and those whose moment comes after it is back on go as if it never was off;
    # one whose moment passed while it was off stays cancelled (switching on blasts nothing).
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 30 * HOUR)  # reminder at NOW + 6 h: after it is back
    clinic.appointment(12, 2, NOW + 24 * HOUR + 30 * MIN)  # at NOW + 30 min: while it is off
    clinic.plan(NOW)
    clinic.triggers[0]["enabled"] = False
    clinic.plan(NOW + MIN)
    assert {r.status for r in clinic.messages()} == {"cancelled"}
    clinic.triggers[0]["enabled"] = True
    result = clinic.plan(NOW + HOUR)
    rows = {r.appointment_id: r for r in clinic.messages()}
    assert (rows[10].status, rows[10].due_at) == ("planned", NOW + 6 * HOUR)
    assert "trigger switched off" in rows[10].status_reason
    assert (rows[12].status, rows[12].status_reason) == ("cancelled", "trigger switched off")
    assert result.totals["reopened"] == 1
    clinic.plan(NOW + HOUR + MIN, build=False)  # once: the next tick leaves it as it is
    again = {r.appointment_id: (r.status, r.due_at) for r in clinic.messages()}
    assert again == {10: ("planned", NOW + 6 * HOUR), 12: ("cancelled", rows[12].due_at)}


def test_redefining_a_trigger_re_dates_its_go_live_and_re_checks_what_it_planned(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    clinic.trigger("reminder", **{**REMINDER, "timing": "25 hours before", "channel": "email",
                                  "template": "welcome"})  # fmt: skip
    clinic.plan(NOW + MIN)
    row = clinic.one()
    # the same row (one message per occasion, whatever the edits), now by email and an hour earlier
    assert (row.status, row.channel, row.template) == ("planned", "email", "welcome")
    assert row.due_at == NOW + 5 * HOUR
    live_rows = clinic.con.execute(
        "SELECT went_live_at, ended_reason FROM state.trigger_activations ORDER BY went_live_at"
    ).fetchall()
    assert live_rows == [(NOW - 60 * DAY, "redefined"), (NOW + MIN, None)]


# --- re-checks: cancelled, rescheduled, grace -----------------------------------------------------


def test_a_reminder_is_cancelled_with_its_appointment(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    assert clinic.one().status == "planned"
    clinic.update_appointment(10, cancelled_at=NOW + MIN)
    result = clinic.plan(NOW + 5 * MIN)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("cancelled", "appointment cancelled")
    assert result.totals["cancelled"] == 1


def test_a_rescheduled_appointment_moves_its_reminder(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    before = clinic.one()
    clinic.update_appointment(10, starts_at=NOW + 40 * HOUR, ends_at=NOW + 40 * HOUR + 30 * MIN)
    clinic.plan(NOW + 5 * MIN)
    after = clinic.one()
    assert after.message_id == before.message_id and after.status == "planned"
    assert (after.due_at, after.expires_at) == (NOW + 16 * HOUR, NOW + 18 * HOUR)


def test_a_reminder_moved_beyond_the_planning_horizon_stays_planned_and_moves(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    clinic.update_appointment(10, starts_at=NOW + 20 * DAY, ends_at=NOW + 20 * DAY + 30 * MIN)
    clinic.plan(NOW + 5 * MIN)
    assert (clinic.one().status, clinic.one().due_at) == ("planned", NOW + 19 * DAY)


def test_a_message_not_sent_within_its_grace_window_is_skipped(clinic):
    clinic.trigger("welcome", **{**WELCOME, "grace": "1 hour"})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + DAY, type_id=ADMIN_TAG, created=NOW)
    clinic.plan(NOW)
    clinic.plan(NOW + 2 * HOUR)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("skipped", "past its grace window")


def test_a_reminder_never_goes_after_its_appointment_has_started(clinic):
    clinic.trigger("reminder", **{**REMINDER, "grace": "1 day"})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 2 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    assert clinic.one().expires_at == NOW + 2 * HOUR
    clinic.plan(NOW + 3 * HOUR)
    assert clinic.one().status == "skipped"


def test_planning_twice_plans_once(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    first = clinic.plan(NOW)
    second = clinic.plan(NOW + MIN, build=False)
    assert (first.totals["planned"], second.totals["planned"]) == (1, 0)
    assert len(clinic.messages()) == 1


# --- last-minute bookings ------------------------------------------------------------------------


@pytest.mark.parametrize(("last_minute", "expected"), [("send", [NOW - HOUR]), ("skip", [])])
def test_a_booking_made_after_the_reminder_moment_is_reminded_at_once_or_skipped(
    clinic, last_minute, expected
):
    clinic.trigger("reminder", **{**REMINDER, "last_minute": last_minute})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * HOUR, created=NOW - HOUR)
    clinic.plan(NOW)
    assert [r.due_at for r in clinic.messages()] == expected


# --- events ------------------------------------------------------------------------------------


def test_the_recall_goes_six_weeks_after_an_attended_initial_consultation(clinic):
    clinic.trigger("recall", **{**RECALL, "purpose": "transactional", "template": "welcome"})
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.patient(2)
    clinic.patient(3)
    starts = NOW - 42 * DAY + HOUR
    clinic.appointment(10, 1, starts, type_id=INITIAL, arrived=True)
    clinic.appointment(11, 2, starts, type_id=INITIAL, did_not_arrive=True)
    clinic.appointment(12, 3, starts, type_id=STANDARD, arrived=True)
    clinic.plan(NOW)
    row = clinic.one()
    assert (row.patient_id, row.due_at) == (1, starts + 30 * MIN + 42 * DAY)


def test_require_arrived_counts_only_appointments_marked_arrived(clinic):
    clinic.trigger("followup", event="after_appointment", timing="1 hour after", channel="sms",
                   template="reminder-24h", purpose="transactional", require_arrived=True)  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW - 80 * MIN, arrived=True)
    clinic.appointment(11, 2, NOW - 80 * MIN, arrived=False)
    clinic.plan(NOW)  # the front desk may still mark patient 2 arrived before the message is due
    assert clinic.patients_messaged(status="planned") == {1, 2}
    clinic.plan(NOW + 15 * MIN)
    statuses = {r.patient_id: (r.status, r.status_reason) for r in clinic.messages()}
    assert statuses == {1: ("planned", None), 2: ("cancelled", "appointment not marked as arrived")}


def test_an_unmarked_past_appointment_counts_as_attended_by_default(clinic):
    clinic.trigger("followup", event="after_appointment", timing="1 hour after", channel="sms",
                   template="reminder-24h", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.appointment(11, 1, NOW - 80 * MIN, arrived=False)
    clinic.plan(NOW)
    assert clinic.patients_messaged() == {1}


def test_a_cancellation_message_goes_unless_the_patient_rebooked(clinic):
    clinic.trigger("sorry", event="cancelled", timing="2 hours after", channel="email",
                   template="welcome", purpose="transactional",
                   filters={"not_rebooked_since_cancelling": True})  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 3 * DAY, cancelled=NOW - 90 * MIN)
    clinic.appointment(11, 2, NOW + 3 * DAY, cancelled=NOW - 90 * MIN)
    clinic.plan(NOW)
    assert clinic.patients_messaged(status="planned") == {1, 2}
    clinic.appointment(12, 2, NOW + 4 * DAY, created=NOW - 10 * MIN)  # patient 2 rebooked
    clinic.plan(NOW + 40 * MIN)
    statuses = {r.patient_id: (r.status, r.status_reason) for r in clinic.messages()}
    assert statuses == {1: ("planned", None), 2: ("skipped", "rebooked since cancelling")}


def test_a_cancellation_message_is_cancelled_when_the_appointment_is_uncancelled(clinic):
    clinic.trigger("sorry", event="cancelled", timing="2 hours after", channel="email",
                   template="welcome", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * DAY, cancelled=NOW - 90 * MIN)
    clinic.plan(NOW)
    clinic.update_appointment(10, cancelled_at=None)
    clinic.plan(NOW + MIN)
    assert (clinic.one().status, clinic.one().status_reason) == (
        "cancelled",
        "appointment no longer cancelled",
    )


def test_a_did_not_arrive_message_goes_after_the_missed_appointment(clinic):
    clinic.trigger("missed", event="did_not_arrive", timing="1 hour after", channel="sms",
                   template="reminder-24h", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW - 2 * HOUR, did_not_arrive=True)
    clinic.appointment(11, 2, NOW - 2 * HOUR, arrived=True)
    clinic.plan(NOW)
    row = clinic.one()
    assert (row.patient_id, row.due_at) == (1, NOW - 90 * MIN + HOUR)


def test_a_new_patient_message_goes_before_the_first_appointment_only(clinic):
    clinic.trigger("first", event="first_appointment", timing="2 days before", channel="email",
                   template="welcome", purpose="transactional",
                   exclude={"categories": ["Admin Only"]})  # fmt: skip
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    # patient 1: the admin tag does not make the clinical visit their second (seed 000)
    clinic.appointment(9, 1, NOW - 10 * DAY, type_id=ADMIN_TAG, arrived=True)
    clinic.appointment(10, 1, NOW + 36 * HOUR, type_id=INITIAL)
    clinic.appointment(11, 2, NOW - 30 * DAY, type_id=INITIAL, arrived=True)
    clinic.appointment(12, 2, NOW + 36 * HOUR, type_id=STANDARD)
    clinic.plan(NOW)
    assert [(r.patient_id, r.appointment_id) for r in clinic.messages()] == [(1, 10)]


def test_the_nth_appointment_reached_fires_once_it_is_attended(clinic):
    clinic.trigger("fifth", event="nth_appointment", n=3, timing="1 hour after",
                   channel="email", template="welcome", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1)
    for i, days in enumerate((20, 10, 0)):
        clinic.appointment(10 + i, 1, NOW - days * DAY - 2 * HOUR, arrived=True)
    clinic.appointment(20, 1, NOW - 15 * DAY, cancelled=NOW - 16 * DAY)  # cancelled: not counted
    clinic.plan(NOW)
    assert [r.appointment_id for r in clinic.messages()] == [12]


def test_a_patient_created_message_goes_after_the_patient_is_added(clinic):
    clinic.trigger("hello", event="patient_created", timing="10 minutes after", channel="email",
                   template="welcome", purpose="transactional")  # fmt: skip
    live(clinic)
    clinic.patient(1, created=NOW - 5 * MIN)
    clinic.patient(2, created=NOW - 300 * DAY)
    clinic.plan(NOW)
    row = clinic.one()
    assert (row.patient_id, row.appointment_id, row.due_at) == (1, None, NOW + 5 * MIN)
    assert row.send_key == "trigger:hello:1:patient"


# --- filters (OR within a kind, AND across kinds) -------------------------------------------------


def _reminder_for_each(clinic: Clinic, filters: dict) -> set[int]:
    clinic.trigger("reminder", **{**REMINDER, "exclude": {}, "filters": filters})
    live(clinic)
    clinic.patient(1, born="1950-01-01")
    clinic.patient(2, born="2000-01-01")
    clinic.patient(3, born="2015-01-01")
    clinic.appointment(10, 1, NOW + 30 * HOUR, type_id=INITIAL, practitioner=SAM)
    clinic.appointment(11, 2, NOW + 30 * HOUR, type_id=STANDARD, practitioner=ALEX)
    clinic.appointment(12, 3, NOW + 30 * HOUR, type_id=ADMIN_TAG, business=ADMIN_BUSINESS)
    clinic.appointment(13, 2, NOW - 30 * DAY, type_id=STANDARD, arrived=True)
    clinic.plan(NOW)
    return clinic.patients_messaged()


@pytest.mark.parametrize(
    ("filters", "patients"),
    [
        ({"appointment_types": ["initial consultation "]}, {1}),
        ({"appointment_types": ["Initial Consultation", STANDARD]}, {1, 2}),
        ({"categories": ["Physiotherapy"]}, {1, 2}),
        ({"businesses": ["Admin"]}, {3}),
        ({"practitioners": ["Alex Other"]}, {2}),
        ({"practitioners": [SAM], "categories": ["Physiotherapy"]}, {1}),
        ({"age": {"min": 18, "max": 65}}, {2}),
        ({"age": {"max": 17}}, {3}),
        ({"appointment_count": {"min": 2}}, {2}),
        ({"appointment_count": {"max": 1, "types": ["Standard Consultation"]}}, {1, 3}),
    ],
)
def test_filters(clinic, filters, patients):
    assert _reminder_for_each(clinic, filters) == patients


def test_a_filter_value_is_data_never_sql(clinic):
    clinic.trigger("reminder", **{**REMINDER, "filters": {"appointment_types": ["x') OR true --"]}})
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    assert clinic.messages() == []


# --- the audience: preferences, addresses, marketing ------------------------------------------------


@pytest.mark.parametrize(
    ("reminder_type", "channel", "reason"),
    [
        ("Email", "sms", "Cliniko reminder preference is Email"),
        ("None", "sms", "Cliniko reminder preference is None"),
        ("SMS", "email", "Cliniko reminder preference is SMS"),
        ("SMS & Email", "sms", None),
    ],
)
def test_a_reminder_respects_the_patients_cliniko_reminder_preference(
    clinic, reminder_type, channel, reason
):
    template = "reminder-24h" if channel == "sms" else "welcome"
    clinic.trigger("reminder", **{**REMINDER, "channel": channel, "template": template})
    live(clinic)
    clinic.patient(1, reminder_type=reminder_type)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    # a preference can change before the reminder is due: it waits with the reason
    assert clinic.one().status == "planned"
    assert (clinic.one().waiting_reason, clinic.one().status_reason) == (reason, reason)


def test_no_mobile_on_file_waits_then_is_skipped_with_the_reason_after_its_grace(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, mobile=None)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    assert (clinic.one().status, clinic.one().waiting_reason) == (
        "planned", "no valid mobile number on file")  # fmt: skip
    clinic.plan(NOW + 8 * HOUR + MIN)  # due NOW + 6 h, grace 2 h
    row = clinic.one()
    assert (row.status, row.status_reason) == ("skipped", "no valid mobile number on file")


def test_a_recall_is_skipped_when_a_future_appointment_is_booked_by_the_time_it_is_due(clinic):
    clinic.trigger("recall", **{**RECALL, "grace": "2 days"})
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.patient(2)
    ended = NOW - 42 * DAY + 30 * MIN
    clinic.appointment(10, 1, ended - 30 * MIN, type_id=INITIAL, arrived=True)
    clinic.appointment(11, 2, ended - 30 * MIN, type_id=INITIAL, arrived=True)
    clinic.appointment(12, 2, NOW + 5 * DAY)
    clinic.plan(NOW - 10 * HOUR)  # planned ahead; judged when due
    assert {r.status for r in clinic.messages()} == {"planned"}
    clinic.plan(NOW + HOUR)
    statuses = {r.patient_id: (r.status, r.status_reason) for r in clinic.messages()}
    assert statuses == {1: ("planned", None), 2: ("skipped", "a future appointment is booked")}


def test_marketing_is_skipped_for_a_patient_who_unsubscribed_after_it_was_planned(clinic):
    clinic.trigger("recall", **RECALL)
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW - 42 * DAY + HOUR, type_id=INITIAL, arrived=True)
    clinic.plan(NOW)
    assert clinic.one().status == "planned"
    ledger.add_suppression(clinic.con, channel="email", address="patient1@example.com",
                           scope="marketing", reason="unsubscribed", source="unsubscribe_link",
                           evidence="test", occurred_at=NOW)  # fmt: skip
    clinic.plan(NOW + 5 * MIN)
    assert clinic.one().status == "planned"  # waits: a re-subscription before it is due sends it
    assert clinic.one().waiting_reason.startswith("not subscribed to the email marketing list")
    clinic.plan(NOW + 2 * DAY)  # past its grace window: final, with the reason
    assert clinic.one().status == "skipped"
    assert clinic.one().status_reason.startswith("not subscribed to the email marketing list")


def test_a_transactional_message_ignores_the_marketing_lists_but_not_a_hard_bounce(clinic):
    clinic.trigger("welcome", **WELCOME)
    live(clinic)
    clinic.patient(1, email_opt_in=False)
    clinic.patient(2)
    ledger.add_suppression(clinic.con, channel="email", address="patient2@example.com",
                           scope="all", reason="hard_bounce", source="postmark",
                           evidence="test", occurred_at=NOW - DAY)  # fmt: skip
    clinic.appointment(10, 1, NOW + DAY, type_id=ADMIN_TAG, created=NOW)
    clinic.appointment(11, 2, NOW + DAY, type_id=ADMIN_TAG, created=NOW)
    clinic.plan(NOW)
    statuses = {r.patient_id: (r.status, r.waiting_reason) for r in clinic.messages()}
    assert statuses == {1: ("planned", None), 2: ("planned", "address suppressed (hard_bounce)")}


# --- the model build guard -------------------------------------------------------------------


def test_planning_refuses_to_run_on_a_failed_model_build(clinic, tmp_path):
    clinic.trigger("reminder", **REMINDER)
    clinic.build(NOW)
    broken = tmp_path / "sql"
    shutil.copytree(MODELS_DIR, broken, symlinks=True)
    # A failure that blames no model (a data test over no model) fails the whole build; a
    # broken model holds only what reads it (tests/unit/models/test_holds.py).
    (broken / "tests").mkdir()
    (broken / "tests" / "broken.sql").write_text("select 1 as oops")
    with pytest.raises(models.BuildFailed):
        models.build(clinic.con, models.ListSettings(), sql_dir=broken, now=NOW + MIN)
    with pytest.raises(UserFacingError, match="broken.sql"):
        planning.plan(clinic.con, clinic.config, NOW + 2 * MIN)
    assert clinic.con.execute("SELECT count(*) FROM state.trigger_activations").fetchone() == (0,)


def test_planning_refuses_to_run_before_any_model_build(clinic):
    clinic.trigger("reminder", **REMINDER)
    with pytest.raises(UserFacingError, match="never been built"):
        planning.plan(clinic.con, clinic.config, NOW)


def test_a_mart_built_before_is_kept_existed_has_it_filled_for_every_row_on_the_next_build(
    clinic, tmp_path
):
    clinic.patient(1)
    clinic.appointment(10, 1, NOW - 3 * DAY, arrived=True)
    clinic.appointment(11, 1, NOW + 3 * DAY)
    clinic.appointment(12, 1, NOW + 4 * DAY, cancelled=NOW - DAY)
    before = tmp_path / "sql"
    shutil.copytree(MODELS_DIR, before, symlinks=True)
    mart = before / "marts" / "appointments.sql"
    sql = mart.read_text()
    mart.unlink()
    mart.write_text(sql.replace("        numbered.is_kept,\n", ""))
    models.build(clinic.con, models.ListSettings(), sql_dir=before, now=NOW)
    columns = [r[0] for r in clinic.con.execute("DESCRIBE marts.appointments").fetchall()]
    assert "is_kept" not in columns
    clinic.build(NOW + MIN)  # the mart's SQL changed: rebuilt in full, not merged
    kept = clinic.con.execute(
        "SELECT appointment_id, is_kept FROM marts.appointments ORDER BY appointment_id"
    ).fetchall()
    assert kept == [(10, True), (11, True), (12, False)]


# --- prepare (just before sending) and preview ------------------------------------------------------


def test_prepare_gives_the_address_and_the_appointment_in_the_business_time_zone(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, first_name="Alexandra")
    clinic.appointment(10, 1, NOW + 24 * HOUR, created=NOW - 5 * DAY)
    clinic.plan(NOW)
    decision = Preparer(clinic.con, clinic.config, clock=lambda: NOW)(clinic.one())
    assert isinstance(decision, Ready)
    assert decision.to == "+61412345678"
    appointment = decision.context["appointment"]
    assert (appointment["time"], appointment["type"]) == ("8:00 pm", "Standard Consultation")
    assert appointment["practitioner"] == "Sam Example"
    assert decision.context["patient"]["first_name"] == "Alexandra"


def test_prepare_cancels_a_message_whose_appointment_was_cancelled_since_the_last_tick(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 24 * HOUR, created=NOW - 5 * DAY)
    clinic.plan(NOW)
    clinic.update_appointment(10, cancelled_at=NOW)
    clinic.build(NOW + MIN)
    decision = Preparer(clinic.con, clinic.config, clock=lambda: NOW + MIN)(clinic.one())
    assert decision == Skip("appointment cancelled", cancel=True)


def test_preview_shows_who_would_get_what_and_writes_nothing(clinic):
    clinic.trigger("reminder", **{**REMINDER, "enabled": False})
    clinic.patient(1)
    clinic.patient(2, reminder_type="Email")
    clinic.appointment(10, 1, NOW + 3 * DAY)
    clinic.appointment(11, 2, NOW + 4 * DAY)
    clinic.appointment(12, 1, NOW + 9 * DAY)
    clinic.build(NOW)
    before = clinic.con.execute(
        "SELECT (SELECT count(*) FROM state.messages), "
        "(SELECT count(*) FROM state.trigger_activations)"
    ).fetchone()
    went_live, rows = preview.preview(clinic.con, clinic.config.triggers[0], NOW, days=7)
    assert went_live == NOW
    assert [(r.appointment_id, r.decision) for r in rows] == [
        (10, "send"),
        (11, "waiting: Cliniko reminder preference is Email"),
    ]
    assert rows[0].due_at == NOW + 2 * DAY
    after = clinic.con.execute(
        "SELECT (SELECT count(*) FROM state.messages), "
        "(SELECT count(*) FROM state.trigger_activations)"
    ).fetchone()
    assert before == after == (0, 0)


def test_unknown_filter_names_are_reported(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"categories": ["Admin Only"]},
                                  "filters": {"appointment_types": ["Inital Consult"]}})  # fmt: skip
    clinic.patient(1)
    clinic.appointment(9, 1, NOW - 3 * DAY, type_id=ADMIN_TAG)
    clinic.appointment(10, 1, NOW + 3 * DAY)
    clinic.build(NOW)
    problems = preview.unknown_references(clinic.con, clinic.config.triggers[0])
    assert problems == [
        "filters.appointment_types: 'Inital Consult' matches no appointment in the synced data"
    ]


# --- marketing never reaches anyone off the marketing lists (property) -----------------------------

patient_strategy = st.fixed_dictionaries(
    {
        "email": st.sampled_from(["", None, "not-an-email", "shared@example.com"]),
        "mobile": st.sampled_from(["0412 345 678", "0412 000 111", None, "12345"]),
        "email_opt_in": st.sampled_from([True, False, None]),
        "sms_opt_in": st.sampled_from([True, False, None]),
        "archived": st.sampled_from([False, False, True]),
        "unsubscribed": st.sampled_from([False, False, True]),
        "stopped": st.sampled_from([False, False, True]),
        # mostly near now (in the trigger's window), sometimes long ago
        "appointment_days": st.lists(
            st.one_of(st.integers(-4, 3), st.integers(-800, -5)), min_size=1, max_size=3
        ),
    }
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patients=st.lists(patient_strategy, min_size=1, max_size=6),
    channel=st.sampled_from(["email", "sms"]),
    honour_opt_in=st.booleans(),
)
def test_marketing_never_reaches_anyone_off_the_marketing_lists(patients, channel, honour_opt_in):
    clinic = Clinic()
    try:
        template = "recall" if channel == "email" else "promo-sms"
        clinic.trigger("promo", event="after_appointment", timing="1 day after", channel=channel,
                       template=template, purpose="marketing", grace="30 days")  # fmt: skip
        live(clinic, NOW - 5 * DAY)
        for i, p in enumerate(patients, start=1):
            clinic.patient(i, email=p["email"], mobile=p["mobile"], archived=p["archived"],
                           email_opt_in=p["email_opt_in"], sms_opt_in=p["sms_opt_in"])  # fmt: skip
            for k, days in enumerate(p["appointment_days"]):
                clinic.appointment(100 * i + k, i, NOW + days * DAY - 2 * DAY, arrived=days < 0)
            address = {"email": f"patient{i}@example.com" if p["email"] == "" else p["email"],
                       "sms": "+61412345678" if p["mobile"] == "0412 345 678" else "+61412000111"}  # fmt: skip
            if p["unsubscribed"] and address["email"]:
                ledger.add_suppression(clinic.con, channel="email", address=address["email"],
                                       scope="marketing", reason="unsubscribed", source="operator",
                                       evidence="test", occurred_at=NOW - DAY)  # fmt: skip
            if p["stopped"]:
                ledger.add_suppression(clinic.con, channel="sms", address=address["sms"],
                                       scope="marketing", reason="stop", source="twilio",
                                       evidence="test", occurred_at=NOW - DAY)  # fmt: skip
        clinic.build(NOW, honour_email_opt_in=honour_opt_in)
        planning.plan(clinic.con, clinic.config, NOW)
        preparer = Preparer(clinic.con, clinic.config, clock=lambda: NOW + 3 * DAY)
        ready = {}
        for row in ledger.in_status(clinic.con, "planned"):
            decision = preparer(row)
            if isinstance(decision, Ready):
                ready[row.patient_id] = decision.to
        if channel == "email":
            listed = dict(clinic.con.execute(
                "SELECT patient_id, email FROM marts.email_marketing_list WHERE status = 'subscribed'"
            ).fetchall())  # fmt: skip
        else:
            listed = dict(clinic.con.execute(
                "SELECT patient_id, mobile_e164 FROM marts.sms_marketing_list WHERE status = 'subscribed'"
            ).fetchall())  # fmt: skip
        for patient_id, to in ready.items():
            assert listed.get(patient_id) == ledger.normalise_address(channel, to)
    finally:
        clinic.con.close()


# --- the operator's commands ------------------------------------------------------------------------


@pytest.fixture
def clinic_on_disk(tmp_path):
    """A clinic folder with clinic.yaml and its DuckDB file, models built, as the CLI finds them."""
    import yaml

    from tasks.warehouse import open_db

    triggers = [{"name": "reminder", "enabled": False, **REMINDER}]
    (tmp_path / "clinic.yaml").write_text(
        yaml.safe_dump(
            {
                "clinic": "disk",
                "name": "Disk Physio",
                "database": "clinic.duckdb",
                "triggers": triggers,
            }
        )  # fmt: skip
    )
    with open_db(tmp_path / "clinic.duckdb") as con:
        c = Clinic(con)
        c.patient(1, first_name="Robin")
        c.appointment(10, 1, datetime.now(UTC) + 3 * DAY)
        c.build(datetime.now(UTC))
    return tmp_path / "clinic.yaml"


def test_the_preview_command_prints_the_calendar_and_writes_nothing(clinic_on_disk):
    from typer.testing import CliRunner

    from relay.cli import app

    db = clinic_on_disk.parent / "clinic.duckdb"
    before = db.stat().st_mtime_ns
    out = CliRunner().invoke(app, ["preview", "trigger", "reminder", "--days", "7",
                                   "--clinic", str(clinic_on_disk)])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "next 7 days: 1 messages (1 send)" in out.output
    assert "Robin Tester" in out.output and "+61412345678" in out.output
    assert db.stat().st_mtime_ns == before


def _calendar_with(clinic_on_disk, first_name: str) -> list[str]:
    """`relay preview trigger reminder` in a 100-column terminal, with a patient of that first
    name booked in four days: its lines."""
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.warehouse import open_db

    with open_db(clinic_on_disk.parent / "clinic.duckdb") as con:
        c = Clinic(con)
        c._synced = datetime.now(UTC)  # synced after the fixture's build
        c.patient(2, first_name=first_name)
        c.appointment(20, 2, datetime.now(UTC) + 4 * DAY)
        c.build(datetime.now(UTC))
    out = CliRunner().invoke(app, ["preview", "trigger", "reminder", "--days", "7", "--clinic",
                                   str(clinic_on_disk)], env={"COLUMNS": "100"})  # fmt: skip
    assert out.exit_code == 0, out.output
    return out.output.splitlines()


def test_the_calendar_fits_a_100_column_terminal(clinic_on_disk):
    """Each message on two lines: a long name is cut with '…', the decision wraps under it."""
    lines = _calendar_with(clinic_on_disk, "Wolfeschlegelsteinhausenbergerdorff-Maximiliana" * 2)
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    assert any("Wolfeschlegel" in line and "… +61412345678" in line for line in lines), lines
    assert sum(line.strip().endswith(": send") for line in lines) == 2  # the decision, whole


def test_the_calendar_fits_100_columns_with_a_name_in_wide_characters(clinic_on_disk):
    """A name in Chinese, Japanese or Korean takes two columns a character: cut and padded by
    the columns it takes, not its characters (it ran past 100 and wrapped)."""
    import unicodedata

    def columns(line: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)

    lines = _calendar_with(clinic_on_disk, "王小明" * 10)
    assert max(columns(line) for line in lines) <= 100, "\n".join(lines)
    assert any("王小明王" in line and "… " in line and "+61412345678" in line for line in lines)


def test_render_writes_a_triggers_message_for_a_patient_to_a_file(clinic_on_disk, tmp_path):
    from typer.testing import CliRunner

    from relay.cli import app

    out = CliRunner().invoke(app, ["render", "reminder", "--patient", "1", "--clinic",
                                   str(clinic_on_disk), "--out", str(tmp_path / "r")])  # fmt: skip
    assert out.exit_code == 0, out.output
    text = (tmp_path / "r" / "preview-reminder-24h-sms.txt").read_text()
    assert "Hi Robin, a reminder of your Standard Consultation with Sam Example" in text


def test_render_says_the_day_as_the_patient_will_read_it(clinic_on_disk, tmp_path):
    """The appointment is in 3 days; its 24-hour reminder goes 2 days from now and says
    "tomorrow", so the rendered file says "tomorrow" too, not the date as seen today."""
    from typer.testing import CliRunner

    from relay.cli import app

    out = CliRunner().invoke(app, ["render", "reminder", "--patient", "1", "--clinic",
                                   str(clinic_on_disk), "--out", str(tmp_path / "r")])  # fmt: skip
    assert out.exit_code == 0, out.output
    text = (tmp_path / "r" / "preview-reminder-24h-sms.txt").read_text()
    assert "with Sam Example tomorrow at " in text, text


def test_test_send_sends_the_patients_message_to_staff_only_through_the_outbox(
    clinic_on_disk, data_dir
):
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.warehouse import open_db

    def test_send(to):
        return CliRunner().invoke(app, ["test-send", "reminder", "--to", to, "--clinic",
                                        str(clinic_on_disk)])  # fmt: skip

    refused = test_send("+61412345678")  # Robin's own mobile
    assert isinstance(refused.exception, UserFacingError)  # relay's main prints it, exit 2
    assert "never goes to the patient" in str(refused.exception)
    out = test_send("+61499999999")
    assert out.exit_code == 0, out.output
    assert "Test of reminder for patient 1" in out.output and "outbox: sent" in out.output
    (sms,) = (data_dir / "outbox" / "disk").glob("*.txt")
    assert sms.read_text().count("[TEST] Hi Robin") == 1 and "+61499999999" in sms.read_text()
    with open_db(clinic_on_disk.parent / "clinic.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.messages").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM state.test_sends").fetchone() == (1,)


# --- all or nothing, and the marketing path through dispatch ------------------------------------------


def test_a_tick_that_fails_halfway_leaves_nothing_behind(clinic, monkeypatch):
    clinic.trigger("welcome", **WELCOME)
    clinic.trigger("reminder", **REMINDER)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, type_id=ADMIN_TAG, created=NOW)
    clinic.build(NOW)
    real_insert = ledger.insert_planned
    calls = []

    def insert_then_die(con, messages, now):
        calls.append(real_insert(con, messages, now))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as good as a kill between two triggers
        return calls[-1]

    monkeypatch.setattr(ledger, "insert_planned", insert_then_die)
    with pytest.raises(KeyboardInterrupt):
        planning.plan(clinic.con, clinic.config, NOW)
    assert calls[0] == 1  # the welcome was inserted, then rolled back with everything else
    counts = clinic.con.execute(
        "SELECT (SELECT count(*) FROM state.messages), (SELECT count(*) FROM state.trigger_activations)"
    ).fetchone()
    assert counts == (0, 0)


def test_a_recall_reaches_a_subscriber_with_an_unsubscribe_link_and_nobody_else(clinic, tmp_path):
    from tasks.messages.dispatch import Unsubscribe, dispatch
    from tasks.messages.templates import Templates
    from tasks.providers.outbox import OutboxProvider

    clinic.trigger("recall", **{**RECALL, "grace": "2 days"})
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.patient(2)
    for patient in (1, 2):
        clinic.appointment(10 + patient, patient, NOW - 42 * DAY - HOUR, type_id=INITIAL,
                           arrived=True)  # fmt: skip
    ledger.add_suppression(clinic.con, channel="email", address="patient2@example.com",
                           scope="marketing", reason="unsubscribed", source="unsubscribe_link",
                           evidence="test", occurred_at=NOW - 50 * DAY)  # fmt: skip
    clinic.plan(NOW)
    outbox = OutboxProvider(tmp_path, email_from="clinic@example.com", sms_from="Clinic")
    result = dispatch(
        clinic.con,
        providers={"email": outbox},
        prepare=Preparer(clinic.con, clinic.config, clock=lambda: NOW),
        templates=Templates(),
        unsubscribe=Unsubscribe("test", "https://relay.example/unsubscribe", key=b"k" * 32),
        clock=lambda: NOW,
    )
    assert result.counts["sent"] == 1
    statuses = {r.patient_id: (r.status, r.status_reason) for r in clinic.messages()}
    assert statuses[1] == ("sent", None)
    assert statuses[2] == ("planned", "not subscribed to the email marketing list (unsubscribed)")
    assert not ledger.due(clinic.con, NOW), "a waiting message is not dispatch's to send"
    (eml,) = tmp_path.glob("*.eml")
    mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert mail["To"] == "patient1@example.com"
    assert mail["List-Unsubscribe"].startswith("<https://relay.example/unsubscribe/")


# --- send-time truth: a skip is final only when its moment has passed (issue 11 §1, §2) -------
#
# Each observed case as the tick runs it: build the models, plan, re-check, then dispatch through
# the trigger preparer and the marketing gate into the local outbox, at a fixed clock.


def tick_and_send(clinic: Clinic, now: datetime, outbox: Path) -> dict:
    """What the tick does: build, plan; then the dispatch flow: re-check, send what is due."""
    from tasks.messages.dispatch import Unsubscribe, dispatch
    from tasks.messages.gate import Gate
    from tasks.messages.prepare import by_source_kind
    from tasks.messages.templates import Templates
    from tasks.providers.outbox import OutboxProvider

    clinic.plan(now)
    planning.recheck(clinic.con, clinic.config, now)
    provider = OutboxProvider(outbox, email_from="clinic@example.com", sms_from="Clinic")
    return dispatch(
        clinic.con,
        providers={"email": provider, "sms": provider},
        prepare=by_source_kind({"trigger": Preparer(clinic.con, clinic.config, clock=lambda: now)}),
        templates=Templates(),
        unsubscribe=Unsubscribe("test", "https://relay.example/unsubscribe", key=b"k" * 32),
        clock=lambda: now,
        gate=Gate.from_config(clinic.config),
    ).counts


def waiting_state(clinic: Clinic, now: datetime) -> dict[str, str]:
    """send key -> why, for the messages `relay ledger waiting` lists."""
    from tasks.messages import waiting

    return {row.send_key: why for row, why in waiting.rows_waiting(clinic.con, now)}


DUE = NOW + 6 * HOUR  # the reminder of an appointment at NOW + 30 h (24 hours before, 2 h grace)


@pytest.mark.parametrize(
    ("channel", "before", "fix", "reason"),
    [
        ("sms", {"mobile": None},
         {"patient_phone_numbers": [{"phone_type": "Mobile", "number": "0412 345 678"}]},
         "no valid mobile number on file"),
        ("email", {"email": None}, {"email": "patient1@example.com"},
         "no valid email address on file"),
        ("sms", {"archived": True}, {"archived_at": ""}, "patient archived in Cliniko"),
        ("sms", {"reminder_type": "None"}, {"reminder_type": "SMS"},
         "Cliniko reminder preference is None"),
    ],
    ids=["mobile-added", "email-added", "unarchived", "preference-none-to-sms"],
)  # fmt: skip
def test_a_reminder_waits_for_a_reason_that_clears_before_its_moment_and_then_goes(
    clinic, tmp_path, channel, before, fix, reason
):
    template = "reminder-24h" if channel == "sms" else "welcome"
    clinic.trigger("reminder", **{**REMINDER, "channel": channel, "template": template})
    live(clinic)
    clinic.patient(1, **before)
    clinic.appointment(10, 1, NOW + 30 * HOUR)

    tick_and_send(clinic, NOW, tmp_path)
    row = clinic.one()
    assert (row.status, row.waiting_reason) == ("planned", reason)
    assert waiting_state(clinic, NOW) == {row.send_key: reason}

    clinic.update_patient(1, **fix)  # the front desk fixes it before the reminder is due
    counts = tick_and_send(clinic, DUE + 30 * MIN, tmp_path)
    row = clinic.one()
    assert (row.status, counts["sent"]) == ("sent", 1)
    assert waiting_state(clinic, DUE + 30 * MIN) == {}


def test_a_reminder_whose_reason_never_clears_is_skipped_with_it_after_its_grace_window(
    clinic, tmp_path
):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, mobile=None)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    tick_and_send(clinic, NOW, tmp_path)
    tick_and_send(clinic, DUE + HOUR, tmp_path)  # due, within grace: still waiting, not sent
    assert (clinic.one().status, clinic.one().waiting_reason) == (
        "planned", "no valid mobile number on file")  # fmt: skip
    tick_and_send(clinic, DUE + 2 * HOUR + MIN, tmp_path)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("skipped", "no valid mobile number on file")
    clinic.update_patient(
        1, patient_phone_numbers=[{"phone_type": "Mobile", "number": "0412 345 678"}]
    )
    tick_and_send(clinic, DUE + 3 * HOUR, tmp_path)
    assert clinic.one().status == "skipped", "after its moment + grace a skip is final"


def test_a_cancelled_appointment_still_cancels_its_reminder_at_once(clinic, tmp_path):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1, mobile=None)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    tick_and_send(clinic, NOW, tmp_path)
    clinic.update_appointment(10, cancelled_at=NOW + MIN)
    tick_and_send(clinic, NOW + 5 * MIN, tmp_path)
    row = clinic.one()
    assert (row.status, row.status_reason) == ("cancelled", "appointment cancelled")


def _edit(clinic: Clinic, at: datetime, **links: tuple[str, int]) -> None:
    """The front desk edits the appointment's type, practitioner or business at ``at``."""
    changes = {key: _link(resource, id_) for key, (resource, id_) in links.items()}
    clinic.update_appointment(10, updated_at=at, **changes)


EDITS = {
    "type": ({"appointment_types": ["Standard Consultation"]},
             {"appointment_type": ("appointment_types", INITIAL)},
             {"appointment_type": ("appointment_types", STANDARD)}),
    "practitioner": ({"practitioners": ["Sam Example"]},
                     {"practitioner": ("practitioners", ALEX)},
                     {"practitioner": ("practitioners", SAM)}),
    "tag-category": ({},
                     {"appointment_type": ("appointment_types", ADMIN_TAG)},
                     {"appointment_type": ("appointment_types", STANDARD)}),
}  # fmt: skip


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_appointment_edited_out_of_the_filters_and_back_before_its_moment_is_reminded(
    clinic, tmp_path, edit
):
    filters, away, back = EDITS[edit]
    clinic.trigger("reminder", **REMINDER, filters=filters)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    tick_and_send(clinic, NOW, tmp_path)
    _edit(clinic, NOW + HOUR, **away)  # changed by mistake...
    tick_and_send(clinic, NOW + HOUR + 5 * MIN, tmp_path)
    row = clinic.one()
    assert (row.status, row.waiting_reason) == (
        "planned", "no longer matches the trigger's filters (appointment or patient changed)"
    )  # fmt: skip
    assert tick_and_send(clinic, DUE + 5 * MIN, tmp_path)["sent"] == 0, "never while edited out"
    _edit(clinic, DUE + 10 * MIN, **back)  # ... and put back within the grace window
    counts = tick_and_send(clinic, DUE + 15 * MIN, tmp_path)
    assert (clinic.one().status, counts["sent"]) == ("sent", 1)


def test_an_appointment_left_edited_out_of_the_filters_never_gets_the_reminder(clinic, tmp_path):
    filters, away, _ = EDITS["type"]
    clinic.trigger("reminder", **REMINDER, filters=filters)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    tick_and_send(clinic, NOW, tmp_path)
    _edit(clinic, NOW + HOUR, **away)
    for at in (NOW + 2 * HOUR, DUE + 5 * MIN, DUE + 2 * HOUR + MIN, DUE + 3 * HOUR):
        assert tick_and_send(clinic, at, tmp_path)["sent"] == 0
    row = clinic.one()
    assert (row.status, row.status_reason) == (
        "skipped", "no longer matches the trigger's filters (appointment or patient changed)"
    )  # fmt: skip


def _merge(clinic: Clinic, away: int, into: int, at: datetime) -> None:
    """The front desk merges patient record ``away`` into ``into`` (Cliniko archives it)."""
    clinic.update_patient(away, archived_at=_ts(at), merged_at=_ts(at),
                          merged_with_patient=_link("patients", into))  # fmt: skip


@pytest.mark.parametrize("merged_at", [DUE - 4 * HOUR, DUE + 10 * MIN], ids=["before", "after"])
def test_a_reminder_goes_once_when_the_patient_records_are_merged_around_its_moment(
    clinic, tmp_path, merged_at
):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)  # the same person booked twice: a duplicate record, the same mobile
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    tick_and_send(clinic, NOW, tmp_path)
    sent = 0
    for at in (DUE - 4 * HOUR + MIN, DUE + MIN, DUE + 15 * MIN, DUE + HOUR):
        if at > merged_at and not clinic._patients[1].get("merged_at"):
            _merge(clinic, 1, into=2, at=merged_at)
        sent += tick_and_send(clinic, at, tmp_path)["sent"]
    assert sent == 1, {r.send_key: r.status for r in clinic.messages()}


def test_marketing_for_someone_who_resubscribed_before_it_was_due_goes(clinic, tmp_path):
    clinic.trigger("recall", **{**RECALL, "grace": "2 days"})
    live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW - 42 * DAY + 5 * HOUR, type_id=INITIAL, arrived=True)
    ledger.add_suppression(clinic.con, channel="email", address="patient1@example.com",
                           scope="marketing", reason="unsubscribed", source="unsubscribe_link",
                           evidence="test", occurred_at=NOW - DAY)  # fmt: skip
    tick_and_send(clinic, NOW, tmp_path)
    row = clinic.one()
    assert row.status == "planned"
    assert row.waiting_reason.startswith("not subscribed to the email marketing list")

    clinic.con.execute(  # a fresh opt-in lifts the unsubscribe (tasks/feedback.py, lift)
        "INSERT INTO state.suppressions (channel, address, action, reason, scope, source, "
        "evidence, occurred_at, recorded_at) VALUES ('email', 'patient1@example.com', 'lift', "
        "'opt_in', 'marketing', 'operator', 'test', ?, ?)",
        [NOW + HOUR, NOW + HOUR],
    )
    counts = tick_and_send(clinic, NOW + 6 * HOUR, tmp_path)
    assert (clinic.one().status, counts["sent"]) == ("sent", 1)


def test_the_send_time_check_holds_a_message_whose_reason_appeared_after_the_tick(clinic, tmp_path):
    from tasks.messages.dispatch import dispatch
    from tasks.messages.templates import Templates
    from tasks.providers.outbox import OutboxProvider

    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.plan(NOW)
    assert clinic.one().waiting_reason is None
    clinic.update_patient(1, reminder_type="None")
    clinic.build(DUE)  # a sync and build after the tick; dispatch asks the preparer at once

    def send(at: datetime) -> dict:
        provider = OutboxProvider(tmp_path, email_from="c@example.com", sms_from="Clinic")
        return dispatch(clinic.con, providers={"sms": provider}, templates=Templates(),
                        prepare=Preparer(clinic.con, clinic.config, clock=lambda: at),
                        clock=lambda: at).counts  # fmt: skip

    assert send(DUE)["waiting"] == 1
    row = clinic.one()
    assert (row.status, row.waiting_reason) == ("planned", "Cliniko reminder preference is None")
    assert not ledger.due(clinic.con, DUE + MIN), "dispatch looks again later, not in a loop"
    clinic.update_patient(1, reminder_type="SMS & Email")
    clinic.build(DUE + 30 * MIN)
    assert send(DUE + 30 * MIN)["sent"] == 1
    assert clinic.one().status == "sent"


@pytest.mark.parametrize("last_minute", ["send", "skip"])
def test_an_appointment_moved_into_the_reminder_window_is_a_late_booking(
    clinic, tmp_path, last_minute
):
    clinic.trigger("reminder", **{**REMINDER, "last_minute": last_minute})
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 3 * DAY, created=NOW - 10 * DAY)
    tick_and_send(clinic, NOW, tmp_path)
    assert clinic.one().due_at == NOW + 2 * DAY

    moved_at = NOW + HOUR
    clinic.update_appointment(10, starts_at=moved_at + 4 * HOUR,
                              ends_at=moved_at + 4 * HOUR + 30 * MIN)  # fmt: skip
    # the same moment, a new booking: the rule a move must follow
    clinic.appointment(11, 2, moved_at + 4 * HOUR, created=moved_at - 5 * MIN)
    tick_and_send(clinic, moved_at, tmp_path)
    statuses = {r.appointment_id: (r.status, r.status_reason) for r in clinic.messages()}
    if last_minute == "send":
        assert statuses == {10: ("sent", None), 11: ("sent", None)}
    else:
        assert statuses == {10: ("skipped", "appointment moved to less than 24 hours before it "
                                            "(last_minute: skip)")}  # fmt: skip


def test_a_late_move_is_dated_once_and_a_move_back_out_replans_as_before(clinic, tmp_path):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * DAY, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    clinic.update_appointment(10, starts_at=NOW + 5 * HOUR, ends_at=NOW + 5 * HOUR + 30 * MIN)
    clinic.plan(NOW + HOUR)
    row = clinic.one()
    assert (row.status, row.due_at, row.expires_at) == ("planned", NOW + HOUR, NOW + 3 * HOUR)
    clinic.plan(NOW + 90 * MIN)  # a later tick keeps the moment the move was seen
    assert (clinic.one().due_at, clinic.one().expires_at) == (NOW + HOUR, NOW + 3 * HOUR)
    clinic.update_appointment(10, starts_at=NOW + 4 * DAY, ends_at=NOW + 4 * DAY + 30 * MIN)
    clinic.plan(NOW + 2 * HOUR)
    row = clinic.one()
    assert (row.status, row.due_at, row.expires_at) == (
        "planned",
        NOW + 3 * DAY,
        NOW + 3 * DAY + 2 * HOUR,
    )


def test_the_ledger_and_the_preview_say_which_messages_wait_and_why(clinic_on_disk):
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.warehouse import open_db

    db = clinic_on_disk.parent / "clinic.duckdb"
    now = datetime.now(UTC)
    with open_db(db) as con:
        c = Clinic(con)
        c._synced = now  # synced after the fixture's build
        c.patient(1, first_name="Robin", reminder_type="None")
        c.appointment(10, 1, now + 3 * DAY)
        c.trigger("reminder", **REMINDER)
        live(c, now - DAY)
        c.plan(now + DAY + HOUR)  # the reminder of the appointment in 3 days is due in a day
        assert c.one().waiting_reason == "Cliniko reminder preference is None"
    out = CliRunner().invoke(app, ["ledger", "waiting", "--clinic", str(clinic_on_disk)])
    assert out.exit_code == 0, out.output
    assert "trigger:reminder:1:appointment:10  sms" in out.output
    assert ": Cliniko reminder preference is None" in out.output
    assert "1 waiting messages in disk. By state: 1 waiting" in out.output
    assert "Robin" not in out.output and "+61" not in out.output  # no personal data
    out = CliRunner().invoke(app, ["preview", "trigger", "reminder", "--days", "7",
                                   "--clinic", str(clinic_on_disk)])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "(1 waiting)" in out.output
    # the preview wraps reasons to the terminal's width: compare the words
    assert "waiting: Cliniko reminder preference is None" in " ".join(out.output.split())


# --- an unplanned appointment moved into the window: a late booking ------------------------------


def _move(clinic: Clinic, id_: int, starts: datetime, at: datetime) -> None:
    """The front desk moves the appointment to ``starts``, at ``at`` (Cliniko's updated_at)."""
    clinic.update_appointment(id_, starts_at=starts, ends_at=starts + 30 * MIN, updated_at=at)


@pytest.mark.parametrize("last_minute", ["send", "skip"])
def test_an_appointment_a_week_away_moved_into_the_window_is_a_late_booking(
    clinic, tmp_path, last_minute
):
    clinic.trigger("reminder", **{**REMINDER, "last_minute": last_minute})
    live(clinic)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 7 * DAY, created=NOW - 10 * DAY)
    tick_and_send(clinic, NOW, tmp_path)
    assert clinic.messages() == [], "a week away: beyond the planning horizon"

    moved_at = NOW + HOUR
    _move(clinic, 10, moved_at + 4 * HOUR, at=moved_at - 5 * MIN)
    # the same moment, a new booking: the rule a move must follow
    clinic.appointment(11, 2, moved_at + 4 * HOUR, created=moved_at - 5 * MIN)
    tick_and_send(clinic, moved_at, tmp_path)
    rows = {r.appointment_id: (r.status, r.due_at) for r in clinic.messages()}
    if last_minute == "send":
        assert rows == {10: ("sent", moved_at - 5 * MIN), 11: ("sent", moved_at - 5 * MIN)}
        assert clinic.messages()[0].expires_at == moved_at - 5 * MIN + 2 * HOUR
    else:
        assert rows == {}


def test_a_trigger_switched_on_after_the_reminder_moment_ignores_edits_made_after_go_live(
    clinic, tmp_path
):
    clinic.trigger("reminder", **{**REMINDER, "grace": "30 days"})
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * HOUR, created=NOW - 10 * DAY)  # its moment: NOW - 21 h
    clinic.plan(NOW)  # goes live now: the reminder's moment came before that
    clinic.update_appointment(10, updated_at=NOW + MIN)  # a note edited, nothing moved
    tick_and_send(clinic, NOW + 10 * MIN, tmp_path)
    assert clinic.messages() == []


def test_a_planned_reminder_keeps_its_timing_when_its_appointment_is_edited_without_moving(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 30 * HOUR, created=NOW - 10 * DAY)
    clinic.plan(NOW)
    assert (clinic.one().due_at, clinic.one().expires_at) == (NOW + 6 * HOUR, NOW + 8 * HOUR)
    clinic.update_appointment(10, updated_at=NOW + 7 * HOUR)  # after its moment, within grace
    result = clinic.plan(NOW + 7 * HOUR)
    row = clinic.one()
    assert (row.status, row.due_at, row.expires_at) == ("planned", NOW + 6 * HOUR, NOW + 8 * HOUR)
    assert result.totals["rescheduled"] == 0


def test_an_edit_stamped_after_the_appointment_started_is_no_late_booking(clinic):
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 3 * HOUR, created=NOW - 10 * DAY)
    clinic.update_appointment(10, updated_at=NOW + 4 * HOUR)  # a clock ahead: no booking
    clinic.plan(NOW)
    assert clinic.messages() == []
