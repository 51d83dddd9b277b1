"""A build's process reads the project's parses back from the clinic database (state.parsed_sql)
instead of parsing every file again (issue 16: every tick is a new process). A stored parse is
only ever used for the very text it was made from."""

from __future__ import annotations

import pytest

from tasks.models import project
from tasks.models import runner as models
from tasks.warehouse import memory_db
from tests.unit.models.test_runner import GOOD, build, write


@pytest.fixture
def con():
    c = memory_db()
    yield c
    c.close()


@pytest.fixture
def parsed(monkeypatch):
    """The SQL each discover() had DuckDB parse, as a new process starts (nothing in memory)."""
    seen: list[str] = []
    parse = project.tables_read

    def tables_read(con, file, sql, tree=None):
        seen.append(file)
        return parse(con, file, sql, tree)

    monkeypatch.setattr(project, "tables_read", tables_read)
    new_process(monkeypatch, seen)
    return seen


def new_process(monkeypatch, seen: list[str]) -> None:
    monkeypatch.setattr(project, "_PARSE_MEMO", {})
    monkeypatch.setattr(project, "_UNSTORED", set())
    seen.clear()


def test_the_next_process_reads_the_parses_a_build_stored(con, tmp_path, parsed, monkeypatch):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    assert sorted(parsed) == sorted(f"sql/{name}" for name in GOOD)
    first = project.discover(con, sql_dir)

    new_process(monkeypatch, parsed)
    again = project.discover(con, sql_dir)
    assert parsed == []
    assert again.models == first.models
    assert not again.parsed_now
    build(con, sql_dir)  # nothing new parsed: nothing written
    assert con.execute("SELECT count(*) FROM state.parsed_sql").fetchone()[0] == len(GOOD)


def test_an_edited_file_is_parsed_again_and_its_new_tables_are_read(
    con, tmp_path, parsed, monkeypatch
):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    edited = {"segments/everyone.sql": "select patient_id from staging.people"}
    write(tmp_path, edited)

    new_process(monkeypatch, parsed)
    found = project.discover(con, sql_dir)
    assert parsed == ["sql/segments/everyone.sql"]
    assert found.model("segments.everyone").depends_on == ("staging.people",)
    build(con, sql_dir)  # stores the edited file's parse, and drops the old one's
    keys = {r[0] for r in con.execute("SELECT key FROM state.parsed_sql").fetchall()}
    texts = {**GOOD, **edited}
    assert keys == {project._parse_key(t) for t in texts.values()}


def test_a_rolled_back_build_stores_nothing_and_the_next_build_stores_them(
    con, tmp_path, parsed, monkeypatch
):
    sql_dir = write(tmp_path, GOOD)
    project.discover(con, sql_dir)  # reading the project writes nothing
    assert stored(con) == 0

    def interrupted(self, run):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(models.Steps, "finish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build(con, sql_dir)
    assert stored(con) == 0
    build(con, sql_dir)  # the same process: what it parsed is stored now
    assert stored(con) == len(GOOD)
    assert not project.discover(con, sql_dir).parsed_now  # not written again by every build


def stored(con) -> int:
    return con.execute("SELECT count(*) FROM state.parsed_sql").fetchone()[0]


def test_a_new_version_of_the_parser_reads_no_stored_parse(con, tmp_path, parsed, monkeypatch):
    sql_dir = write(tmp_path, GOOD)
    build(con, sql_dir)
    new_process(monkeypatch, parsed)
    monkeypatch.setattr(project, "_PARSER", "another version of tables_read")
    project.discover(con, sql_dir)
    assert sorted(parsed) == sorted(f"sql/{name}" for name in GOOD)
