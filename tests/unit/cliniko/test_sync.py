"""The sync's bookkeeping, without a server: the list query, run records, when to reconcile."""

from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import pytest

from tasks import warehouse
from tasks.cliniko import resources
from tasks.cliniko import sync as extract

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def con():
    c = warehouse.memory_db()
    yield c
    c.close()


def test_the_list_query_asks_for_hidden_rows_and_changes_since_the_cursor():
    appointments = resources.get("individual_appointments")
    assert extract.list_params(appointments, datetime(2026, 3, 1, 9, 59, 59, 500, tzinfo=UTC)) == [
        ("sort", "updated_at,id"),
        ("q[]", "cancelled_at:*"),
        ("q[]", "archived_at:*"),
        ("q[]", "updated_at:>=2026-03-01T09:59:59Z"),
    ]
    assert extract.list_params(resources.get("businesses"), None) == [("sort", "updated_at,id")]


def test_the_rest_of_one_second_is_asked_for_by_id_not_by_offset():
    attendees = resources.get("attendees")
    assert extract.list_params(attendees, datetime(2026, 3, 1, 9, 59, 59, tzinfo=UTC), 42) == [
        ("sort", "id"),  # within one second: Cliniko's order there may follow a finer time
        ("q[]", "cancelled_at:*"),
        ("q[]", "archived_at:*"),
        ("q[]", "updated_at:>=2026-03-01T09:59:59Z"),
        ("q[]", "updated_at:<2026-03-01T10:00:00Z"),
        ("q[]", "id:>42"),
    ]


def test_reconciliation_is_due_when_none_completed_recently(con):
    first = extract.start_run(con, "incremental")  # a clinic's first sync reads every row
    extract.finish_run(con, first, {})
    assert not extract.reconcile_due(con, 24, datetime.now(UTC))
    assert extract.reconcile_due(con, 24, datetime.now(UTC) + timedelta(hours=25))
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    con.execute("UPDATE state.sync_runs SET started_at = ?", [two_days_ago])
    assert extract.reconcile_due(con, 24, datetime.now(UTC))
    run = extract.start_run(con, "reconcile")
    assert extract.reconcile_due(con, 24, datetime.now(UTC))  # still running: not done
    extract.finish_run(con, run, {})
    assert not extract.reconcile_due(con, 24, datetime.now(UTC))
    assert extract.reconcile_due(con, 24, datetime.now(UTC) + timedelta(hours=25))


def test_a_first_sync_cut_short_is_resumed_not_read_again_from_the_start(con):
    # Killed before it finished: nothing to reconcile yet (the database never held a whole copy),
    # so the next run goes on from the watermarks the killed one committed, as an incremental
    # run, instead of reading every row again as a reconciliation.
    assert not extract.reconcile_due(con, 24, NOW)
    extract.start_run(con, "incremental")
    failed = extract.start_run(con, "incremental")  # the first is marked interrupted
    extract.finish_run(con, failed, {}, RuntimeError("Cliniko did not answer"))
    assert not extract.reconcile_due(con, 24, datetime.now(UTC) + timedelta(days=30))
    # The fast lane's partial runs read a few resources: they are no whole copy either.
    lane = extract.start_run(con, "partial")
    extract.finish_run(con, lane, {})
    assert not extract.reconcile_due(con, 24, datetime.now(UTC) + timedelta(days=30))


def test_a_run_whose_process_stopped_is_marked_interrupted_when_the_next_starts(con):
    killed = extract.start_run(con, "incremental")  # never finished: its process was killed
    done = extract.start_run(con, "incremental")
    extract.finish_run(con, done, {})
    rows = dict(con.execute("SELECT run_id, status FROM state.sync_runs").fetchall())
    assert rows == {killed: "interrupted", done: "completed"}
    (error,) = con.execute(
        "SELECT error FROM state.sync_runs WHERE run_id = ?", [killed]
    ).fetchone()
    assert error == extract.INTERRUPTED


def test_a_failed_run_is_recorded_with_its_error(con):
    run = extract.start_run(con, "incremental")
    counts = {"patients": extract.ResourceCounts("patients", new=3)}
    extract.finish_run(con, run, counts, ValueError("page 3 unreadable"))
    status, summary, error = con.execute(
        "SELECT status, summary, error FROM state.sync_runs WHERE run_id = ?", [run]
    ).fetchone()
    assert status == "failed" and error == "ValueError: page 3 unreadable"
    assert orjson.loads(summary)["patients"]["new"] == 3


def test_a_duckdb_error_about_data_is_recorded_without_the_value_it_quotes(con):
    run = extract.start_run(con, "incremental")
    try:
        con.execute("SELECT '0412 345 678'::BIGINT")
    except duckdb.ConversionException as exc:
        extract.finish_run(con, run, {}, exc)
    (error,) = con.execute("SELECT error FROM state.sync_runs WHERE run_id = ?", [run]).fetchone()
    assert error.startswith("ConversionException: ") and "0412" not in error


def test_run_sync_records_a_failed_sweep_whoever_runs_it(con):
    """The flow passes its own sweep (Prefect tasks around the same Sync methods): a failure in
    it is recorded by run_sync as it is for Sync.run."""

    def sweep(sync):
        sync.counts["patients"].new = 2
        raise RuntimeError("the reader stopped")

    with pytest.raises(RuntimeError):
        extract.run_sync(con, client=None, reconcile=True, sweep=sweep)
    kind, status, summary, error = con.execute(
        "SELECT kind, status, summary, error FROM state.sync_runs"
    ).fetchone()
    assert (kind, status, error) == ("reconcile", "failed", "RuntimeError: the reader stopped")
    assert orjson.loads(summary)["patients"]["new"] == 2
