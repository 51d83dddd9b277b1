"""relay sql and relay patients find: read-only, clear when there is nothing to read, no more
personal data than asked for."""

from __future__ import annotations

import contextlib
import multiprocessing
import time

import duckdb
import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.cli.analyst import format_table
from tasks.analyst import QueryError, find_patients, query
from tasks.config import load_clinic
from tasks.errors import UserFacingError
from tasks.warehouse import DatabaseBusy, NoDatabase, open_db

PATIENTS = [
    # patient_id, first, last, preferred, email, mobile, archived
    (1, "Ada", "Lovelace", None, "ada@example.org", "+61412345678", False),
    (2, "Grace", "Hopper", "Amazing", "grace@example.org", None, False),
    (3, "Adam", "Smith", None, None, "+61498765432", True),
]


@pytest.fixture
def db(data_dir):
    path = load_clinic("demo").database_path
    with open_db(path) as con:
        con.execute(
            "CREATE TABLE marts.patients (patient_id BIGINT, first_name VARCHAR, last_name VARCHAR,"
            " preferred_first_name VARCHAR, email_normalised VARCHAR, mobile_e164 VARCHAR,"
            " is_archived BOOLEAN)"
        )
        con.executemany("INSERT INTO marts.patients VALUES (?, ?, ?, ?, ?, ?, ?)", PATIENTS)
    return path


def test_query_reads_and_cuts_at_the_limit(db):
    table = query(db, "SELECT patient_id FROM marts.patients ORDER BY 1", limit=2)
    assert table.columns == ["patient_id"]
    assert table.rows == [(1,), (2,)] and table.truncated


def test_query_cannot_write(db):
    with pytest.raises(QueryError, match="read-only") as err:
        query(db, "DELETE FROM marts.patients")
    assert db.name in str(err.value)
    assert query(db, "SELECT count(*) FROM marts.patients").rows == [(3,)]


def test_query_opens_no_file_outside_the_database(db, tmp_path):
    # "read-only" held for the database, but COPY wrote the patients' emails to any file and
    # read_csv read any file the user could
    outside = tmp_path / "emails.csv"
    with pytest.raises(QueryError, match="database only") as err:
        query(db, f"COPY (SELECT email_normalised FROM marts.patients) TO '{outside}'")
    assert str(err.value).startswith(f"{db.name}: ")
    assert not outside.exists()
    outside.write_text("a\n1\n")
    for statement in (f"SELECT * FROM read_csv('{outside}')", f"ATTACH '{tmp_path / 'x.db'}'"):
        with pytest.raises(QueryError, match="database only"):
            query(db, statement)
    with pytest.raises(QueryError, match="enable external access"):
        query(db, "SET enable_external_access = true")
    assert query(db, "SELECT count(*) FROM marts.patients").rows == [(3,)]


def test_query_keeps_duckdb_message_framed_with_the_file(db):
    with pytest.raises(QueryError) as err:
        query(db, "SELECT nope FROM marts.patients")
    assert str(err.value).startswith(f"{db.name}: ") and "nope" in str(err.value)


def test_no_database_says_what_to_run(data_dir):
    path = load_clinic("demo").database_path
    with pytest.raises(NoDatabase, match="relay sync"):
        query(path, "SELECT 1")
    assert not path.exists()  # a read never creates the file


def test_find_returns_ids_and_fields_only(db):
    found = find_patients(db, "ADA")
    assert [(m.patient_id, m.fields, m.archived) for m in found] == [
        (1, ("first_name", "email_normalised"), False),
        (3, ("first_name",), True),
    ]
    assert [m.patient_id for m in find_patients(db, "0412 345")] == [1]  # as typed locally
    assert [m.patient_id for m in find_patients(db, "+61 498")] == [3]
    assert find_patients(db, "04") == []  # too few digits to mean a number
    assert [m.patient_id for m in find_patients(db, "amazing")] == [2]


def test_find_takes_a_full_name_as_typed(db):
    """A full name ("Grace Hopper") found nobody: each field was searched for the whole text."""
    found = find_patients(db, "grace  HOPPER")
    assert [(m.patient_id, m.fields) for m in found] == [(2, ("first_name + last_name",))]
    assert [m.patient_id for m in find_patients(db, "Amazing Hopper")] == [2]  # preferred name
    assert find_patients(db, "Ada Smith") == []


def test_find_before_models_built_says_so(data_dir):
    path = load_clinic("demo").database_path
    with open_db(path):
        pass
    with pytest.raises(UserFacingError, match="relay models build"):
        find_patients(path, "ada")


def _hold_for(path, seconds, ready):
    with open_db(path):
        ready.set()
        time.sleep(seconds)


@contextlib.contextmanager
def held_elsewhere(path, seconds, hold=_hold_for):
    """``path`` held by another process (``hold``: relay's open, by default) until the block
    ends, or ``seconds`` at most."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=hold, args=(path, seconds, ready))
    holder.start()
    try:
        assert ready.wait(60)
        yield
    finally:
        holder.terminate()
        holder.join()


def test_a_tick_holding_the_database_is_waited_for_then_named(db):
    with held_elsewhere(db, 30):
        with pytest.raises(DatabaseBusy, match="in use by another run"):
            query(db, "SELECT 1", wait_seconds=0.5)
    assert query(db, "SELECT 1 AS one").rows == [(1,)]


def test_cli_prints_a_table_and_patients_without_details(db):
    runner = CliRunner()
    out = runner.invoke(app, ["sql", "SELECT patient_id, last_name FROM marts.patients ORDER BY 1"])
    assert out.exit_code == 0, out.output
    assert "patient_id  last_name" in out.output and "3 rows" in out.output
    found = runner.invoke(app, ["patients", "find", "hopper"])
    assert found.exit_code == 0, found.output
    assert "patient 2" in found.output and "last_name" in found.output
    for detail in ("Grace", "grace@example.org", "Amazing"):
        assert detail not in found.output


def test_cli_interactive_prompt_runs_statements_and_survives_errors(db):
    runner = CliRunner()
    script = "SELECT count(*) AS n\nFROM marts.patients;\nSELECT nope;\n.quit\n"
    out = runner.invoke(app, ["sql"], input=script)
    assert out.exit_code == 0, out.output
    assert "n\n-" in out.output and "3" in out.output
    assert "nope" in out.output  # the error, and the prompt went on to .quit


def test_several_statements_each_show_their_result_not_only_the_last(db):
    # "SELECT ...; SELECT ..." (a pasted script) printed the last statement's table alone, with
    # nothing saying the others ran: two counts looked like one
    runner = CliRunner()
    two = "SELECT count(*) AS patients FROM marts.patients; SELECT 42 AS answer"
    out = runner.invoke(app, ["sql", two])
    assert out.exit_code == 0, out.output
    assert "patients\n--------\n3" in out.output and "answer\n------\n42" in out.output
    assert "statement 1 of 2" in out.output and "statement 2 of 2" in out.output
    prompt = runner.invoke(app, ["sql"], input="SELECT 7 AS a; SELECT 8 AS b;\n.quit\n")
    assert "a\n-\n7" in prompt.output and "b\n-\n8" in prompt.output
    # a typo in any of them runs none (DuckDB parses the whole text first), framed as before
    bad = runner.invoke(app, ["sql", "SELECT 1 AS fine; SELEC 2"])
    assert bad.exit_code != 0 and isinstance(bad.exception, QueryError)
    assert str(bad.exception).startswith(f"{db.name}: ") and "fine" not in bad.output
    assert query(db, "SELECT 1 AS one;").rows == [(1,)]


def test_a_statement_that_begins_with_a_comment_runs_and_a_mistyped_option_is_named(db):
    # "-- ..." first: click read the whole statement as an unknown option ("No such option")
    runner = CliRunner()
    out = runner.invoke(
        app, ["sql", "-- how many patients\nSELECT count(*) AS n FROM marts.patients"]
    )
    assert out.exit_code == 0, out.output
    assert "n\n-\n3" in out.output
    out = runner.invoke(app, ["sql", "--limit", "1", "-- first\nSELECT 5 AS five"])
    assert out.exit_code == 0 and "five\n----\n5" in out.output, out.output
    typo = runner.invoke(app, ["sql", "--limt", "5", "SELECT 1"])  # not run as SQL (a comment)
    assert typo.exit_code == 2 and "--limt is not an option" in typo.output, typo.output


def test_format_table_fits_the_width():
    columns = [f"column_{i}" for i in range(20)]
    rows = [tuple("x" * 60 for _ in columns)]
    text = format_table(columns, rows, width=100)
    # the line naming the columns left out fits too (it ran to 160 columns)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "(18 more columns not shown: column_2, column_3" in text
    assert "column_19)" in text.splitlines()[-1]
    assert "…" in text
    one_left = format_table(["a", "b", "c"], [("x" * 60,) * 3], width=100)
    assert one_left.splitlines()[-1] == "(1 more column not shown: c)"


def test_format_table_counts_wide_characters_as_two_columns():
    # a patient's name in Chinese, Japanese or Korean: cut and aligned by the columns it takes
    import unicodedata

    def columns(line: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)

    text = format_table(["name", "email", "note"], [("王" * 30, "李" * 30, "x" * 40)], width=100)
    assert all(columns(line) <= 100 for line in text.splitlines()), text
    short = format_table(["名前", "n"], [("王小明", 1), ("Ada", 2)]).splitlines()
    # the second column starts 8 columns in on every line: 王小明 is 6 columns wide, not 3
    assert [columns(line[: line.rindex(" ") + 1]) for line in (short[0], *short[2:])] == [8] * 3


def test_duckdb_error_class_is_kept_out_of_tracebacks(db):
    runner = CliRunner()
    out = runner.invoke(app, ["sql", "SELEC 1"])
    assert out.exit_code != 0
    assert isinstance(out.exception, QueryError)
    assert not isinstance(out.exception, duckdb.Error)


@pytest.mark.parametrize(
    "command", [["models", "test"], ["preview", "segment", "loyal"], ["ledger", "unknown"]]
)
def test_no_database_yet_is_one_line_not_a_traceback(data_dir, command):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "relay", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No database yet"), lines
    assert "relay sync --clinic" in lines[0]


def _open_outside_relay(path, seconds, ready):
    # A DuckDB shell, a notebook or a BI tool (read-write, their default): DuckDB's own lock,
    # not relay's lock file.
    con = duckdb.connect(str(path))
    ready.set()
    time.sleep(seconds)
    con.close()


def test_a_database_open_in_another_program_is_one_line_naming_the_file(db):
    with held_elsewhere(db, 30, _open_outside_relay):
        # A reader fails at once, not after its wait: relay cannot ask that program to let go.
        with pytest.raises(DatabaseBusy) as err:
            query(db, "SELECT 1", wait_seconds=0.5)
        said = str(err.value)
        assert said.startswith(f"{db} is open in another program")
        assert "Could not set lock" in said  # DuckDB's own words, framed with the file
        # relay's main prints a UserFacingError as one line, without a traceback
        out = CliRunner().invoke(app, ["sql", "SELECT 1"])
        assert isinstance(out.exception, UserFacingError), out.exception
    assert query(db, "SELECT 1 AS one").rows == [(1,)]
