"""The model runner on small hand-written projects: discovery, order, materialisation, and what
happens when a model, a reference or a data test is wrong (clear errors, last good tables kept)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from tasks.models import runner as models
from tasks.warehouse import memory_db

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SETTINGS = models.ListSettings()


@pytest.fixture
def con():
    c = memory_db()
    for pid, email in [(1, "ann@example.com"), (2, "bob@example.com")]:
        c.execute(
            "INSERT INTO raw.patients VALUES (?, NULL, ?, ?, NULL)",
            [pid, json.dumps({"id": str(pid), "email": email}), NOW],
        )
    yield c
    c.close()


def write(root: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        path = root / "sql" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if sql is None:
            path.unlink()
        else:
            path.write_text(sql)
    return root / "sql"


GOOD = {
    "staging/people.sql": "select id as patient_id, payload->>'email' as email from raw.patients",
    "marts/people.sql": "select patient_id, upper(email) as email from staging.people",
    "segments/everyone.sql": "select patient_id from marts.people",
}


def build(con, sql_dir, **kw):
    return models.build(con, SETTINGS, sql_dir=sql_dir, now=NOW, **kw)


def count(con, relation: str) -> int:
    return con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]


def test_models_are_built_in_the_order_their_sql_reads_each_other(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {
            # alphabetically 'a_last' would come first; it reads the other mart, so it is built after
            "marts/a_last.sql": "with x as (select * from marts.b_first) select * from x",
            "marts/b_first.sql": "select * from staging.people",
            "staging/people.sql": GOOD["staging/people.sql"],
        },
    )
    project = models.discover(con, sql_dir)
    assert [m.relation for m in project.models] == [
        "staging.people",
        "marts.b_first",
        "marts.a_last",
    ]
    assert project.model("marts.a_last").depends_on == ("marts.b_first",)
    result = build(con, sql_dir)
    assert result.rows["marts.a_last"] == 2


def test_a_header_line_makes_a_view_and_a_later_change_makes_it_a_table(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {**GOOD, "marts/people.sql": "-- config: materialized=view\n" + GOOD["marts/people.sql"]},
    )
    build(con, sql_dir)
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = 'marts'"
    ).fetchall()
    assert kinds == [("VIEW",)]
    write(tmp_path, GOOD)
    build(con, sql_dir)
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = 'marts'"
    ).fetchall()
    assert kinds == [("BASE TABLE",)]


def test_a_broken_model_fails_the_build_naming_its_file_and_keeps_every_last_good_table(
    con, tmp_path
):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    con.execute(
        'INSERT INTO raw.patients VALUES (3, NULL, \'{"email": "cy@example.com"}\', now(), NULL)'
    )
    write(tmp_path, {"marts/people.sql": "select patient_id, no_such_column from staging.people"})
    with pytest.raises(models.BuildFailed) as failed:
        build(con, sql_dir)
    message = str(failed.value)
    assert "sql/marts/people.sql" in message and "no_such_column" in message
    # Upstream staging is rebuilt; the broken mart and the segment reading it stay as they were.
    assert count(con, "staging.people") == 3
    assert count(con, "marts.people") == 2
    assert count(con, "segments.everyone") == 2
    latest = models.latest_build(con)
    assert (latest["status"], latest["failed_file"]) == ("succeeded", "sql/marts/people.sql")
    assert latest["held"] == {
        "marts.people": "sql/marts/people.sql",
        "segments.everyone": "sql/marts/people.sql",
    }
    # Whoever reads the held models waits; whoever reads only staging goes on.
    with pytest.raises(Exception, match=r"segments.everyone not rebuilt \(sql/marts/people.sql"):
        models.require_good_build(con, ["segments.everyone"])
    models.require_good_build(con, ["staging.people"])


def test_a_data_error_is_reported_without_the_value_that_caused_it(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {"marts/bad_cast.sql": "select cast(payload->>'email' as integer) as n from raw.patients"},
    )
    with pytest.raises(models.BuildFailed) as failed:
        build(con, sql_dir)
    assert "sql/marts/bad_cast.sql" in str(failed.value)
    assert "example.com" not in str(failed.value)
    stored = con.execute("SELECT error FROM state.model_builds").fetchone()[0]
    assert "Conversion" in stored and "example.com" not in stored


def test_a_cycle_is_reported_with_the_files_that_form_it(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {
            "marts/one.sql": "select * from marts.two",
            "marts/two.sql": "select * from marts.one",
        },
    )
    with pytest.raises(
        models.ModelError,
        match="cycle: sql/marts/one.sql -> sql/marts/two.sql -> sql/marts/one.sql",
    ):
        models.discover(con, sql_dir)


def test_a_reference_to_an_unknown_table_names_the_file_and_the_table(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {"segments/typo.sql": "select patient_id from marts.peple"})
    with pytest.raises(
        models.BuildFailed,
        match=r"sql/segments/typo.sql: reads marts.peple, which does not exist \(there is no file sql/marts/peple.sql\)",
    ):
        build(con, sql_dir)
    latest = models.latest_build(con)  # recorded: what reads the segment waits
    assert (latest["status"], latest["failed_file"]) == ("succeeded", "sql/segments/typo.sql")
    assert latest["held"] == {"segments.typo": "sql/segments/typo.sql"}
    assert count(con, "segments.everyone") == 2


def test_a_new_segment_broken_from_its_first_build_is_not_said_to_keep_a_last_good_table(
    con, tmp_path
):
    """A segment no build has made has no last good table: the error said it "kept the last
    good tables of segments.typo". An existing model held beside it still is kept."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {"segments/typo.sql": "select patient_id // 0 as patient_id from marts.people"})
    write(
        tmp_path,
        {"segments/everyone.sql": "select patient_id::INT // 0 as patient_id from marts.people"},
    )
    with pytest.raises(models.PartialBuild) as e:
        build(con, sql_dir)
    said = str(e.value)
    assert "did not create segments.typo (new: no good build of it yet)" in said
    assert "kept the last good tables of segments.everyone and did not create" in said
    assert "last good tables of segments.everyone, segments.typo" not in said


def test_a_model_reading_raw_changes_depends_on_the_raw_table_it_names(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {
            "staging/people.sql": "-- config: materialized=incremental, key=patient_id\n"
            "with source as (select * from raw_changes('raw.patients')) "
            "select id as patient_id, payload->>'email' as email from source",
        },
    )
    assert models.discover(con, sql_dir).model("staging.people").depends_on == ("raw.patients",)
    write(tmp_path, {"staging/people.sql": "select * from raw_changes('raw.no_such')"})
    with pytest.raises(models.ModelError, match="reads raw.no_such, which does not exist"):
        models.discover(con, sql_dir)


def test_a_table_without_its_schema_is_refused(con, tmp_path):
    sql_dir = write(tmp_path, {"marts/x.sql": "with p as (select 1) select * from p, patients"})
    with pytest.raises(models.ModelError, match="reads 'patients' without a schema"):
        models.discover(con, sql_dir)
    # a segment reading another by its bare name is shown the schema it needs among the examples
    sql_dir = write(tmp_path, {"marts/x.sql": None, "segments/x.sql": "select * from loyal"})
    with pytest.raises(models.ModelError, match=r"segments\.loyal"):
        models.discover(con, sql_dir)


def test_a_file_with_two_statements_is_refused(con, tmp_path):
    sql_dir = write(tmp_path, {"marts/x.sql": "select 1; select 2"})
    with pytest.raises(models.ModelError, match="exactly one SELECT"):
        models.discover(con, sql_dir)


@pytest.mark.parametrize(
    "file, sql",
    [
        (
            "segments/unsubscribes_gone.sql",
            "with gone as (delete from state.suppressions returning 1) "
            "select patient_id from marts.people",
        ),
        ("tests/no_rows.sql", "with x as (delete from raw.patients returning id) select * from x"),
        (
            "marts/x.sql",
            "select * from (with y as (update raw.patients set payload = '{}' returning id) "
            "select id from y)",
        ),
        (
            "marts/y.sql",
            "with y as (insert into state.suppressions (channel, address, action, reason, "
            "source, occurred_at) values ('sms', '+61400000000', 'lift', 'opt_in', 'x', now()) "
            "returning 1 as n) select * from y",
        ),
    ],
)
def test_a_file_that_writes_in_a_cte_is_refused_and_writes_nothing(con, tmp_path, file, sql):
    """DuckDB runs INSERT/UPDATE/DELETE in a CTE of a SELECT: such a segment passed as 'one
    SELECT', and its build deleted every unsubscribe (the unsubscribed went back on the list)."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    con.execute(
        "INSERT INTO state.suppressions (channel, address, action, reason, source, occurred_at) "
        "VALUES ('email', 'ann@example.com', 'suppress', 'unsubscribed', 'csv_import', ?)",
        [NOW],
    )
    write(tmp_path, {file: sql})
    with pytest.raises(models.BuildFailed, match=f"sql/{file}: writes"):
        build(con, sql_dir)
    assert count(con, "state.suppressions") == 1 and count(con, "raw.patients") == 2
    assert con.execute("SELECT count(*) FROM raw.patients WHERE payload = '{}'").fetchone()[0] == 0


def test_an_unreadable_config_line_is_refused_with_an_example(con, tmp_path):
    sql_dir = write(tmp_path, {"marts/x.sql": "-- config: materialized=incremental\nselect 1 as a"})
    with pytest.raises(models.ModelError, match="needs key= in its '-- config:' line"):
        models.discover(con, sql_dir)
    write(tmp_path, {"marts/x.sql": "-- config: materialised=view\nselect 1 as a"})
    with pytest.raises(
        models.ModelError, match="cannot read '-- config:' item 'materialised=view'"
    ):
        models.discover(con, sql_dir)


def test_a_key_on_a_table_or_view_is_refused_not_ignored(con, tmp_path):
    """key= on a table or view was read and then ignored: duplicates were built silently."""
    for materialized in ("table", "view"):
        body = f"-- config: materialized={materialized}, key=a\nselect 1 as a"
        sql_dir = write(tmp_path, {"marts/x.sql": body})
        with pytest.raises(
            models.ModelError,
            match=f"key= is for an incremental model.*a {materialized} has no key",
        ):
            models.discover(con, sql_dir)
    sql_dir = write(tmp_path, {"marts/x.sql": "-- config: key=a\nselect 1 as a"})
    with pytest.raises(models.ModelError, match="a table has no key"):
        models.discover(con, sql_dir)


def test_a_file_saved_with_a_byte_order_mark_keeps_its_config_line(con, tmp_path):
    """Windows editors (Notepad, VS Code's "UTF-8 with BOM") start a file with U+FEFF: the
    header was then not seen as a comment, so `materialized=view` was silently a table."""
    view = "\ufeff-- config: materialized=view\r\n" + GOOD["marts/people.sql"] + "\r\n"
    sql_dir = write(tmp_path, {**GOOD, "marts/people.sql": view})
    assert models.discover(con, sql_dir).model("marts.people").materialized == "view"
    write(tmp_path, {"marts/people.sql": "\ufeff-- config: materialised=view\nselect 1 as a"})
    with pytest.raises(models.ModelError, match="cannot read '-- config:' item"):
        models.discover(con, sql_dir)


def test_a_file_not_saved_as_utf8_is_held_like_a_broken_model_not_a_crash(con, tmp_path):
    """A segment saved by a Windows editor in its own encoding ("caf\xe9" in cp1252) stopped
    every build, the tick's too, with a UnicodeDecodeError traceback: it is one broken file,
    named with what to do, and the rest of the project builds."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    latin = sql_dir / "segments" / "cafe.sql"
    latin.write_bytes(
        "-- the caf\xe9 program\nselect patient_id from marts.people\n".encode("cp1252")
    )
    with pytest.raises(models.ModelError, match=r"sql/segments/cafe.sql: .*UTF-8"):
        models.discover(con, sql_dir)
    with pytest.raises(models.PartialBuild, match=r"sql/segments/cafe.sql: .*save it as UTF-8"):
        build(con, sql_dir)
    assert count(con, "segments.everyone") == 2
    assert models.latest_build(con)["failed_file"] == "sql/segments/cafe.sql"


def test_a_segment_whose_error_call_says_a_name_fails_without_the_name(con, tmp_path):
    """An analyst's error() built from a patient's values ('ANN Jackson') was the build's error,
    word for word, in state.model_builds and the tick's Prefect state: it is left out there."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {"segments/named.sql": (
        "select patient_id from marts.people\n"
        "where error(split_part(email, '@', 1) || ' Jackson') is null"
    )})  # fmt: skip
    with pytest.raises(models.PartialBuild) as held:
        build(con, sql_dir)
    stored = models.latest_build(con)
    for said in (str(held.value), stored["error"]):
        assert "sql/segments/named.sql" in str(held.value)
        assert "Jackson" not in said and "ANN" not in said and "calls error()" in said
    assert count(con, "segments.everyone") == 2


def test_a_config_line_below_the_sql_is_refused_not_ignored(con, tmp_path):
    """Only the header's `--` lines are read: a `-- config:` line after the first line of SQL
    (or after a /* */ description) built the default table without a word."""
    for text in (
        "select patient_id\n-- config: materialized=view\nfrom marts.people",
        "/* adults */\n-- config: materialized=view\nselect patient_id from marts.people",
    ):
        sql_dir = write(tmp_path, {**GOOD, "segments/everyone.sql": text})
        with pytest.raises(models.ModelError, match="line 2: a '-- config:' line is read only"):
            models.discover(con, sql_dir)


def test_two_files_building_one_table_are_refused_naming_both(con, tmp_path):
    """`Loyal.sql` beside `loyal.sql` both build segments.loyal: one was silently ignored."""
    other = "select patient_id from marts.people where patient_id = 1"
    sql_dir = write(tmp_path, {**GOOD, "segments/Everyone.sql": other})
    with pytest.raises(models.ModelError) as refused:
        models.discover(con, sql_dir)
    assert str(refused.value) == (
        "sql/segments/everyone.sql and sql/segments/Everyone.sql both build segments.everyone: "
        "rename one."
    )


def test_a_failing_data_test_fails_the_build_with_its_count_and_file(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(
        tmp_path,
        {
            "marts/people.sql": "select patient_id, null as email from staging.people",
            "tests/people_have_email.sql": "select patient_id from marts.people where email is null",
        },
    )
    with pytest.raises(
        models.BuildFailed,
        match=r"sql/tests/people_have_email.sql: data test failed: 2 offending row",
    ):
        build(con, sql_dir)
    # The model the test reads keeps its last good table (and so does what reads it).
    assert con.execute("SELECT count(email) FROM marts.people").fetchone()[0] == 2
    assert set(models.latest_build(con)["held"]) == {"marts.people", "segments.everyone"}
    # The last good models are still in place, and they pass the new test.
    assert models.run_tests(con, sql_dir) == {"sql/tests/people_have_email.sql": 0}


# A data test that cannot run (a column that is not there): DuckDB refuses it only when it runs,
# after every model was built.
BROKEN_TEST = {"tests/people_broken.sql": "select patient_id from marts.people where no_such_col"}


def test_a_broken_data_test_file_is_recorded_as_a_failed_build(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {**GOOD, **BROKEN_TEST})
    with pytest.raises(models.BuildFailed, match=r"sql/tests/people_broken.sql: .*no_such_col"):
        build(con, sql_dir)
    latest = models.latest_build(con)  # a test that cannot run holds nothing but itself
    assert (latest["status"], latest["failed_file"]) == ("succeeded", "sql/tests/people_broken.sql")
    assert latest["held"] == {}


def test_a_segment_must_return_each_patient_once(con, tmp_path):
    sql_dir = write(
        tmp_path,
        {**GOOD, "segments/twice.sql": "select patient_id from marts.people union all select 1"},
    )
    with pytest.raises(
        models.BuildFailed,
        match="sql/segments/twice.sql: 1 value.*a segment has one row per patient",
    ):
        build(con, sql_dir)
    write(tmp_path, {"segments/twice.sql": "select email from marts.people"})
    with pytest.raises(models.BuildFailed, match="must return a column named patient_id"):
        build(con, sql_dir)


# The whole database as the real project names it (sql/marts/patients.sql): a segment's
# patient_id values must be patients there.
PATIENTS = {"marts/patients.sql": "select patient_id from staging.people"}


def test_a_segment_of_ids_that_are_not_patients_is_held(con, tmp_path):
    """An appointment id, a NULL or a made-up number is not a patient: the segment is held with
    its file named, the rest of the build goes on."""
    sql_dir = write(tmp_path, {**GOOD, **PATIENTS})
    build(con, sql_dir)
    for sql in (
        "select patient_id + 100 as patient_id from marts.people",
        "select patient_id from marts.people union all select null",
    ):
        write(tmp_path, {"segments/odd.sql": sql})
        with pytest.raises(
            models.BuildFailed,
            match=r"sql/segments/odd.sql: \d row\(s\) with a patient_id that is not a patient",
        ):
            build(con, sql_dir)
        latest = models.latest_build(con)
        assert (latest["status"], latest["held"]) == (
            "succeeded",
            {"segments.odd": "sql/segments/odd.sql"},
        )
        assert count(con, "segments.everyone") == 2


def test_a_segment_that_names_a_non_patient_on_a_later_build_keeps_its_last_good_rows(
    con, tmp_path
):
    """Brought to its new rows by difference, only the rows that came are asked."""
    odd = {
        "segments/odd.sql": "select case when email like '%ODD%' then patient_id + 100 "
        "else patient_id end as patient_id from marts.people"
    }
    sql_dir = write(tmp_path, {**GOOD, **PATIENTS, **odd})
    build(con, sql_dir)
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": "ann.odd@example.com"}\', '
        "synced_at = now() WHERE id = 1"
    )
    with pytest.raises(models.BuildFailed, match="sql/segments/odd.sql: 1 row.*not a patient"):
        build(con, sql_dir)
    assert sorted(con.execute("SELECT * FROM segments.odd").fetchall()) == [(1,), (2,)]


@pytest.mark.parametrize(
    ("odd", "error"),
    [
        ("patient_id + 100", r"1 row\(s\) with a patient_id that is not a patient"),
        ("null", r"1 row\(s\) with a patient_id that is not a patient"),
        ("2", r"1 value\(s\) of patient_id appear on more than one row"),
    ],
)
def test_rows_that_come_into_a_segment_are_checked_when_every_model_is_built(
    con, tmp_path, odd, error
):
    """The rows that came into segments by difference are checked together after the last
    model (one statement, not two a segment): a failing one still holds itself and the
    segment reading it, keeps its last good rows, and the rest is built and committed."""
    files = {
        **GOOD,
        **PATIENTS,
        "segments/odd.sql": f"select case when email like '%ODD%' then {odd} "
        "else patient_id end as patient_id from marts.people",
        "segments/odd_reader.sql": "select patient_id from segments.odd",
        "segments/zz_fine.sql": "select patient_id from marts.people where patient_id > 1",
    }
    sql_dir = write(tmp_path, files)
    build(con, sql_dir)
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": "ann.odd@example.com"}\', '
        "synced_at = now() WHERE id = 1"
    )
    con.execute(
        'INSERT INTO raw.patients VALUES (3, NULL, \'{"email": "cy@example.com"}\', now(), NULL)'
    )
    with pytest.raises(models.BuildFailed, match=f"sql/segments/odd.sql: {error}"):
        build(con, sql_dir)
    latest = models.latest_build(con)
    assert (latest["status"], latest["held"]) == (
        "succeeded",
        {"segments.odd": "sql/segments/odd.sql", "segments.odd_reader": "sql/segments/odd.sql"},
    )
    for held in ("segments.odd", "segments.odd_reader"):
        assert sorted(con.execute(f"SELECT * FROM {held}").fetchall()) == [(1,), (2,)]
    assert sorted(con.execute("SELECT * FROM segments.zz_fine").fetchall()) == [(2,), (3,)]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone() == (0,)


def test_a_segment_whose_patient_id_is_not_a_number_holds_itself_only(con, tmp_path):
    """A segment keyed by email (text) failed the whole build inside membership.py before."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {"segments/by_email.sql": "select email as patient_id from marts.people"})
    with pytest.raises(
        models.BuildFailed,
        match=r"sql/segments/by_email.sql: patient_id is VARCHAR; a segment's patient_id is",
    ) as failed:
        build(con, sql_dir)
    assert "@" not in str(failed.value)
    latest = models.latest_build(con)
    assert (latest["status"], latest["held"]) == (
        "succeeded",
        {"segments.by_email": "sql/segments/by_email.sql"},
    )
    assert count(con, "segments.everyone") == 2


def test_a_segment_made_a_view_is_checked_like_a_table(con, tmp_path):
    """`-- config: materialized=view` skipped the segment's checks: a patient on two rows was
    built, and no patient_id column failed the whole build in membership.py."""
    view = "-- config: materialized=view\n"
    sql_dir = write(tmp_path, {**GOOD, **PATIENTS})
    build(con, sql_dir)
    for sql, error in (
        ("select patient_id from marts.people union all select 1", "1 value.*one row per"),
        ("select email from marts.people", "must return a column named patient_id"),
        ("select patient_id + 100 as patient_id from marts.people", "2 row.*not a patient"),
    ):
        write(tmp_path, {"segments/as_view.sql": view + sql})
        with pytest.raises(models.BuildFailed, match=f"sql/segments/as_view.sql: .*{error}"):
            build(con, sql_dir)
        latest = models.latest_build(con)
        assert (latest["status"], latest["held"]) == (
            "succeeded",
            {"segments.as_view": "sql/segments/as_view.sql"},
        )
        assert count(con, "segments.everyone") == 2
    write(tmp_path, {"segments/as_view.sql": view + "select patient_id from marts.people"})
    build(con, sql_dir)
    assert count(con, "segments.as_view") == 2


def test_a_segment_that_repeats_a_patient_on_a_later_build_fails_it(con, tmp_path):
    """A segment brought to its new rows by difference is checked too: a patient on a row that
    came beside a row it kept, or on two rows that came."""
    twice = {
        "segments/twice.sql": "select patient_id, email from marts.people "
        "union all select patient_id, 'again' from marts.people where email like '%TWICE%'"
    }
    sql_dir = write(tmp_path, {**GOOD, **twice})
    build(con, sql_dir)
    con.execute(
        'INSERT INTO raw.patients VALUES (3, NULL, \'{"email": "cy@example.com"}\', now(), NULL)'
    )
    build(con, sql_dir)  # a row came, the segment by difference: still one row a patient
    con.execute(  # patient 1's row goes, and two come
        'UPDATE raw.patients SET payload = \'{"email": "ann.twice@example.com"}\', '
        "synced_at = now() WHERE id = 1"
    )
    with pytest.raises(
        models.BuildFailed, match="sql/segments/twice.sql: 1 value.*a segment has one row per"
    ):
        build(con, sql_dir)
    assert sorted(con.execute("SELECT * FROM segments.twice").fetchall()) == [
        (1, "ANN@EXAMPLE.COM"),
        (2, "BOB@EXAMPLE.COM"),
        (3, "CY@EXAMPLE.COM"),
    ]


def test_deleting_a_model_file_drops_its_table_and_retires_its_segment(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, {"segments/everyone.sql": None})
    build(con, sql_dir)
    with pytest.raises(duckdb.CatalogException):
        count(con, "segments.everyone")
    retired = con.execute(
        "SELECT retired_at FROM state.audiences WHERE audience = 'segments.everyone'"
    ).fetchone()[0]
    assert retired is not None
    left = con.execute(
        "SELECT count(*) FROM state.membership_events WHERE event = 'left'"
    ).fetchone()[0]
    assert left == 0  # a deleted segment is not everyone leaving it


def test_an_incremental_model_merges_new_rows_and_rebuilds_when_its_sql_changes(con, tmp_path):
    incremental = (
        "-- config: materialized=incremental, key=patient_id\n"
        "select id as patient_id, payload->>'email' as email from raw.patients "
        "where getvariable('changes_since') is null or synced_at > getvariable('changes_since')"
    )
    sql_dir = write(tmp_path, {"staging/people.sql": incremental})
    build(con, sql_dir)
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": "ann2@example.com"}\', '
        "synced_at = synced_at + INTERVAL 1 MINUTE WHERE id = 1"
    )
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": "unseen@example.com"}\' WHERE id = 2'
    )
    build(con, sql_dir)
    emails = dict(con.execute("SELECT patient_id, email FROM staging.people").fetchall())
    assert emails == {1: "ann2@example.com", 2: "bob@example.com"}
    write(tmp_path, {"staging/people.sql": incremental.replace("as email", "as email_address")})
    build(con, sql_dir)
    emails = dict(con.execute("SELECT patient_id, email_address FROM staging.people").fetchall())
    assert emails == {1: "ann2@example.com", 2: "unseen@example.com"}


def test_a_model_follows_the_values_another_merge_changed_and_deletes_what_nobody_has(
    con, tmp_path
):
    """marts.by_email counts the patients at each address incrementally: it recomputes the
    addresses staging.people's merge changed, as they were and as they are (changed_values),
    and a row selected with no count removes its address (delete_if_null)."""
    people = (
        "-- config: materialized=incremental, key=patient_id\n"
        "select id as patient_id, payload->>'email' as email from raw.patients "
        "where getvariable('changes_since') is null or synced_at > getvariable('changes_since')"
    )
    by_email = (
        "-- config: materialized=incremental, key=email, delete_if_null=patients\n"
        "with scope as (select value as email from changed_values('staging.people', 'email')), "
        "counted as (select email, count(*) as patients from staging.people "
        "where getvariable('changes_since') is null or email in (select email from scope) "
        "group by email) "
        "select * from counted union all by name "
        "select email from scope where email not in (select email from counted)"
    )
    sql_dir = write(tmp_path, {"staging/people.sql": people, "marts/by_email.sql": by_email})
    assert models.discover(con, sql_dir).model("marts.by_email").depends_on == ("staging.people",)
    build(con, sql_dir)
    assert rows(con, "marts.by_email") == [("ann@example.com", 1), ("bob@example.com", 1)]
    con.execute(
        'UPDATE raw.patients SET payload = \'{"email": "bob@example.com"}\', '
        "synced_at = synced_at + INTERVAL 1 MINUTE WHERE id = 1"
    )
    build(con, sql_dir)
    assert rows(con, "marts.by_email") == [("bob@example.com", 2)]
    write(
        tmp_path,
        {"marts/by_email.sql": by_email.replace("materialized=incremental, key=email, ", "")},
    )
    with pytest.raises(models.ModelError, match="delete_if_null= is for an incremental model"):
        models.discover(con, sql_dir)


def test_a_comment_on_the_last_line_of_a_model_that_deletes_by_null_is_only_a_comment(
    con, tmp_path
):
    """The full build wrapped the SQL as `SELECT * FROM (<sql>) WHERE ...`: a `-- comment` ending
    the file swallowed the closing parenthesis, and valid SQL failed with "syntax error"."""
    incremental = (
        "-- config: materialized=incremental, key=patient_id, delete_if_null=email\n"
        "select patient_id, email from staging.people -- everyone with an address"
    )
    sql_dir = write(tmp_path, {**GOOD, "marts/addresses.sql": incremental})
    build(con, sql_dir)
    assert count(con, "marts.addresses") == 2


def test_a_successful_build_records_counts_only(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    result = build(con, sql_dir)
    summary = con.execute(
        "SELECT summary FROM state.model_builds WHERE status = 'succeeded'"
    ).fetchone()[0]
    assert "example.com" not in summary and "EXAMPLE.COM" not in summary
    assert json.loads(summary)["audiences"]["segments.everyone"] == {
        "size": 2,
        "joined": 2,
        "left": 0,
    }
    assert result.audiences == json.loads(summary)["audiences"]
    assert models.require_good_build(con)["build_id"] == result.build_id


def test_changing_an_upstream_model_rebuilds_the_incremental_models_below_it(con, tmp_path):
    staging = "select id as patient_id, payload->>'email' as email, synced_at from raw.patients"
    mart = (
        "-- config: materialized=incremental, key=patient_id\n"
        "select patient_id, email from staging.people "
        "where getvariable('changes_since') is null or synced_at > getvariable('changes_since')"
    )
    sql_dir = write(tmp_path, {"staging/people.sql": staging, "marts/people.sql": mart})
    build(con, sql_dir)
    write(tmp_path, {"staging/people.sql": staging.replace("->>'email'", "->>'email' || '!'")})
    build(con, sql_dir)
    emails = {r[0] for r in con.execute("SELECT email FROM marts.people").fetchall()}
    assert emails == {"ann@example.com!", "bob@example.com!"}


def rows(con, relation: str) -> list[tuple]:
    return sorted(con.execute(f"SELECT * FROM {relation}").fetchall(), key=repr)


def test_a_rebuilt_table_changes_only_the_rows_that_changed(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    before = dict(con.execute("SELECT patient_id, rowid FROM marts.people").fetchall())
    con.execute(
        'INSERT INTO raw.patients VALUES (3, NULL, \'{"email": "cy@example.com"}\', now(), NULL)'
    )
    con.execute('UPDATE raw.patients SET payload = \'{"email": "ann2@example.com"}\' WHERE id = 1')
    build(con, sql_dir)
    assert rows(con, "marts.people") == [
        (1, "ANN2@EXAMPLE.COM"),
        (2, "BOB@EXAMPLE.COM"),
        (3, "CY@EXAMPLE.COM"),
    ]
    after = dict(con.execute("SELECT patient_id, rowid FROM marts.people").fetchall())
    # Bob's row was left where it was (a rewrite would have renumbered it); Ann's changed row
    # and Cy's new one were appended.
    assert after[2] == before[2]
    assert after[1] > before[2] and after[3] > before[2]
    assert rows(con, "segments.everyone") == [(1,), (2,), (3,)]


@pytest.mark.parametrize(
    "first, second",
    [
        # duplicate rows: a set difference could not tell the copies apart
        (
            "select 1 as x union all select 1 union all select 2",
            "select 1 as x union all select 2 union all select 2",
        ),
        # a column's type changes
        ("select 1 as x", "select 1.5 as x"),
        # columns renamed or reordered
        ("select 1 as x, 2 as y", "select 2 as y, 1 as x"),
        # nested columns (MAP, LIST, STRUCT) are compared by a rewrite
        (
            "select map([1], [2]) as m, [1, 2] as l, {'a': 1} as s",
            "select map([1], [3]) as m, [1, 2] as l, {'a': 1} as s "
            "union all select map([1], [2]), [1], {'a': 2}",
        ),
        # NULLs match NULLs: the unchanged row stays, the new one is added
        (
            "select null::int as x, 'a' as y",
            "select null::int as x, 'a' as y union all select 1, null",
        ),
    ],
)
def test_a_rebuilt_table_holds_exactly_the_models_new_rows(con, tmp_path, first, second):
    sql_dir = write(tmp_path, {"marts/t.sql": first})
    build(con, sql_dir)
    assert rows(con, "marts.t") == sorted(con.execute(first).fetchall(), key=repr)
    write(tmp_path, {"marts/t.sql": second})
    build(con, sql_dir)
    assert rows(con, "marts.t") == sorted(con.execute(second).fetchall(), key=repr)
    expected = [tuple(d[:2]) for d in con.execute(second).description]
    got = [tuple(d[:2]) for d in con.execute("SELECT * FROM marts.t").description]
    assert got == expected


def test_a_failed_build_leaves_a_rebuilt_table_as_it_was(con, tmp_path):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    con.execute('UPDATE raw.patients SET payload = \'{"email": "ann2@example.com"}\' WHERE id = 1')
    # A data test over raw rows blames no model: the whole build is rolled back.
    write(tmp_path, {"tests/z_broken.sql": "select id from raw.patients"})
    with pytest.raises(models.BuildFailed):
        build(con, sql_dir)
    assert rows(con, "marts.people") == [(1, "ANN@EXAMPLE.COM"), (2, "BOB@EXAMPLE.COM")]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0


def test_a_file_read_before_in_this_process_is_not_parsed_again_unless_its_text_changed(
    con, tmp_path, monkeypatch
):
    """The fast lane builds after each booking, in the tick's process: each file's parse (its
    one SELECT, the tables it reads) is kept by its text. An edited file is read afresh, and a
    broken one is refused every time."""
    from tasks.models import project

    sql_dir = write(tmp_path, GOOD)
    models.discover(con, sql_dir)
    parsed = []
    real = project.tables_read
    monkeypatch.setattr(project, "tables_read", lambda *a: parsed.append(a[1]) or real(*a))

    assert models.discover(con, sql_dir).model("marts.people").depends_on == ("staging.people",)
    assert parsed == [], "unchanged files were parsed again"

    write(tmp_path, {"marts/people.sql": "select patient_id from staging.people, raw.patients"})
    people = models.discover(con, sql_dir).model("marts.people")
    assert people.depends_on == ("raw.patients", "staging.people")
    assert parsed == ["sql/marts/people.sql"]

    write(tmp_path, {"marts/people.sql": "select patient_id from people"})
    for _ in range(2):
        with pytest.raises(models.ModelError, match="without a schema"):
            models.discover(con, sql_dir)


@pytest.mark.parametrize(
    "broken",
    [
        {"segments/loop.sql": "select patient_id from segments.loop"},  # reads itself
        {
            "segments/loop.sql": "select patient_id from segments.back",
            "segments/back.sql": "select patient_id from segments.loop",
        },
    ],
)
def test_a_cycle_of_segments_holds_only_them_and_their_readers(con, tmp_path, broken):
    """A segment that read itself (an analyst's typo) failed the whole build: the tick then
    held every trigger, reminders included, and `relay preview segment` and `relay models
    test` refused every other segment. The files in the cycle are held like any broken file;
    the rest of the project is built."""
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    write(tmp_path, broken)
    write(tmp_path, {"segments/after.sql": "select patient_id from segments.loop"})
    con.execute(
        'INSERT INTO raw.patients VALUES (3, NULL, \'{"email": "cy@example.com"}\', now(), NULL)'
    )
    with pytest.raises(models.PartialBuild, match="sql/segments/loop.sql: .*cycle") as held:
        build(con, sql_dir)
    assert "sql/segments/loop.sql -> " in str(held.value)
    assert count(con, "segments.everyone") == 3  # built: it reads nothing in the cycle
    latest = models.latest_build(con)
    assert latest["status"] == "succeeded"
    assert set(latest["held"]) == {f"segments.{Path(f).stem}" for f in broken} | {"segments.after"}
    models.require_good_build(con, ["segments.everyone", "marts.people"])
    with pytest.raises(Exception, match="segments.loop not rebuilt"):
        models.require_good_build(con, ["segments.loop"])
    assert models.run_tests(con, sql_dir) == {}


def test_a_failing_models_first_pass_does_not_say_the_whole_build_waits(con, tmp_path):
    """Run as Prefect tasks (flows/models.py), a broken segment's task failed with 'The build
    (...) was rolled back: every model is still the last good version, and planning/sending
    will wait for a good build', then the build ran again without it and committed the rest:
    the red task in the UI said the opposite of what happened."""

    class Recorded(models.Steps):  # what a model's task run shows when it fails
        said: list[str] = []

        def model(self, run, model, upstream):
            try:
                return super().model(run, model, upstream)
            except models.BuildFailed as exc:
                self.said.append(str(exc))
                raise

    sql_dir = write(tmp_path, {**GOOD, "segments/broken.sql": "select nope from marts.people"})
    with pytest.raises(models.PartialBuild):
        build(con, sql_dir, steps=Recorded())
    assert len(Recorded.said) == 1 and "sql/segments/broken.sql" in Recorded.said[0]
    assert "planning/sending will wait" not in Recorded.said[0]
    assert "runs again" in Recorded.said[0] and "segments.broken" in Recorded.said[0]
    assert count(con, "segments.everyone") == 2  # the rest was built and committed


def test_a_marts_patients_that_cannot_be_read_when_a_build_starts_fails_nothing():
    """Who is in marts.patients is kept before the build's transaction (to tell who left it):
    a view its held file left behind, reading what is gone, fails only that statement."""
    from tasks.models import shape
    from tasks.warehouse import memory_db

    con = memory_db()
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    con.execute("CREATE TABLE marts.people_gone (patient_id BIGINT)")
    con.execute("CREATE VIEW marts.patients AS SELECT patient_id FROM marts.people_gone")
    assert shape.remember_patients(con) is True
    con.execute("DROP TABLE marts.people_gone")
    assert shape.remember_patients(con) is False
    con.execute("BEGIN TRANSACTION")
    assert con.execute("SELECT 1").fetchone() == (1,)  # the transaction is usable
    con.execute("COMMIT")
