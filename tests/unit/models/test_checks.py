"""A data test that reads one incremental model's table row by row runs over the rows the build
merged into it, not over the whole table (tasks/models/checks.py, issue 16), and still fails,
counts and holds exactly as a test over every row does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tasks.models import runner as models
from tasks.warehouse import memory_db
from tests.unit.models.test_runner import build, write

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
PEOPLE = (
    "-- config: materialized=incremental, key=patient_id\n"
    "select id as patient_id, payload->>'email' as email from raw.patients "
    "where getvariable('changes_since') is null or synced_at > getvariable('changes_since')"
)
NO_EMAIL = (  # (a filter DuckDB cannot prove empty from the table's statistics alone)
    "-- everyone has an email\nselect patient_id from staging.people where email not like '%@%'"
)


class Logged:
    """The connection, with every statement a build runs written down."""

    def __init__(self, con):
        self._con, self.statements = con, []

    def execute(self, sql, *args, **kwargs):
        self.statements.append(sql)
        result = self._con.execute(sql, *args, **kwargs)
        return self if result is self._con else result

    def fetchone(self):
        return self._con.fetchone()

    def fetchall(self):
        return self._con.fetchall()

    def __getattr__(self, name):
        return getattr(self._con, name)


@pytest.fixture
def con():
    c = memory_db()
    for pid in range(1, 5):
        add_patient(c, pid, f"p{pid}@example.com")
    yield c
    c.close()


def add_patient(con, pid: int, email: str | None, later: int = 0) -> None:
    con.execute(
        "INSERT OR REPLACE INTO raw.patients VALUES (?, NULL, ?, ?, NULL)",
        [pid, json.dumps({"id": str(pid), "email": email}), NOW + timedelta(minutes=later)],
    )


def counted(logged: Logged, words: str) -> list[str]:
    """The data-test counts the build ran over SQL holding ``words``."""
    return [s for s in logged.statements if s.startswith("SELECT count(*) FROM (") and words in s]


def test_a_row_by_row_test_reads_only_the_rows_the_merge_wrote(con, tmp_path):
    sql_dir = write(tmp_path, {"staging/people.sql": PEOPLE, "tests/no_email.sql": NO_EMAIL})
    build(con, sql_dir)
    add_patient(con, 5, "p5@example.com", later=1)
    logged = Logged(con)
    result = build(logged, sql_dir)
    assert result.tests_passed == 1
    runs = counted(logged, "not like '%@%'")
    assert len(runs) == 1 and "relay_came_" in runs[0] and "staging.people" not in runs[0]
    # the rows it read are gone with the build
    temporary = "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'relay_came%'"
    assert con.execute(temporary).fetchone()[0] == 0


def test_an_offending_new_row_fails_the_build_as_a_test_of_every_row_does(con, tmp_path):
    sql_dir = write(tmp_path, {"staging/people.sql": PEOPLE, "tests/no_email.sql": NO_EMAIL})
    build(con, sql_dir)
    add_patient(con, 5, "nobody", later=1)
    logged = Logged(con)
    with pytest.raises(models.PartialBuild, match=r"data test failed: 1 offending row\(s\)"):
        build(logged, sql_dir)
    runs = counted(logged, "not like '%@%'")
    assert "relay_came_" in runs[0] and "staging.people" in runs[-1]  # counted over every row
    # the failing test held the model it reads: its last good rows, without the new one
    assert con.execute("SELECT count(*) FROM staging.people").fetchone()[0] == 4


@pytest.mark.parametrize(
    "test",
    [
        # not row by row: a group, a join, a subquery see rows the build did not write
        "select email from staging.people group by email having count(*) > 1",
        "select a.patient_id from staging.people a join staging.people b using (email) "
        "where a.patient_id <> b.patient_id",
        "select patient_id from staging.people "
        "where patient_id > (select count(*) from staging.people) + 1",
        "select patient_id from staging.people where random() < 0",  # the clock, chance
    ],
)
def test_a_test_that_does_not_read_row_by_row_reads_every_row(con, tmp_path, test):
    sql_dir = write(tmp_path, {"staging/people.sql": PEOPLE, "tests/check.sql": test})
    build(con, sql_dir)
    add_patient(con, 5, "p5@example.com", later=1)
    logged = Logged(con)
    build(logged, sql_dir)
    runs = counted(logged, "staging.people")
    assert len(runs) == 1 and "relay_came_" not in runs[0]


def test_a_test_that_did_not_pass_on_the_last_tables_reads_every_row(con, tmp_path):
    """An edited test (or one that failed, or read a held model) never passed on the rows
    the build did not write: an old row may fail it."""
    sql_dir = write(tmp_path, {"staging/people.sql": PEOPLE, "tests/no_email.sql": NO_EMAIL})
    build(con, sql_dir)
    add_patient(con, 5, "p5@example.com", later=1)
    edited = NO_EMAIL.replace("not like '%@%'", "= 'p1@example.com'")  # an old row
    write(tmp_path, {"tests/no_email.sql": edited})
    with pytest.raises(models.PartialBuild, match=r"data test failed: 1 offending row\(s\)"):
        build(con, sql_dir)


# A second model and a test of it: independent of staging.people and its test.
MAILS = "select patient_id, email from staging.people where email like '%@%'"
ONE_A_MAIL = (
    "-- one row per address\nselect email from marts.mails group by email having count(*) > 1"
)


def together(logged: Logged) -> list[str]:
    """The statements that counted several data tests at once."""
    return [s for s in logged.statements if s.startswith("SELECT (SELECT count(*) FROM (")]


def test_the_data_tests_are_counted_together_in_one_statement(con, tmp_path):
    """DuckDB runs a statement's independent subqueries side by side: tests that each scan a
    table on one thread share the cores (tasks/models/checks.py count_together)."""
    files = {"staging/people.sql": PEOPLE, "marts/mails.sql": MAILS}
    sql_dir = write(
        tmp_path, {**files, "tests/no_email.sql": NO_EMAIL, "tests/one.sql": ONE_A_MAIL}
    )
    build(con, sql_dir)
    add_patient(con, 5, "p5@example.com", later=1)
    logged = Logged(con)
    assert build(logged, sql_dir).tests_passed == 2
    [statement] = together(logged)
    assert "not like '%@%'" in statement and "having count(*) > 1" in statement
    assert counted(logged, "not like") == counted(logged, "per address") == []  # not alone


def test_a_test_failing_among_others_counts_and_holds_as_alone(con, tmp_path):
    files = {"staging/people.sql": PEOPLE, "marts/mails.sql": MAILS}
    sql_dir = write(
        tmp_path, {**files, "tests/no_email.sql": NO_EMAIL, "tests/one.sql": ONE_A_MAIL}
    )
    build(con, sql_dir)
    add_patient(con, 5, "p1@example.com", later=1)  # a second row of an address
    logged = Logged(con)
    with pytest.raises(models.PartialBuild, match=r"sql/tests/one.sql: data test failed: 1 off"):
        build(logged, sql_dir)
    assert len(together(logged)) == 1
    # held: marts.mails (the table the test reads) keeps its last good rows; staging.people,
    # which its test passed, has the new patient
    assert con.execute("SELECT count(*) FROM marts.mails").fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM staging.people").fetchone()[0] == 5


def test_a_test_that_cannot_run_among_others_is_named_by_testing_one_at_a_time(con, tmp_path):
    """An error in the statement counting them together does not say whose (and leaves the
    transaction unusable): the build runs again, one test at a time, which names it; the other
    test runs, and the models build."""
    broken = "select patient_id from staging.people where email::INTEGER > 0"  # a cast: at run
    files = {"staging/people.sql": PEOPLE, "marts/mails.sql": MAILS, "tests/one.sql": ONE_A_MAIL}
    sql_dir = write(tmp_path, {**files, "tests/no_email.sql": NO_EMAIL})
    build(con, sql_dir)
    write(tmp_path, {"tests/no_email.sql": broken})
    add_patient(con, 5, "p5@example.com", later=1)
    logged = Logged(con)
    with pytest.raises(models.PartialBuild, match=r"sql/tests/no_email.sql: Conversion Error") as e:
        build(logged, sql_dir)
    # it holds no model: said so, not "kept the last good tables of no model (... what reads it)"
    assert "held no model and rebuilt all 2 models" in str(e.value)
    assert "last good tables of no model" not in str(e.value)
    assert len(together(logged)) == 1  # the first pass; then one at a time
    assert len(counted(logged, "per address")) == 1  # the other test, alone
    assert "'p5@example.com'" not in str(models.latest_build(con))  # no data in the record
    assert con.execute("SELECT count(*) FROM marts.mails").fetchone()[0] == 5
