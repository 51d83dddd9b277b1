"""What a build leaves as it was when nothing it reads changed (issue 16): the members of an
audience whose table kept every row, a data test that passed on these very tables, a view with
the same SQL. Each skip must never leave a stale list, segment or verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tasks.models import checks, membership
from tasks.models import runner as models
from tasks.warehouse import memory_db
from tests.unit.models.test_runner import GOOD, build, write

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
TEST = {"tests/people_have_email.sql": "select * from marts.people where email is null"}


@pytest.fixture
def con():
    c = memory_db()
    add_patient(c, 1, "ann@example.com")
    add_patient(c, 2, "bob@example.com")
    yield c
    c.close()


@pytest.fixture
def spies(monkeypatch):
    """The audiences each build compared with their members, and the data tests it ran."""
    seen: dict[str, list] = {"compared": [], "tested": []}
    record, alone, together = membership._record, checks.count_failures, checks.count_together

    def _record(con, queries, *args):
        seen["compared"].append(sorted(queries))
        return record(con, queries, *args)

    def count_failures(con, test, *build):
        seen["tested"].append(test.file)
        return alone(con, test, *build)

    def count_together(con, tests, *build):
        counts = together(con, tests, *build)
        seen["tested"] += list(counts)
        return counts

    monkeypatch.setattr(membership, "_record", _record)
    monkeypatch.setattr(checks, "count_failures", count_failures)
    monkeypatch.setattr(checks, "count_together", count_together)
    return seen


def add_patient(con, pid: int, email: str | None) -> None:
    """As a sync writes it: each later write at a later moment (synced_at), after the build
    that came before it."""
    con.execute(
        "INSERT INTO raw.patients VALUES (?, NULL, ?, ?, NULL)",
        [pid, json.dumps({"id": str(pid), "email": email}), NOW + timedelta(seconds=pid)],
    )


def test_a_build_that_changes_no_row_compares_no_audience_and_runs_no_data_test(
    con, tmp_path, spies
):
    sql_dir = write(tmp_path, {**GOOD, **TEST})
    first = build(con, sql_dir)
    assert spies["compared"] == [["segments.everyone"]]
    assert spies["tested"] == ["sql/tests/people_have_email.sql"]

    second = build(con, sql_dir)
    assert spies["compared"] == [["segments.everyone"]]  # not again
    assert spies["tested"] == ["sql/tests/people_have_email.sql"]  # not again
    assert second.audiences == {"segments.everyone": {"size": 2, "joined": 0, "left": 0}}
    assert first.audiences["segments.everyone"]["size"] == 2
    assert second.tests_passed == first.tests_passed == 1


def test_a_changed_row_is_recorded_and_tested_as_before(con, tmp_path, spies):
    sql_dir = write(tmp_path, {**GOOD, **TEST})
    build(con, sql_dir)
    add_patient(con, 3, "cy@example.com")
    result = build(con, sql_dir)
    assert spies["compared"][-1] == ["segments.everyone"]
    assert spies["tested"].count("sql/tests/people_have_email.sql") == 2
    assert result.audiences["segments.everyone"] == {"size": 3, "joined": 1, "left": 0}
    events = con.execute(
        "SELECT patient_id, event FROM state.membership_events WHERE NOT initial"
    ).fetchall()
    assert events == [(3, "joined")]

    add_patient(con, 4, None)  # breaks the data test: it must run, not pass from memory
    with pytest.raises(models.PartialBuild, match="people_have_email"):
        build(con, sql_dir)


def test_a_changed_audience_is_recorded_from_the_rows_its_table_lost_and_gained(
    con, tmp_path, spies
):
    """Not by comparing every member again: the segment's table lost and gained a row each, so
    those are the members compared (tests/integration/test_models_changes.py: the same events
    and members as comparing everyone, through many change sets)."""
    has_email = "select * from marts.people where email <> ''"
    sql_dir = write(tmp_path, {**GOOD, "segments/has_email.sql": has_email})
    build(con, sql_dir)
    assert spies["compared"] == [["segments.everyone", "segments.has_email"]]
    add_patient(con, 3, "cy@example.com")
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": ""}\', synced_at = ? WHERE id = 1',
        [NOW + timedelta(seconds=4)],
    )
    result = build(con, sql_dir)
    assert len(spies["compared"]) == 1  # nobody compared member by member
    assert result.audiences["segments.everyone"] == {"size": 3, "joined": 1, "left": 0}
    assert result.audiences["segments.has_email"] == {"size": 2, "joined": 1, "left": 1}
    events = con.execute(
        "SELECT audience, patient_id, event FROM state.membership_events WHERE NOT initial "
        "ORDER BY ALL"
    ).fetchall()
    assert events == [
        ("segments.everyone", 3, "joined"),
        ("segments.has_email", 1, "left"),
        ("segments.has_email", 3, "joined"),
    ]
    members = con.execute(
        "SELECT audience, member_key FROM state.audience_members ORDER BY ALL"
    ).fetchall()
    assert members == [
        ("segments.everyone", "1"),
        ("segments.everyone", "2"),
        ("segments.everyone", "3"),
        ("segments.has_email", "2"),
        ("segments.has_email", "3"),
    ]


def test_a_new_or_edited_data_test_runs_even_when_no_model_changed(con, tmp_path, spies):
    sql_dir = write(tmp_path, {**GOOD, **TEST})
    build(con, sql_dir)
    build(con, sql_dir)
    write(tmp_path, {"tests/people_have_email.sql": "select * from marts.people where true"})
    with pytest.raises(models.PartialBuild, match="people_have_email"):
        build(con, sql_dir)
    write(tmp_path, {**TEST, "tests/one_person.sql": "select * from marts.people limit 1"})
    with pytest.raises(models.PartialBuild, match="one_person"):
        build(con, sql_dir)


def test_a_view_whose_sql_changed_is_replaced_although_nothing_it_reads_changed(con, tmp_path):
    view = "-- config: materialized=view\nselect patient_id, email from marts.people"
    sql_dir = write(tmp_path, {**GOOD, "marts/people_view.sql": view})
    build(con, sql_dir)
    build(con, sql_dir)
    write(tmp_path, {"marts/people_view.sql": view + " where patient_id = 1"})
    build(con, sql_dir)
    assert con.execute("SELECT patient_id FROM marts.people_view").fetchall() == [(1,)]


def test_a_view_or_data_test_that_reads_the_clock_is_never_taken_as_unchanged(con, tmp_path, spies):
    """Its answer moves with time although no table changed: a segment view over now() must
    be recorded, and a test over now() run, on every build."""
    view = "-- config: materialized=view\nselect patient_id from marts.people where now() > {}"
    sql_dir = write(
        tmp_path,
        {
            **GOOD,
            "segments/everyone.sql": view.format("TIMESTAMPTZ '2000-01-01'"),
            "tests/clock.sql": "select * from marts.people where now() < TIMESTAMPTZ '2000-01-01'",
        },
    )
    build(con, sql_dir)
    build(con, sql_dir)
    assert spies["compared"] == [["segments.everyone"]] * 2
    assert spies["tested"] == ["sql/tests/clock.sql"] * 2


def test_a_table_whose_inputs_did_not_change_is_not_run_again(con, tmp_path):
    """An idle tick's build: a table reading only raw tables the sync has not written to since
    the last build (and models left unchanged) is not run at all; one reading the clock is; and
    the first raw write after the build runs the table again (a tampered row shows which)."""
    table = "-- config: materialized=table\n"
    sql_dir = write(
        tmp_path,
        {
            "staging/people.sql": table + GOOD["staging/people.sql"],
            "marts/people.sql": table + GOOD["marts/people.sql"],
            "marts/today.sql": table + "select patient_id, current_date as d from marts.people",
        },
    )
    build(con, sql_dir)
    con.execute("UPDATE staging.people SET email = 'kept' WHERE patient_id = 1")
    con.execute("UPDATE marts.today SET d = DATE '2000-01-01'")

    build(con, sql_dir)  # nothing written to raw.patients since the last build
    assert con.execute("SELECT email FROM staging.people WHERE patient_id = 1").fetchone() == (
        "kept",
    )
    assert con.execute(
        "SELECT count(*) FROM marts.today WHERE d = DATE '2000-01-01'"
    ).fetchone() == (0,)

    con.execute(
        "INSERT INTO raw.patients VALUES (3, NULL, ?, ?, NULL)",
        [json.dumps({"id": "3", "email": "cy@example.com"}), NOW + timedelta(minutes=5)],
    )
    build(con, sql_dir)
    emails = dict(con.execute("SELECT patient_id, email FROM staging.people").fetchall())
    assert emails == {1: "ann@example.com", 2: "bob@example.com", 3: "cy@example.com"}
    assert con.execute("SELECT count(*) FROM marts.people").fetchone() == (3,)


def test_a_full_refresh_runs_every_table_again(con, tmp_path):
    table = "-- config: materialized=table\n"
    sql_dir = write(tmp_path, {"staging/people.sql": table + GOOD["staging/people.sql"]})
    build(con, sql_dir)
    con.execute("UPDATE staging.people SET email = 'kept' WHERE patient_id = 1")
    build(con, sql_dir, full_refresh=True)
    assert con.execute("SELECT email FROM staging.people WHERE patient_id = 1").fetchone() == (
        "ann@example.com",
    )


def test_a_comment_naming_the_clock_does_not_make_a_table_run_again(con, tmp_path):
    """A header saying what a model holds "now" is no call to now(): the table is still left
    as it was when nothing it reads changed (staging.invoices, 193,000 rows parsed from JSON,
    ran on every idle tick for the word "now" in its comment); now() in the code still runs it."""
    table = "-- config: materialized=table\n-- every patient as Cliniko has them now\n"
    sql_dir = write(
        tmp_path,
        {
            "staging/people.sql": table + GOOD["staging/people.sql"],
            "marts/clock.sql": table + "select patient_id, now() as t from staging.people -- now",
        },
    )
    build(con, sql_dir)
    con.execute("UPDATE staging.people SET email = 'kept' WHERE patient_id = 1")
    con.execute("UPDATE marts.clock SET t = TIMESTAMPTZ '2000-01-01'")
    build(con, sql_dir)
    assert con.execute("SELECT email FROM staging.people WHERE patient_id = 1").fetchone() == (
        "kept",
    )
    assert con.execute("SELECT count(*) FROM marts.clock WHERE year(t) = 2000").fetchone() == (0,)


def test_an_incremental_model_whose_inputs_did_not_change_is_not_merged(con, tmp_path, monkeypatch):
    """An idle tick's build: an incremental model reading only raw tables the sync has not
    written to since (through raw_changes) and models left unchanged runs no statement (its
    changes are none; each was 3-17 ms of DuckDB planning); one reading a variable runs; the
    first raw write after the build merges the first again."""
    from tasks.models import tables

    merged, one = [], tables.one

    def spy(con, sql, *args):
        if sql.startswith("CREATE OR REPLACE TEMP TABLE relay_delta AS"):
            merged.append(sql.split("\n", 2)[1])
        return one(con, sql, *args)

    monkeypatch.setattr(tables, "one", spy)
    incremental = "-- config: materialized=incremental, key=patient_id\n"
    sql_dir = write(
        tmp_path,
        {
            "staging/people.sql": incremental
            + "-- staging\nselect id as patient_id, payload->>'email' as email "
            "from raw_changes('raw.patients')",
            "marts/people.sql": incremental
            + "-- mart, every build\nselect patient_id, upper(email) as email "
            "from staging.people where getvariable('build_id') is not null",
        },
    )
    build(con, sql_dir)  # first build: both in full, no merge
    build(con, sql_dir)  # nothing written to raw.patients since
    assert merged == ["-- mart, every build"]

    merged.clear()
    con.execute(
        "INSERT INTO raw.patients VALUES (3, NULL, ?, ?, NULL)",
        [json.dumps({"id": "3", "email": "cy@example.com"}), NOW + timedelta(minutes=5)],
    )
    build(con, sql_dir)
    assert merged == ["-- staging", "-- mart, every build"]
    emails = dict(con.execute("SELECT patient_id, email FROM marts.people").fetchall())
    assert emails == {1: "ANN@EXAMPLE.COM", 2: "BOB@EXAMPLE.COM", 3: "CY@EXAMPLE.COM"}
