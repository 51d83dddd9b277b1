"""A broken model holds only what reads it: scenarios on a hand-made clinic (real DuckDB, the real
staging and marts models), run the way the tick's flows run them: build, then
``tasks.tick.held_sources``, then planning, journeys and dispatch (through the local outbox) with
what it holds."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from tasks import tick
from tasks.marketing import campaigns, journeys
from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.gate import Gate
from tasks.messages.prepare import by_source_kind
from tasks.messages.templates import Templates
from tasks.models import runner as models
from tasks.providers.outbox import OutboxProvider
from tasks.triggers import plan as planning
from tasks.triggers.prepare import Preparer

_spec = importlib.util.spec_from_file_location(
    "journey_clinic", Path(__file__).parents[1] / "marketing" / "journey_clinic.py"
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)

REMINDER = {
    "name": "sms-reminder-24h",
    "enabled": True,
    "event": "before_appointment",
    "timing": "24 hours before",
    "grace": "2 hours",
    "channel": "sms",
    "template": "reminder-24h",
    "purpose": "transactional",
}
WELCOME_JOURNEY = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [{"send": "email", "template": "new-patient-welcome"}],
}
# An analyst's typo: a column that does not exist. The file still parses; it fails when built.
TYPO = "select patinet_id from marts.patients"


class Clinic(journey_clinic.Clinic):
    """The journey tests' clinic, with its own copy of the SQL (to break) and a tick that runs
    plan, journeys and dispatch with what the latest build holds, as flows/ do."""

    def __init__(self, sql: Path, outbox: Path):
        super().__init__(journeys=[WELCOME_JOURNEY], triggers=[REMINDER])
        self.sql, self.outbox = sql, outbox
        shutil.copytree(journey_clinic.sql_dir(), sql)

    def build(self) -> None:
        models.build(
            self.con, models.ListSettings(active_patient_months=24), sql_dir=self.sql, now=self.now
        )

    def run_tick(self, *, send: bool = True) -> dict[tuple[str, str], str]:
        """Build (a broken file is reported, not fatal), then plan, journeys and dispatch."""
        with contextlib.suppress(models.BuildFailed):  # the tick goes on after it
            self.build()
        cfg = self.cfg()
        held = tick.held_sources(self.con, cfg)
        planning.plan(self.con, cfg, self.now, held=tick.of_kind(held, "trigger"))
        journeys.run_journeys(self.con, cfg, self.now, held=tick.of_kind(held, "journey"))
        if not send:
            return held
        marketing = Gate.from_config(cfg)
        provider = OutboxProvider(self.outbox, email_from="T <t@example.com>", sms_from="Test")
        dispatch(
            self.con,
            providers={"email": provider, "sms": provider},
            prepare=by_source_kind(
                {
                    "trigger": Preparer(self.con, cfg, clock=lambda: self.now),
                    "journey": journeys.Preparer(self.con, cfg),
                    "campaign": campaigns.Preparer(self.con, cfg),
                }
            ),
            templates=Templates(None),
            unsubscribe=Unsubscribe("test", "http://127.0.0.1:8765/unsubscribe", b"k"),
            clock=lambda: self.now,
            gate=lambda con, rows, now: marketing(con, tick.hold_rows(con, rows, now, held), now),
        )
        return held

    def sent(self, source: str) -> list[int]:
        return [r.patient_id for r in ledger.in_status(self.con, "sent") if r.source_name == source]


@pytest.fixture
def clinic(tmp_path):
    c = Clinic(tmp_path / "sql", tmp_path / "outbox")
    c.patient(1, mobile="0412 345 678")
    c.visit(1, days_ago=400)
    c.run_tick()  # the trigger and the journey go live
    yield c
    c.con.close()


def test_a_typo_in_a_segment_holds_its_journey_and_the_reminders_still_go(clinic):
    clinic.patient(2)
    clinic.visit(2, days_ago=1)  # a new patient: enters new_patients with a good build
    clinic.advance(minutes=5)
    clinic.run_tick(send=False)  # the welcome is queued; dispatch has not run yet
    clinic.advance(minutes=5)
    clinic.book(1, days_ahead=1.05)  # reminded 24 hours before: in about an hour
    (clinic.sql / "segments" / "new_patients.sql").write_text(TYPO)
    clinic.patient(3)
    clinic.visit(3, days_ago=1)  # would enter the journey, but its segment did not build
    assert ledger.in_status(clinic.con, "planned")  # patient 2's welcome is queued, not sent yet

    held = clinic.run_tick()

    why = "segments.new_patients not rebuilt (sql/segments/new_patients.sql failed to build)"
    assert held == {("journey", "new-patient"): why}
    clinic.advance(hours=1, minutes=30)
    clinic.run_tick()
    assert clinic.sent("sms-reminder-24h") == [1]  # reminders go on
    assert clinic.sent("new-patient") == []  # the queued welcome waits, with the reason
    (waiting,) = ledger.in_status(clinic.con, "planned")
    assert (waiting.patient_id, waiting.status_reason) == (2, f"held: {why}")
    assert [p for p, *_ in clinic.enrolments("new-patient")] == [2]  # nobody entered since
    summary = tick.Summary("test", clinic.now, held_sources={"journey new-patient": why})
    assert f"- journey new-patient: {why}" in tick.markdown(summary)

    (clinic.sql / "segments" / "new_patients.sql").unlink()
    shutil.copy(models.SQL_DIR / "segments" / "new_patients.sql", clinic.sql / "segments")
    clinic.advance(minutes=5)
    assert clinic.run_tick() == {}  # fixed: the journey catches up
    clinic.advance(minutes=5)
    clinic.run_tick()
    assert sorted(clinic.sent("new-patient")) == [2, 3]


def test_a_broken_mart_the_reminders_read_holds_the_reminders(clinic):
    clinic.book(1, days_ahead=1.05)
    clinic.advance(minutes=5)
    clinic.run_tick()
    assert [r.source_name for r in ledger.in_status(clinic.con, "planned")] == ["sms-reminder-24h"]
    appointments = clinic.sql / "marts" / "appointments.sql"
    good = appointments.read_text()
    appointments.write_text(good.replace("select", "select no_such_column,", 1))

    clinic.advance(hours=1, minutes=30)
    held = clinic.run_tick()

    why = held[("trigger", "sms-reminder-24h")]
    assert "marts.appointments" in why and "(sql/marts/appointments.sql failed to build)" in why
    assert clinic.sent("sms-reminder-24h") == []
    (waiting,) = ledger.in_status(clinic.con, "planned")
    assert waiting.status_reason.startswith("held: ")


def test_a_confirmed_campaign_is_held_by_the_segment_it_was_confirmed_on(clinic):
    """clinic.yaml may name another segment since the confirmation; the campaign sends from the
    one confirmed, so that one breaking holds it (and clinic.yaml's breaking does not)."""
    recall = {"name": "autumn-recall", "segment": "new_patients", "channel": "email",
              "template": "recall-checkin", "send_at": (clinic.now + timedelta(days=1)).isoformat()}  # fmt: skip
    campaigns.confirm(clinic.con, clinic.cfg(campaigns=[recall]), "autumn-recall", clinic.now)
    edited = clinic.cfg(campaigns=[{**recall, "segment": "upcoming_appointment"}])
    (clinic.sql / "segments" / "new_patients.sql").write_text(TYPO)
    with pytest.raises(models.BuildFailed):
        clinic.build()

    why = "segments.new_patients not rebuilt (sql/segments/new_patients.sql failed to build)"
    assert tick.held_sources(clinic.con, edited)[("campaign", "autumn-recall")] == why
    clinic.advance(days=1, minutes=1)
    held = tick.of_kind(tick.held_sources(clinic.con, edited), "campaign")
    assert campaigns.freeze_due(clinic.con, edited, clinic.now, held=held) == {}

    shutil.copy(models.SQL_DIR / "segments" / "new_patients.sql", clinic.sql / "segments")
    (clinic.sql / "segments" / "upcoming_appointment.sql").write_text(TYPO)
    with pytest.raises(models.BuildFailed):
        clinic.build()
    assert ("campaign", "autumn-recall") not in tick.held_sources(clinic.con, edited)


def test_a_journey_whose_date_field_is_not_a_date_column_waits_alone(clinic):
    """A typo in one journey's entry.date_field holds that journey, named in the held sources and
    the warnings each tick (and relay clinics); the other journeys, the campaigns and the
    reminders go on. It used to fail the whole journeys step every tick: no journey advanced and
    no campaign was frozen."""
    birthday = {"name": "birthday", "entry": {"date_field": "birthday"},
                "steps": [{"send": "email", "template": "birthday"}]}  # fmt: skip
    recall = {"name": "autumn-recall", "segment": "new_patients", "channel": "email",
              "template": "recall-checkin", "send_at": (clinic.now + timedelta(hours=1)).isoformat()}  # fmt: skip
    clinic.config.update(journeys=[birthday, WELCOME_JOURNEY], campaigns=[recall])
    campaigns.confirm(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    clinic.patient(2)
    clinic.visit(2, days_ago=1)  # a new patient: enters the welcome journey and the campaign's
    clinic.book(1, days_ahead=1.05)  # reminded 24 hours before: in about an hour
    clinic.advance(minutes=5)

    held = clinic.run_tick()

    why = ("entry.date_field 'birthday' is not a DATE column of marts.patients (e.g. "
           "date_of_birth); fix the journey in clinic.yaml")  # fmt: skip
    assert held == {("journey", "birthday"): why}
    assert f"journey 'birthday' held: {why}" in tick.warnings(clinic.con, clinic.cfg())
    clinic.advance(hours=1, minutes=30)
    # the journeys step freezes the campaigns due after advancing the journeys (flows/journeys.py)
    held = tick.of_kind(tick.held_sources(clinic.con, clinic.cfg()), "campaign")
    assert campaigns.freeze_due(clinic.con, clinic.cfg(), clinic.now, held=held) == {
        "autumn-recall": 1
    }
    clinic.run_tick()
    assert clinic.sent("new-patient") == [2]
    assert clinic.sent("autumn-recall") == [2]
    assert clinic.sent("sms-reminder-24h") == [1]
    assert clinic.enrolments("birthday") == []


def test_preview_segment_and_models_test_work_after_a_failed_build(clinic):
    from tasks.models.preview import preview_segment

    # marts.patients is read by every segment: all of them are held
    (clinic.sql / "marts" / "patients.sql").write_text("select patinet_id from staging.patients")
    with pytest.raises(models.BuildFailed, match="sql/marts/patients.sql"):
        clinic.build()
    preview = preview_segment(clinic.con, "upcoming_appointment", sql_dir=clinic.sql)
    assert (preview.relation, preview.size) == ("segments.upcoming_appointment", 0)
    assert "marts.patients" in preview.reads
    assert models.run_tests(clinic.con, clinic.sql) == {}  # no tests in this copy; it runs
    with pytest.raises(Exception, match="sql/marts/patients.sql"):  # the planner would wait
        models.require_good_build(clinic.con, ["segments.new_patients"])


def test_a_segment_keyed_by_email_holds_its_journey_only_and_preview_names_the_file(clinic):
    """Before, a text patient_id passed the shape check: preview crashed with a traceback, and
    the build failed as a whole in membership.py (every reminder waited on one segment)."""
    from tasks.models.preview import preview_segment

    by_email = "select email_normalised as patient_id from marts.patients"
    (clinic.sql / "segments" / "new_patients.sql").write_text(by_email)
    with pytest.raises(models.ModelError, match="sql/segments/new_patients.sql: patient_id is"):
        preview_segment(clinic.con, "new_patients", sql_dir=clinic.sql)
    clinic.book(1, days_ahead=1.05)
    clinic.advance(minutes=5)

    held = clinic.run_tick()

    why = "segments.new_patients not rebuilt (sql/segments/new_patients.sql failed to build)"
    assert held == {("journey", "new-patient"): why}
    assert models.latest_build(clinic.con)["status"] == "succeeded"
    clinic.advance(hours=1, minutes=30)
    clinic.run_tick()
    assert clinic.sent("sms-reminder-24h") == [1]


def test_a_model_reading_a_missing_table_holds_its_readers_and_models_test_still_runs(clinic):
    """An analyst's typo in a table's name (marts.patientz): its readers were each reported as
    reading a model "which does not exist (there is no file ...)" though the file was there, and
    `relay models test` refused to run at all after that build."""
    (clinic.sql / "tests").mkdir()
    (clinic.sql / "tests" / "new_patients_have_ids.sql").write_text(
        "select patient_id from segments.new_patients where patient_id is null"
    )
    clinic.build()
    (clinic.sql / "segments" / "new_patients.sql").write_text(
        "select patient_id from marts.patientz"
    )
    with pytest.raises(models.BuildFailed) as failed:
        clinic.build()
    assert "sql/segments/new_patients.sql: reads marts.patientz, which does not exist" in str(
        failed.value
    )
    assert "sql/tests/new_patients_have_ids.sql" not in str(failed.value)
    assert models.run_tests(clinic.con, clinic.sql) == {"sql/tests/new_patients_have_ids.sql": 0}
