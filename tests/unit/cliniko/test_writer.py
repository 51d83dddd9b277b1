"""Loading Cliniko records into raw.*: parsing, quarantine, writing with the watermark, without a
server."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from tasks import warehouse
from tasks.cliniko import resources
from tasks.cliniko.sync import bound_memory
from tasks.cliniko.writer import ResourceWriter, mark_removed, parse_records, watermark
from tasks.models import phones
from tasks.warehouse import one

PATIENTS = resources.get("patients")
REFERRALS = resources.get("referral_sources")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "cliniko-examples"


def patient(id_, updated="2026-03-01T10:00:00Z", **extra):
    return {
        "id": id_,
        "updated_at": updated,
        "first_name": "Ada",
        "email": "ada@example.com",
        **extra,
    }


@pytest.fixture
def con():
    c = warehouse.memory_db()
    yield c
    c.close()


def write(con, batch, now=NOW):
    """One page through a fresh writer, committed: what a run does with its last page."""
    writer = ResourceWriter(con, PATIENTS)
    result = writer.add("/patients", batch, now)
    writer.commit(now)
    return result


def rows(con, table="raw.patients"):
    return con.execute(
        f"SELECT id, updated_at, payload, removed_at FROM {table} ORDER BY id"
    ).fetchall()


def test_ids_are_bigint_whether_sent_as_string_or_number():
    batch = parse_records(PATIENTS, [patient("836447129235883061"), patient(7)])
    assert [r[0] for r in batch.rows] == [836447129235883061, 7]


def test_empty_timestamps_are_null_and_the_payload_is_kept_as_sent():
    record = patient("5", updated="", archived_at="", custom={"nested": [1, None, "x"]})
    (row,) = parse_records(PATIENTS, [record]).rows
    assert row[1] is None
    assert orjson.loads(row[2]) == record


def test_a_referral_source_without_an_id_is_keyed_on_its_patient():
    record = {"patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/123?x=1"}}}
    (row,) = parse_records(REFERRALS, [record]).rows
    assert row[0] == 123


@pytest.mark.parametrize(
    ("record", "key", "reason"),
    [
        (patient("12ab"), "12ab", "id is missing or not an integer"),
        (patient("99999999999999999999"), "99999999999999999999", "id is outside the 64-bit range"),
        (
            patient("44", updated="yesterday at noon"),
            "44",
            "updated_at is not an ISO 8601 timestamp",
        ),
        (patient("45", updated=1700000000), "45", "updated_at is not a timestamp string"),
        (patient("46", updated="2026-03-01T10:00:00"), "46", "updated_at has no time zone"),
    ],
)
def test_a_malformed_record_is_set_aside_with_a_reason_that_carries_no_values(record, key, reason):
    batch = parse_records(PATIENTS, [record, patient("1")])
    assert [r[0] for r in batch.rows] == [1]
    ((got_key, got_reason, payload),) = batch.quarantined
    assert (got_key, got_reason) == (key, reason)
    assert "Ada" not in got_reason and "example.com" not in got_reason
    assert orjson.loads(payload) == record


def test_a_record_that_is_not_an_object_is_named_by_a_digest():
    batch = parse_records(PATIENTS, ["just a string"])
    ((key, reason, _),) = batch.quarantined
    assert key.startswith("sha256:") and reason == "record is not a JSON object"


def test_the_cursor_may_move_past_a_quarantined_record_with_a_readable_timestamp():
    batch = parse_records(
        PATIENTS,
        [patient("1", updated="2026-03-01T10:00:00Z"), patient("x", "2026-03-01T11:00:00Z")],
    )
    assert batch.max_updated_at == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def test_a_page_and_its_watermark_are_written_together(con):
    batch = parse_records(PATIENTS, [patient("1"), patient("2", "2026-03-01T12:00:00Z")])
    result = write(con, batch)
    assert (result.new, result.updated, result.unchanged) == (2, 0, 0)
    assert [r[0] for r in rows(con)] == [1, 2]
    assert watermark(con, "patients", "/patients") == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_failed_write_leaves_neither_rows_nor_watermark(con):
    batch = parse_records(PATIENTS, [patient("1")])
    con.execute("DROP TABLE state.quarantine")  # make the transaction fail after the rows
    batch.quarantined.append(("k", "reason", "{}"))
    with pytest.raises(duckdb.CatalogException):
        write(con, batch)
    assert rows(con) == []
    assert watermark(con, "patients", "/patients") is None


def test_the_watermark_never_moves_back(con):
    newer = parse_records(PATIENTS, [patient("1", "2026-03-01T12:00:00Z")])
    older = parse_records(PATIENTS, [patient("2", "2026-03-01T08:00:00Z")])
    write(con, newer)
    write(con, older)
    assert watermark(con, "patients", "/patients") == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_row_seen_again_unchanged_is_not_counted_or_rewritten(con):
    batch = parse_records(PATIENTS, [patient("1")])
    write(con, batch)
    again = write(con, batch, NOW + timedelta(hours=1))
    assert (again.new, again.updated, again.unchanged) == (0, 0, 1)
    assert con.execute("SELECT synced_at FROM raw.patients").fetchone()[0] == NOW


def test_a_changed_row_replaces_ours_without_duplicating(con):
    write(con, parse_records(PATIENTS, [patient("1")]))
    changed = parse_records(PATIENTS, [patient("1", "2026-03-01T10:00:00Z", first_name="Bea")])
    result = write(con, changed)
    assert (result.new, result.updated) == (0, 1)
    ((_, _, payload, _),) = rows(con)
    assert orjson.loads(payload)["first_name"] == "Bea"


def test_a_changed_row_is_appended_anew_not_updated_in_place(con):
    """DuckDB rewrites the whole column of every row group an in-place update touched at the
    next checkpoint: edits to 250 appointments of 2,000,000 updated in place (INSERT OR
    REPLACE) cost a 10 s checkpoint at the tick's close, their old copies deleted and new ones
    appended 0.03 s. No segment of the table may carry in-place updates."""
    write(con, parse_records(PATIENTS, [patient(str(i)) for i in range(1, 201)]))
    changed = [patient(str(i), "2026-03-01T11:00:00Z", first_name="Bea") for i in (5, 150)]
    result = write(con, parse_records(PATIENTS, changed))
    assert (result.new, result.updated) == (0, 2)
    assert one(con, "SELECT bool_or(has_updates) FROM pragma_storage_info('raw.patients')") == (
        False,
    )
    assert one(con, "SELECT count(*), count(DISTINCT id) FROM raw.patients") == (200, 200)
    assert one(con, "SELECT count(*) FROM raw.patients WHERE payload ->> 'first_name' = 'Bea'") == (
        2,
    )


def test_a_good_copy_clears_the_quarantine(con):
    bad = parse_records(PATIENTS, [patient("9", updated="garbled")])
    write(con, bad)
    assert con.execute("SELECT record_key, reason FROM state.quarantine").fetchall() == [
        ("9", "updated_at is not an ISO 8601 timestamp")
    ]
    good = parse_records(PATIENTS, [patient("9")])
    write(con, good)
    assert con.execute("SELECT count(*) FROM state.quarantine").fetchone() == (0,)


def test_within_one_commit_the_latest_copy_of_a_record_decides_its_quarantine(con):
    writer = ResourceWriter(con, PATIENTS)
    writer.add("/patients", parse_records(PATIENTS, [patient("9", "garbled")]), NOW)
    writer.add("/patients", parse_records(PATIENTS, [patient("9")]), NOW)
    writer.add("/patients", parse_records(PATIENTS, [patient("8")]), NOW)
    writer.add("/patients", parse_records(PATIENTS, [patient("8", "garbled")]), NOW)
    writer.commit(NOW)
    assert con.execute("SELECT record_key FROM state.quarantine").fetchall() == [("8",)]
    assert [r[0] for r in rows(con)] == [8, 9]


def test_pages_are_invisible_until_committed_and_then_arrive_with_their_watermark(con):
    writer = ResourceWriter(con, PATIENTS)
    writer.FLUSH_SECONDS = float("inf")  # however slow this machine is today
    writer.add("/patients", parse_records(PATIENTS, [patient("1")]), NOW)
    assert rows(con) == [] and watermark(con, "patients", "/patients") is None
    writer.commit(NOW)
    assert len(rows(con)) == 1
    assert watermark(con, "patients", "/patients") == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_reconciliation_marks_rows_cliniko_stopped_returning_and_never_deletes(con):
    batch = parse_records(PATIENTS, [patient("1"), patient("2"), patient("3")])
    write(con, batch)
    assert mark_removed(con, PATIENTS, {1, 3}, NOW) == 1
    assert [(r[0], r[3]) for r in rows(con)] == [(1, None), (2, NOW), (3, None)]
    assert mark_removed(con, PATIENTS, {1, 3}, NOW) == 0  # already marked


def test_a_removed_row_that_comes_back_is_unmarked(con):
    batch = parse_records(PATIENTS, [patient("1")])
    write(con, batch)
    mark_removed(con, PATIENTS, set(), NOW)
    result = write(con, batch)
    assert result.updated == 1
    assert rows(con)[0][3] is None


def test_a_full_commit_of_appointments_fits_well_inside_the_syncs_memory_bound(tmp_path):
    """A fresh clinic's first sync commits FLUSH_ROWS appointments at a time, each with its
    parsed fields, under the sync's DuckDB memory bound (64 MB, shared with the database's own
    blocks and indexes). In one INSERT they needed 57 MB and the first tick ran out of memory;
    the writer's statements must stay small whatever a commit holds: here 24 MB for all."""
    example = EXAMPLES / "individual_appointments.json"
    record = orjson.loads(example.read_bytes())["response"]["individual_appointments"][0]
    appointments = resources.get("individual_appointments")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        {**record, "id": str(i), "updated_at": (start + timedelta(seconds=i)).isoformat()}
        for i in range(1, ResourceWriter.FLUSH_ROWS + 1)
    ]
    with warehouse.open_db(tmp_path / "clinic.duckdb") as con:
        bound_memory(con, "24MB")
        writer = ResourceWriter(con, appointments)
        for page in range(0, len(records), 100):
            writer.add(
                "/individual_appointments",
                parse_records(appointments, records[page : page + 100]),
                NOW,
            )
        writer.commit(NOW)
        assert one(con, "SELECT count(fields.starts_at) FROM raw.individual_appointments") == (
            ResourceWriter.FLUSH_ROWS,
        )


def test_a_full_commit_of_patients_reads_their_numbers_inside_the_same_bound(tmp_path):
    """The numbers a commit of patients carries are read within the same memory bound: listed
    from the patients in the writer's statements' slices, not from the table (listing them
    from a whole commit ran a first sync of 20,000 patients out of its 64 MB)."""
    example = EXAMPLES / "patients.json"
    record = orjson.loads(example.read_bytes())["response"]["patients"][0]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        {
            **record,
            "id": str(i),
            "updated_at": (start + timedelta(seconds=i)).isoformat(),
            "patient_phone_numbers": _phones(("Mobile", f"04{i:08d}"), ("Home", "03 9999 0000")),
        }
        for i in range(1, ResourceWriter.FLUSH_ROWS + 1)
    ]
    with warehouse.open_db(tmp_path / "clinic.duckdb") as con:
        bound_memory(con, "24MB")
        writer = ResourceWriter(con, PATIENTS, country="AU")
        for page in range(0, len(records), 100):
            writer.add("/patients", parse_records(PATIENTS, records[page : page + 100]), NOW)
        writer.commit(NOW)
        assert len(_memo(con)) == ResourceWriter.FLUSH_ROWS


def _phones(*entries: tuple[str, str]) -> list[dict]:
    return [{"phone_type": kind, "number": number} for kind, number in entries]


def _memo(con) -> dict:
    return dict(
        con.execute(
            "SELECT number, mobile_e164 FROM state.phone_numbers WHERE country = 'AU'"
        ).fetchall()
    )


def test_the_patients_mobile_numbers_are_read_as_they_are_written(con):
    """With the clinic's country the writer reads the numbers a build would (a patient's first
    Mobile entry; every entry of a patient without a valid one) into the phone memo, in the
    commit that writes the patients; a landline beside a mobile is not read, nor a number read
    before."""
    first = [
        patient(
            "1", patient_phone_numbers=_phones(("Mobile", "0412 345 678"), ("Home", "03 9999 0000"))
        ),
        patient(
            "2", patient_phone_numbers=_phones(("Home", "03 9999 0001"), ("Work", "0423 456 789"))
        ),
        patient("3", patient_phone_numbers=[]),
        patient("4", patient_phone_numbers=_phones(("mobile ", "12345"))),
        patient("5", patient_phone_numbers=_phones(("Mobile", "123"), ("Work", "0411 111 111"))),
    ]
    writer = ResourceWriter(con, PATIENTS, country="AU")
    writer.add("/patients", parse_records(PATIENTS, first), NOW)
    assert _memo(con) == {}  # nothing before the rows themselves are committed
    writer.commit(NOW)
    assert _memo(con) == {
        "0412 345 678": "+61412345678",
        "03 9999 0001": None,
        "0423 456 789": "+61423456789",
        "12345": None,
        "123": None,
        "0411 111 111": "+61411111111",  # read once the first was found no mobile
    }
    parser = con.execute("SELECT DISTINCT parser FROM state.phone_numbers").fetchall()
    assert parser == [(phones.PHONE_PARSER,)]

    moved = patient(
        "1", "2026-03-01T11:00:00Z", patient_phone_numbers=_phones(("Mobile", "0498 765 432"))
    )
    later = NOW + timedelta(minutes=5)
    writer = ResourceWriter(con, PATIENTS, country="AU")
    writer.add("/patients", parse_records(PATIENTS, [moved]), later)
    writer.commit(later)
    assert _memo(con)["0498 765 432"] == "+61498765432"
    assert len(_memo(con)) == 7


def test_without_a_country_or_for_other_resources_no_number_is_read(con):
    page = [patient("1", patient_phone_numbers=_phones(("Mobile", "0412 345 678")))]
    write(con, parse_records(PATIENTS, page))  # no country: a tool's or a test's writer
    assert _memo(con) == {}
    assert ResourceWriter(con, REFERRALS, country="AU").country is None
