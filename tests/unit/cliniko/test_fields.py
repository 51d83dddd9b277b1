"""A raw record's fields parsed once, when the sync writes it (tasks/cliniko/fields.py): the
writer stores them with the payload, an older database is migrated when opened, and a row
written some other way is parsed by the next build."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb

from tasks.cliniko import fields, resources
from tasks.cliniko.writer import ResourceWriter, parse_records
from tasks.warehouse import RAW_COLUMNS, memory_db, open_db, raw_table_ddl

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
API = "https://api.au1.cliniko.com/v1"
APPOINTMENT = {
    "id": "7",
    "starts_at": "2026-11-23T01:00:00Z",
    "cancelled_at": "",
    "cancellation_reason": 50,
    "did_not_arrive": True,
    "patient": {"links": {"self": f"{API}/patients/82?x=1"}},
    "updated_at": "2026-11-22T08:00:00Z",
}


def _fields(con, appointment_id: int = 7) -> dict:
    return con.execute(
        "SELECT fields FROM raw.individual_appointments WHERE id = ?", [appointment_id]
    ).fetchone()[0]


def test_the_writer_stores_the_parsed_fields_in_the_same_insert_as_the_payload():
    con = memory_db()
    resource = resources.get("individual_appointments")
    writer = ResourceWriter(con, resource)
    writer.add("/individual_appointments", parse_records(resource, [APPOINTMENT]), NOW)
    writer.commit(NOW)
    got = _fields(con)
    assert got["starts_at"] == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert got["cancelled_at"] is None and got["cancellation_reason"] == 50
    assert (got["did_not_arrive"], got["patient_id"], got["practitioner_id"]) == (True, 82, None)
    assert got["synced_at"] == NOW
    # a later copy replaces them with the payload
    moved = {**APPOINTMENT, "starts_at": "2026-11-24T01:00:00Z", "updated_at": "2026-11-22T08:30Z"}
    writer.add("/individual_appointments", parse_records(resource, [moved]), NOW)
    writer.commit(NOW + timedelta(minutes=5))
    assert _fields(con)["starts_at"] == datetime(2026, 11, 24, 1, 0, tzinfo=UTC)


def test_a_database_from_before_parsed_fields_is_migrated_when_opened(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))  # raw as every release before this one made it
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE SCHEMA state")
    con.execute(raw_table_ddl("raw.individual_appointments"))
    con.execute(
        "INSERT INTO raw.individual_appointments VALUES (7, NULL, ?, ?, NULL)",
        [json.dumps(APPOINTMENT), NOW],
    )
    con.execute(
        "CREATE TABLE state.model_fingerprints (model VARCHAR PRIMARY KEY, fingerprint VARCHAR)"
    )
    con.execute(
        "INSERT INTO state.model_fingerprints VALUES ('staging.individual_appointments', 'x')"
    )
    con.close()
    with open_db(db) as con:
        got = _fields(con)
        assert (got["patient_id"], got["synced_at"]) == (82, NOW)
        comment = con.execute(
            "SELECT comment FROM duckdb_columns() WHERE table_name = 'individual_appointments' "
            "AND column_name = 'fields'"
        ).fetchone()[0]
        assert comment == fields.digest("individual_appointments")
        # the models built from the payloads alone are rebuilt in full
        assert con.execute("SELECT count(*) FROM state.model_fingerprints").fetchone() == (0,)
        assert fields.migrate(con) == [], "a migrated database is left alone"


def test_fields_parsed_by_another_declaration_are_parsed_again():
    con = memory_db()
    con.execute(
        f"INSERT INTO raw.individual_appointments {RAW_COLUMNS} VALUES (7, NULL, ?, ?, NULL)",
        [json.dumps(APPOINTMENT), NOW],
    )
    con.execute("COMMENT ON COLUMN raw.individual_appointments.fields IS 'relay-fields:older'")
    con.execute("INSERT INTO state.model_fingerprints VALUES ('marts.appointments', 'x')")
    assert fields.migrate(con) == ["individual_appointments"]
    assert _fields(con)["patient_id"] == 82
    assert con.execute("SELECT count(*) FROM state.model_fingerprints").fetchone() == (0,)


def test_rows_written_without_their_fields_or_rewritten_since_are_parsed_by_fill_missing():
    con = memory_db()
    con.execute(
        f"INSERT INTO raw.individual_appointments {RAW_COLUMNS} VALUES (7, NULL, ?, ?, NULL)",
        [json.dumps(APPOINTMENT), NOW],
    )
    assert _fields(con) is None
    assert fields.fill_missing(con) == 1
    assert _fields(con)["starts_at"] == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert fields.fill_missing(con) == 0
    # an upsert of the columns alone keeps the old fields: their synced_at tells
    moved = {**APPOINTMENT, "starts_at": "2026-11-25T01:00:00Z"}
    con.execute(
        f"INSERT OR REPLACE INTO raw.individual_appointments {RAW_COLUMNS} "
        "VALUES (7, NULL, ?, ?, NULL)",
        [json.dumps(moved), NOW + timedelta(minutes=5)],
    )
    assert fields.fill_missing(con) == 1
    got = _fields(con)
    assert (got["starts_at"].day, got["synced_at"]) == (25, NOW + timedelta(minutes=5))
