"""A table model brought to its new rows by difference (tasks/models/tables.py
``replace_changed_rows``): the table must hold exactly the model's rows, copies included, build
after build, while the build asks as little as it can (what it proved when it wrote a table)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.models import runner as models
from tasks.models import tables
from tasks.warehouse import memory_db

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@pytest.fixture
def con():
    c = memory_db()
    yield c
    c.close()


def values(*rows: str) -> str:
    return "select * from (values " + ", ".join(f"('{r}')" for r in rows) + ") t(x)"


def build_rows(con, tmp_path, sql: str) -> models.BuildResult:
    path = tmp_path / "sql" / "marts" / "t.sql"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql)
    return models.build(con, models.ListSettings(), sql_dir=tmp_path / "sql", now=NOW)


def table(con) -> list[str]:
    return sorted(r[0] for r in con.execute("SELECT x FROM marts.t").fetchall())


def distinct(con) -> bool:
    found = con.execute("SELECT count(*) FROM state.distinct_model_tables WHERE model = 't'")
    assert found.fetchone()[0] == 0  # keyed by relation, not by name
    return bool(
        con.execute(
            "SELECT count(*) FROM state.distinct_model_tables WHERE model = 'marts.t'"
        ).fetchone()[0]
    )


@pytest.mark.parametrize(
    "builds",
    [
        # a row that stays gains a copy: old - went == new - came fails, the table is rewritten
        [("v", "w"), ("v", "v", "w")],
        # ... and the rewrite forgets that the rows were distinct: the next build asks again (a
        # table taken as distinct here would keep v twice: no row went or came)
        [("v", "w"), ("v", "v", "w"), ("v", "w", "w")],
        # the rows that came hold a copy: the table is not remembered as distinct
        [("v",), ("v", "w", "w"), ("v", "v", "w")],
        # plain changes, by difference each time
        [("v", "w"), ("v", "x"), ("v", "x", "y"), ()],
    ],
)
def test_a_table_holds_exactly_the_models_rows_copies_included(con, tmp_path, builds):
    for rows in builds:
        sql = values(*rows) if rows else "select 'v' as x where false"
        result = build_rows(con, tmp_path, sql)
        assert table(con) == sorted(rows), f"after the build of {rows}"
        assert result.rows["marts.t"] == len(rows)
        if len(set(rows)) < len(rows):
            assert not distinct(con)
        # the temporary tables a model leaves for the next to replace are gone at the commit
        assert (
            con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0
        )


def test_a_table_proven_distinct_is_not_asked_again(con, tmp_path, monkeypatch):
    asked: list[str] = []
    real = tables._has_duplicate_rows
    monkeypatch.setattr(
        tables, "_has_duplicate_rows", lambda c, rel: asked.append(rel) or real(c, rel)
    )
    build_rows(con, tmp_path, values("v", "w"))  # created: nothing proven
    assert not distinct(con)
    build_rows(con, tmp_path, values("v", "x"))
    assert asked == ['"marts"."t"'], "the first build by difference asks about the old rows"
    assert distinct(con)
    asked.clear()
    build_rows(con, tmp_path, values("v", "x", "y"))
    build_rows(con, tmp_path, values("x", "y"))
    assert asked == [] and table(con) == ["x", "y"] and distinct(con)


def test_what_a_partial_build_holds_loses_its_fingerprint_and_the_rest_keep_theirs(con, tmp_path):
    """A held incremental model missed the changes the build read (rebuilt in full next time);
    a data test reading a held model did not run (it runs next time); the rest keep theirs."""
    incremental = (
        "-- config: materialized=incremental, key=x\n"
        "select x from staging.base where getvariable('changes_since') is null or true"
    )
    files = {
        "staging/base.sql": values("v", "w"),
        "marts/inc.sql": incremental,
        "marts/other.sql": values("a"),
        "tests/base_has_rows.sql": "select 1 from marts.inc where false",
        "tests/other_has_rows.sql": "select 1 from marts.other where false",
    }
    for name, sql in files.items():
        path = tmp_path / "sql" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
    models.build(con, models.ListSettings(), sql_dir=tmp_path / "sql", now=NOW)
    kept = "SELECT model FROM state.model_fingerprints ORDER BY 1"
    before = [r[0] for r in con.execute(kept).fetchall()]
    assert {"marts.inc", "sql/tests/base_has_rows.sql", "sql/tests/other_has_rows.sql"} <= set(
        before
    )
    (tmp_path / "sql" / "staging" / "base.sql").write_text("select error('broken') as x")
    with pytest.raises(models.PartialBuild):
        models.build(con, models.ListSettings(), sql_dir=tmp_path / "sql", now=NOW)
    after = [r[0] for r in con.execute(kept).fetchall()]
    gone = {"marts.inc", "sql/tests/base_has_rows.sql", "staging.base"}
    assert after == [m for m in before if m not in gone]


def test_a_full_refresh_asks_again_what_a_table_changed_by_hand_holds(con, tmp_path):
    """Only builds write model tables; after a table is changed by hand, ``--full-refresh``
    brings it to the model's rows (the remembered 'no copies' is not trusted)."""
    build_rows(con, tmp_path, values("v", "w"))
    build_rows(con, tmp_path, values("v", "x"))
    assert distinct(con)
    con.execute("INSERT INTO marts.t VALUES ('v')")  # by hand: v twice
    path = tmp_path / "sql" / "marts" / "t.sql"
    path.write_text(values("v", "x", "x"))
    models.build(con, models.ListSettings(), sql_dir=tmp_path / "sql", now=NOW, full_refresh=True)
    assert table(con) == ["v", "x", "x"]
