"""The models over data synced from the sandbox Cliniko (real HTTP, the real sync, a real DuckDB
file): every data test passes on realistic data, the marts agree with what the sandbox serves,
and incremental builds after the clinic's clock moves end where a full rebuild does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.config import load_clinic
from tasks.models import runner as models
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=23, patients=300, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


def sync(con, server, clinic, country: str | None = None) -> None:
    retry = Retry(initial_seconds=0.01, max_seconds=0.2)
    with ClinikoClient(
        clinic.api_key, "t@example.com", server.base_url, pace=None, retry=retry
    ) as client:
        extract.run_sync(con, client, country=country)


def table(con, relation: str, order: str, exclude: str = "") -> list[tuple]:
    columns = f"* EXCLUDE ({exclude})" if exclude else "*"
    return con.execute(f"SELECT {columns} FROM {relation} ORDER BY {order}").fetchall()


def test_models_over_a_synced_sandbox_clinic(tmp_path, server, clinic):
    settings = models.ListSettings.from_config(load_clinic("demo"))
    with open_db(tmp_path / "clinic.duckdb") as con:
        sync(con, server, clinic)
        result = models.build(con, settings, now=clinic.now)
        assert result.tests_passed == len(list(models.SQL_DIR.glob("tests/*.sql")))

        served = clinic.snapshot("patients", server.base_url)
        live = {pid for pid, p in served.items() if not p.get("deleted_at")}
        built = {r[0] for r in con.execute("SELECT patient_id FROM marts.patients").fetchall()}
        assert built == live

        served_appointments = clinic.snapshot("individual_appointments", server.base_url)
        statuses = dict(
            con.execute(
                "SELECT appointment_id, status FROM marts.appointments "
                "WHERE appointment_kind = 'individual'"
            ).fetchall()
        )
        assert set(statuses) == set(served_appointments)
        for appointment_id, a in served_appointments.items():
            if a.get("cancelled_at") and not a.get("archived_at") and not a.get("deleted_at"):
                assert statuses[appointment_id] in ("cancelled", "deleted")

        # Seed 000: the sandbox books patients into the admin-only tagging type.
        types = clinic.snapshot("appointment_types", server.base_url)
        tag_type = next(t for t, v in types.items() if v["name"] == "Admin - Insurance Patient")
        tagged = {
            int(a["patient"]["links"]["self"].rsplit("/", 1)[1])
            for a in served_appointments.values()
            if a["appointment_type"]["links"]["self"].endswith(f"/{tag_type}")
            and not (a.get("cancelled_at") or a.get("archived_at") or a.get("deleted_at"))
        }
        members = {
            r[0]
            for r in con.execute(
                "SELECT patient_id FROM segments.attended_admin_insurance_patient"
            ).fetchall()
        }
        merged_into = dict(
            con.execute(
                "SELECT patient_id, merged_into_patient_id FROM marts.patients "
                "WHERE merged_into_patient_id IS NOT NULL"
            ).fetchall()
        )
        archived = {
            r[0]
            for r in con.execute(
                "SELECT patient_id FROM marts.patients WHERE is_archived"
            ).fetchall()
        }
        assert tagged, "the sandbox clinic has patients tagged with the admin type"
        assert members == {merged_into.get(p, p) for p in tagged & built} - archived

        emails = con.execute(
            "SELECT count(*), count(DISTINCT email) FROM marts.email_marketing_list"
        ).fetchone()
        assert emails[0] == emails[1] > 0

        # Three 5-minute ticks of a busy clinic, each synced and built incrementally ...
        for _ in range(3):
            changes = clinic.advance(timedelta(minutes=5))
            sync(con, server, clinic)
            models.build(con, settings, now=clinic.now)
        assert sum(changes.values()) > 0
        after = {
            "marts.appointments": table(
                con, "marts.appointments", "appointment_kind, appointment_id", "refreshed_by"
            ),
            "marts.patients": table(con, "marts.patients", "patient_id"),
            "marts.email_marketing_list": table(con, "marts.email_marketing_list", "email"),
            "marts.sms_marketing_list": table(con, "marts.sms_marketing_list", "mobile_e164"),
        }
        # ... end exactly where a full rebuild from every raw row does.
        models.build(con, settings, now=clinic.now, full_refresh=True)
        assert after["marts.appointments"] == table(
            con, "marts.appointments", "appointment_kind, appointment_id", "refreshed_by"
        )
        assert after["marts.patients"] == table(con, "marts.patients", "patient_id")
        assert after["marts.email_marketing_list"] == table(
            con, "marts.email_marketing_list", "email"
        )
        assert after["marts.sms_marketing_list"] == table(
            con, "marts.sms_marketing_list", "mobile_e164"
        )


def test_numbers_read_by_the_sync_are_the_numbers_a_build_reads(tmp_path, server, clinic):
    """The sync, given the clinic's country (as the flows give it), reads the patients' mobile
    numbers as it writes them; the build then finds them read, and its patients, SMS list and
    memo are those of a build that read every number itself."""
    settings = models.ListSettings.from_config(load_clinic("demo"))
    built = {}
    for country in (settings.country, None):
        with open_db(tmp_path / f"clinic-{country}.duckdb") as con:
            sync(con, server, clinic, country)
            memo = "SELECT count(*) FROM state.phone_numbers"
            read = con.execute(memo).fetchone()[0]
            models.build(con, settings, now=clinic.now)
            by_build = con.execute(memo).fetchone()[0] - read
            if country:  # every number the build needs, read before it
                assert read > 0 and by_build == 0
            else:
                assert read == 0 and by_build > 0
            built[country] = {
                "marts.patients": table(con, "marts.patients", "patient_id"),
                "marts.sms_marketing_list": table(con, "marts.sms_marketing_list", "mobile_e164"),
                "memo": table(con, "state.phone_numbers", "number"),
            }
    assert built[settings.country] == built[None]
