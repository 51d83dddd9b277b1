"""The project's own data tests (sql/tests) fail on the rows they are there to catch."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

TESTS = Path(__file__).resolve().parents[3] / "sql" / "tests"


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("CREATE SCHEMA staging; CREATE SCHEMA marts")
    c.execute(
        "CREATE TABLE staging.patients AS SELECT * FROM (VALUES "
        "(1, NULL::TIMESTAMPTZ, NULL::TIMESTAMPTZ), (2, NULL, NULL), (3, NULL, NULL)) "
        "t(patient_id, deleted_at, removed_at)"
    )
    c.execute("CREATE TABLE marts.patients AS SELECT 1 AS patient_id UNION ALL SELECT 2")
    yield c
    c.close()


def failures(con, name: str) -> int:
    return con.execute(f"SELECT count(*) FROM ({(TESTS / name).read_text()})").fetchone()[0]


@pytest.mark.parametrize("column", ["deleted_at", "removed_at"])
def test_a_patient_deleted_in_cliniko_left_in_marts_patients_fails(con, column):
    assert failures(con, "patients_not_deleted.sql") == 0
    # patient 3 (not in marts.patients) deleted: nothing wrong
    con.execute(f"UPDATE staging.patients SET {column} = now() WHERE patient_id = 3")
    assert failures(con, "patients_not_deleted.sql") == 0
    # patient 2 deleted in Cliniko but still in marts.patients: caught
    con.execute(f"UPDATE staging.patients SET {column} = now() WHERE patient_id = 2")
    assert failures(con, "patients_not_deleted.sql") == 1


def test_a_live_appointment_without_its_patient_fails_and_says_how_many(con):
    con.execute(
        "CREATE TABLE marts.appointments AS SELECT * FROM (VALUES "
        "('individual', 10, 1, 'arrived'), ('group', 10, 2, 'upcoming'), "
        "('individual', 11, 3, 'deleted')) t(appointment_kind, appointment_id, patient_id, status)"
    )
    name = "appointments_have_known_patient.sql"
    assert failures(con, name) == 0  # patient 3 is not in marts.patients: its row is deleted
    con.execute(
        "INSERT INTO marts.appointments VALUES ('individual', 12, 3, 'unmarked'), "
        "('individual', 13, NULL, 'upcoming'), ('individual', 14, 1, 'cancelled')"
    )
    sql = (TESTS / name).read_text()
    assert con.execute(sql).fetchall() == [(2,)]  # one row: the two appointments counted
