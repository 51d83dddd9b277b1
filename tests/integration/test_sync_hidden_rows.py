"""What the real API hides, read anyway: a cancelled class place and a merged patient, from the
sandbox over HTTP through sync, models and planning into a real DuckDB file.

Cliniko's plain ``/attendees`` leaves cancelled attendances out (like ``/individual_appointments``
leaves out cancelled appointments) and ``/patients`` leaves out archived patients, merged-away
ones included. A sync that did not ask for them would never see a class place cancelled: the
reminder would still go, no ``cancelled`` trigger would fire, and the nightly reconciliation would
then call the booking deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.config import ClinicConfig
from tasks.models import runner as models
from tasks.paths import clinics_dir
from tasks.triggers import plan as planning
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CANCELLED_TRIGGER = {
    "name": "class-cancelled",
    "description": "Tell a patient their class place is cancelled",
    "enabled": True,
    "event": "cancelled",
    "timing": "immediately",
    "grace": "1 day",
    "channel": "sms",
    "template": "reminder-24h",
    "purpose": "transactional",
}


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=11, patients=600, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


@pytest.fixture
def config() -> ClinicConfig:
    """The demo clinic's settings and triggers, plus a trigger on cancellations."""
    source = clinics_dir() / "demo" / "clinic.yaml"
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    raw["triggers"] = [*raw["triggers"], CANCELLED_TRIGGER]
    return ClinicConfig(**raw, source=source.resolve())


def tick(db, server, clinic, config, now: datetime, *, reconcile: bool = False):
    """What the scheduled tick does before sending: sync, build the models, plan (and re-check)."""
    retry = Retry(initial_seconds=0.01, max_seconds=0.2)
    with (
        ClinikoClient(
            clinic.api_key, "tests@example.com", server.base_url, pace=None, retry=retry
        ) as client,
        open_db(db) as con,
    ):
        extract.run_sync(con, client, reconcile=reconcile)
        models.build(con, models.ListSettings.from_config(config), now=now)
        return planning.plan(con, config, now)


def test_a_cancelled_class_place_cancels_its_reminder_and_fires_the_cancelled_trigger(
    tmp_path, clinic, server, config
):
    db = tmp_path / "clinic.duckdb"
    tick(db, server, clinic, config, START)
    with open_db(db, read_only=True) as con:
        planned = con.execute(
            """SELECT a.appointment_id FROM state.messages m
               JOIN marts.appointments a
                 ON a.appointment_id = m.appointment_id AND a.appointment_kind = 'group'
               WHERE m.source_name = 'sms-reminder-24h' AND m.status = 'planned'
               ORDER BY a.starts_at, a.appointment_id LIMIT 1"""
        ).fetchone()
    assert planned, "a 600-patient clinic has a class with a reminder planned in the next day"
    attendee_id = planned[0]

    clinic.advance(timedelta(minutes=10))
    cancelled = clinic.cancel_attendance(attendee_id)
    assert cancelled["cancelled_at"]
    now = clinic.now
    tick(db, server, clinic, config, now)

    with open_db(db, read_only=True) as con:
        status = con.execute(
            "SELECT status, cancelled_at FROM marts.appointments "
            "WHERE appointment_kind = 'group' AND appointment_id = ?",
            [attendee_id],
        ).fetchone()
        assert status[0] == "cancelled" and status[1] is not None
        messages = dict(
            (source, (state, reason))
            for source, state, reason in con.execute(
                "SELECT source_name, status, status_reason FROM state.messages "
                "WHERE appointment_id = ?",
                [attendee_id],
            ).fetchall()
        )
    assert messages["sms-reminder-24h"] == ("cancelled", "appointment cancelled")
    assert messages["class-cancelled"][0] == "planned"

    # The nightly reconciliation still reads it (cancelled, not gone): never "deleted".
    clinic.advance(timedelta(minutes=10))
    tick(db, server, clinic, config, clinic.now, reconcile=True)
    with open_db(db, read_only=True) as con:
        after = con.execute(
            "SELECT status FROM marts.appointments "
            "WHERE appointment_kind = 'group' AND appointment_id = ?",
            [attendee_id],
        ).fetchone()
        removed = con.execute(
            "SELECT removed_at FROM raw.attendees WHERE id = ?", [attendee_id]
        ).fetchone()
    assert after == ("cancelled",) and removed == (None,)


def test_merged_patients_are_read_archived_and_followed_to_the_survivor(tmp_path, clinic, server,
                                                                        config):  # fmt: skip
    db = tmp_path / "clinic.duckdb"
    tick(db, server, clinic, config, START)
    with open_db(db, read_only=True) as con:
        merged = con.execute(
            """SELECT p.patient_id, p.merged_into_patient_id FROM marts.patients p
               WHERE p.merged_into_patient_id IS NOT NULL"""
        ).fetchall()
        assert merged, "the generated clinic has merged duplicates"
        raw = con.execute(
            "SELECT count(*) FROM raw.patients "
            "WHERE json_extract_string(payload, '$.merged_at') IS NOT NULL "
            "AND json_extract_string(payload, '$.archived_at') IS NOT NULL "
            "AND json_extract_string(payload, '$.merged_with_patient.links.self') IS NOT NULL"
        ).fetchone()[0]
        assert raw == len(merged)
        # Every appointment of a merged-away patient is the survivor's.
        stray = con.execute(
            "SELECT count(*) FROM marts.appointments WHERE patient_id IN "
            "(SELECT patient_id FROM marts.patients WHERE merged_into_patient_id IS NOT NULL)"
        ).fetchone()[0]
        assert stray == 0
