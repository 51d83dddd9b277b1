"""The clinic database: every table exists on open, one writer at a time, transactions are atomic."""

import os
import threading
import traceback

import duckdb
import pytest

from tasks import warehouse
from tasks.cliniko.resources import RESOURCES


def test_opening_creates_every_raw_and_state_table(tmp_path):
    db = tmp_path / "c.duckdb"
    with warehouse.open_db(db) as con:
        tables = {
            f"{s}.{t}"
            for s, t in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
    assert {r.table for r in RESOURCES} <= tables
    assert {"state.sync_watermarks", "state.quarantine", "state.sync_runs"} <= tables


def _row_groups(con, table: str) -> int:
    return warehouse.one(
        con, f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')"
    )[0]


@pytest.mark.parametrize("name", ["demo", "memory"])
def test_a_clinics_file_is_written_in_smaller_row_groups_and_reads_as_before(tmp_path, name):
    db = tmp_path / f"{name}.duckdb"
    rows = 3 * warehouse.ROW_GROUP_SIZE + 1  # four row groups; one at DuckDB's default
    with warehouse.open_db(db) as con:
        con.execute(f"CREATE TABLE marts.wide AS SELECT range AS patient_id FROM range({rows})")
        assert _row_groups(con, "marts.wide") == 4
        # the file is the default database, under its usual name, for cursors too
        expected = name if name != "memory" else "clinic"
        assert warehouse.one(con, "SELECT current_database()")[0] == expected
        spills = warehouse.one(con, "SELECT current_setting('temp_directory')")[0]
        assert spills == f"{db}.tmp"  # beside the file, as duckdb.connect(path) has it
        cursor = con.cursor()
        assert warehouse.one(cursor, "SELECT count(*) FROM marts.wide")[0] == rows
        cursor.close()
    assert not db.with_name(db.name + ".wal").exists()  # the close checkpointed the file
    with warehouse.open_db(db, read_only=True) as con:
        assert warehouse.one(con, "SELECT count(*) FROM marts.wide")[0] == rows
    plain = duckdb.connect(str(db), read_only=True)  # any DuckDB reads it
    try:
        assert warehouse.one(plain, "SELECT count(*) FROM marts.wide")[0] == rows
        assert _row_groups(plain, "marts.wide") == 4
    finally:
        plain.close()
    with warehouse.hold(db), warehouse.open_db(db) as con:  # a tick's cursor
        assert warehouse.one(con, "SELECT count(*) FROM marts.wide")[0] == rows


def test_a_second_writer_waits_then_fails_clearly(tmp_path):
    db = tmp_path / "c.duckdb"
    with (
        warehouse.open_db(db),
        pytest.raises(warehouse.DatabaseBusy, match="in use by another run"),
    ):
        # flock is per open file description, so a second open in this process contends too.
        with warehouse.open_db(db, wait_seconds=0.3):
            pass


def test_a_writer_that_may_wait_long_says_once_what_it_waits_for(tmp_path, caplog):
    # `relay sync` behind a tick's fast lane waited up to ten minutes without a word.
    from tasks.dblock import FAST_LANE, acquire, release

    db = tmp_path / "c.duckdb"
    held = acquire(db, True, 1, holder=FAST_LANE)
    threading.Timer(1.0, release, (held, True)).start()
    with caplog.at_level("WARNING", logger="tasks.dblock"), warehouse.open_db(db):
        pass
    said = [r.getMessage() for r in caplog.records if r.name == "tasks.dblock"]
    assert said == [
        f"c.duckdb is in use by {FAST_LANE} (pid {os.getpid()}): waiting up to 600s for it"
    ]
    caplog.clear()
    held = acquire(db, True, 1, holder=FAST_LANE)
    threading.Timer(0.5, release, (held, True)).start()
    with caplog.at_level("WARNING", logger="tasks.dblock"), warehouse.open_db(db, wait_seconds=5):
        pass  # a short wait (a reader's, a test's) says nothing
    assert [r for r in caplog.records if r.name == "tasks.dblock"] == []


def test_a_writer_gets_in_once_the_first_one_closes(tmp_path):
    db = tmp_path / "c.duckdb"
    release = threading.Event()
    opened = threading.Event()

    def first():
        with warehouse.open_db(db):
            opened.set()
            release.wait(5)

    t = threading.Thread(target=first)
    t.start()
    opened.wait(5)
    release.set()
    with warehouse.open_db(db, wait_seconds=10) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    t.join()


def test_a_failed_transaction_leaves_nothing_behind():
    con = warehouse.memory_db()
    with pytest.raises(RuntimeError), warehouse.transaction(con):
        con.execute("INSERT INTO raw.patients VALUES (1, now(), '{}', now(), NULL)")
        raise RuntimeError("boom")
    assert con.execute("SELECT count(*) FROM raw.patients").fetchone() == (0,)


def test_read_only_open_of_a_missing_database_says_to_sync_first(tmp_path):
    with pytest.raises(warehouse.NoDatabase, match="run a sync for this clinic first"):
        with warehouse.open_db(tmp_path / "missing.duckdb", read_only=True):
            pass


def test_opens_inside_a_hold_share_one_database_and_start_from_its_settings(tmp_path):
    db = tmp_path / "c.duckdb"
    with warehouse.hold(db):
        with warehouse.open_db(db) as con:
            default = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
            con.execute("SET memory_limit = '64MB'")  # as a sync bounds its memory
            con.execute("CREATE TABLE state.probe AS SELECT 1 AS x")
        with warehouse.open_db(db, read_only=True) as con:
            assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == default
            assert con.execute("SELECT x FROM state.probe").fetchall() == [(1,)]
            assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
        with pytest.raises(RuntimeError, match="already held"):
            with warehouse.hold(db):
                pass
    with warehouse.open_db(db, read_only=True) as con:  # released: opens on its own again
        assert con.execute("SELECT x FROM state.probe").fetchall() == [(1,)]


def test_in_use_says_whether_a_process_holds_the_database(tmp_path):
    path = tmp_path / "clinic.duckdb"
    assert not warehouse.in_use(path) and not warehouse.in_use(tmp_path / "none" / "x.duckdb")
    with warehouse.hold(path):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:  # another process asks, as serve's housekeeping does
            assert pool.apply(warehouse.in_use, (path,)) is True
    assert not warehouse.in_use(path)


def test_one_returns_the_row_of_an_aggregate_and_names_the_query_when_there_is_none():
    con = warehouse.memory_db()
    assert warehouse.one(con, "SELECT count(*), ? FROM state.messages", ["x"]) == (0, "x")
    with pytest.raises(RuntimeError, match="always returns one.*SELECT 1 WHERE false"):
        warehouse.one(con, "SELECT 1\n   WHERE false")


def _older_database(tmp_path, table: str, ddl: str, *inserts: str):
    """A database whose state.<table> is as tasks/schema/40_membership.sql created it before
    (``ddl``), holding the rows ``inserts`` add."""
    import duckdb

    db = tmp_path / "c.duckdb"
    with warehouse.open_db(db):
        pass
    con = duckdb.connect(str(db))
    con.execute(f"DROP TABLE state.{table}")
    con.execute(ddl)
    for insert in inserts:
        con.execute(insert)
    con.close()
    return db


def _constraints(con, table: str, kind: str) -> int:
    return warehouse.one(
        con,
        "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? AND constraint_type = ?",
        [table, kind],
    )[0]


def _no_copies_left(con) -> bool:
    return warehouse.one(
        con, "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'relay_unkeyed%'"
    ) == (0,)


def test_an_older_databases_member_key_is_dropped_keeping_every_member(tmp_path):
    """state.audience_members had a primary key (its index cost a 5-minute build ~25 ms): an
    older database opens without it, with the same members and NOT NULL columns, once."""
    db = _older_database(
        tmp_path,
        "audience_members",
        "CREATE TABLE state.audience_members (audience VARCHAR NOT NULL, member_key VARCHAR "
        "NOT NULL, patient_id BIGINT, joined_at TIMESTAMPTZ NOT NULL, "
        "PRIMARY KEY (audience, member_key))",
        "INSERT INTO state.audience_members VALUES ('loyal', '2', 2, now()), "
        "('email_marketing_list', 'a@example.com', 1, now()), ('loyal', '1', 1, now())",
    )
    members = "SELECT audience, member_key, patient_id FROM state.audience_members ORDER BY ALL"
    for _ in range(2):  # the second open has nothing to do
        with warehouse.open_db(db) as con:
            assert _constraints(con, "audience_members", "PRIMARY KEY") == 0
            assert _constraints(con, "audience_members", "NOT NULL") == 3
            assert con.execute(members).fetchall() == [
                ("email_marketing_list", "a@example.com", 1),
                ("loyal", "1", 1),
                ("loyal", "2", 2),
            ]
            assert _no_copies_left(con)


def test_an_older_databases_event_key_is_dropped_keeping_every_event_and_its_id(tmp_path):
    """state.membership_events had a primary key on its sequence-made event_id (an index of
    every event ever): an older database opens without it, with the same events and ids, and
    the next event still takes the sequence's next id."""
    event = (
        "INSERT INTO state.membership_events (build_id, audience, member_key, patient_id, "
        "event, occurred_at) VALUES ('b1', 'segments.loyal', '{}', 1, '{}', now())"
    )
    db = _older_database(
        tmp_path,
        "membership_events",
        "CREATE TABLE state.membership_events (event_id BIGINT PRIMARY KEY DEFAULT "
        "nextval('state.membership_event_seq'), build_id VARCHAR NOT NULL, audience VARCHAR "
        "NOT NULL, member_key VARCHAR NOT NULL, patient_id BIGINT, event VARCHAR NOT NULL "
        "CHECK (event IN ('joined', 'left')), initial BOOLEAN NOT NULL DEFAULT false, "
        "occurred_at TIMESTAMPTZ NOT NULL)",
        event.format("2", "joined"),
        event.format("1", "joined"),
    )
    events = "SELECT event_id, member_key, event FROM state.membership_events ORDER BY ALL"
    for _ in range(2):  # the second open has nothing to do
        with warehouse.open_db(db) as con:
            assert _constraints(con, "membership_events", "PRIMARY KEY") == 0
            assert _constraints(con, "membership_events", "NOT NULL") == 7
            assert con.execute(events).fetchall() == [(1, "2", "joined"), (2, "1", "joined")]
    with warehouse.open_db(db) as con:
        con.execute(event.format("1", "left"))
        assert con.execute("SELECT max(event_id) FROM state.membership_events").fetchone() == (3,)
        assert _no_copies_left(con)


# Statements whose DuckDB error quotes a patient's value, and the value it quotes.
DATA_ERRORS = [
    ("SELECT '0412 345 678'::BIGINT", "0412"),  # a phone number cast (single quotes)
    ("INSERT INTO t VALUES ('jane@example.com')", "jane"),  # a duplicate key (double quotes)
    ("SELECT 'jane@example.com'::DATE", "jane"),  # conversion, double quotes
    ("SELECT json_extract('{\"email\": \"jane@example.com\"', '$.a')", "jane"),  # its Input:
    ("SELECT strptime('O''Brien', '%Y')", "Brien"),  # the echo under the first line
    ("SELECT error('jane@example.com')", "jane"),  # an analyst's error(), unquoted
    ("SELECT error('call +61 412 345 678')", "412"),
    ("SELECT 412345678::SMALLINT", "412345678"),  # a value out of range, unquoted
    ("SELECT regexp_matches(email, 'Anika(') FROM t", "Anika"),  # RE2's fragment, unquoted
    ("SELECT regexp_matches(email, '[Anika') FROM t", "Anika"),
    ("SELECT strftime(now(), 'Anika%')", "Anika"),  # a format, unquoted
]


@pytest.mark.parametrize(("sql", "value"), DATA_ERRORS)
def test_a_duckdb_error_about_data_keeps_its_kind_and_loses_what_it_quotes(sql, value):
    con = warehouse.memory_db()
    con.execute("CREATE TEMP TABLE t (email VARCHAR PRIMARY KEY)")
    con.execute("INSERT INTO t VALUES ('jane@example.com')")
    with pytest.raises(warehouse.DATA_ERRORS) as raised:
        con.execute(sql)
    assert value in str(raised.value)  # DuckDB's own message has it
    message = warehouse.duckdb_message(raised.value)
    assert value not in message and "\n" not in message
    assert message.split(":")[0].endswith("Error")  # what kind of error, still said


def test_a_duckdb_error_about_the_sql_is_kept_whole():
    con = warehouse.memory_db()
    with pytest.raises(duckdb.BinderException) as raised:
        con.execute("SELECT email_adress FROM (SELECT 1 AS email)")
    assert warehouse.duckdb_message(raised.value) == str(raised.value).strip()
    assert "email_adress" in warehouse.duckdb_message(raised.value)


def test_data_out_of_errors_raises_the_same_error_without_the_value_and_shows_no_original():
    con = warehouse.memory_db()

    @warehouse.data_out_of_errors()
    def read():
        con.execute("SELECT ?::BIGINT", ["0412 345 678"])

    with pytest.raises(duckdb.ConversionException) as raised:
        read()
    shown = "".join(traceback.format_exception(raised.value))
    assert "Could not convert string '…' to INT64" in shown and "0412" not in shown
    with pytest.raises(duckdb.BinderException, match="nope"), warehouse.data_out_of_errors():
        con.execute("SELECT nope")  # about the SQL: as it was


def test_an_error_call_built_from_values_is_left_out_and_one_of_the_analysts_words_kept():
    """error(first_name || ' ' || last_name) in a segment raised 'Invalid Input Error: Anika
    Jackson', which the scrubber (quotes, addresses, phone numbers) kept whole: a name, stored
    in state.model_builds and sent to Prefect. With the file's SQL at hand, a message that is
    a literal of it is the analyst's own and stays; any other goes."""
    con = warehouse.memory_db()
    built = "SELECT error(name || ' Jackson') FROM (SELECT 'Anika' AS name)"
    with pytest.raises(duckdb.InvalidInputException) as raised:
        con.execute(built)
    message = warehouse.duckdb_message(raised.value, built)
    assert "Anika" not in message and "Jackson" not in message
    assert message.startswith("Invalid Input Error: (message left out: the SQL calls error()")
    own = "SELECT error('the Provider field is missing: add it in Cliniko')"
    with pytest.raises(duckdb.InvalidInputException) as raised:
        con.execute(own)
    assert warehouse.duckdb_message(raised.value, own) == (
        "Invalid Input Error: the Provider field is missing: add it in Cliniko"
    )


def test_a_pattern_or_format_built_from_values_is_left_out_and_the_analysts_own_kept():
    """regexp_matches(x, first_name || '(') in a segment raised 'Invalid Input Error: missing
    ): Anika(', and strftime(now(), first_name || '%') 'Failed to parse format specifier
    Anika%: ...': RE2 and strftime quote nothing, so the name went whole to state.model_builds
    and Prefect. One written in the file is the analyst's own and stays, as for error()."""
    con = warehouse.memory_db()
    for built in (
        "SELECT regexp_matches('x', name || '(') FROM (SELECT 'Ani' || 'ka' AS name)",
        "SELECT strftime(now(), name || '%') FROM (SELECT 'Ani' || 'ka' AS name)",
    ):
        with pytest.raises(duckdb.InvalidInputException) as raised:
            con.execute(built)
        assert "Anika" in str(raised.value)
        message = warehouse.duckdb_message(raised.value, built)
        assert "Anika" not in message and "values left out" in message, message
        assert message.startswith("Invalid Input Error: ")
    own = "SELECT regexp_matches('x', '(ab')"
    with pytest.raises(duckdb.InvalidInputException) as raised:
        con.execute(own)
    assert warehouse.duckdb_message(raised.value, own) == "Invalid Input Error: missing ): (ab"
