"""The data tests a build runs, and over which rows.

``tests_to_run``: a test that passed on the tables of the last commit with this SQL (its
fingerprint: ``keep_test_fingerprints``) and does not read the clock passes again, without
running, when everything it reads is a model this build left unchanged.

``count_failures``: such a test that reads one model table alone, row by row (DuckDB's plan is
a scan of that table, filters and projections: each row it returns comes from one row of the
table, whatever the others hold), can now return only rows this build put in the table: every
other row was there at the last commit, where it returned none. An incremental merge keeps
those rows (``tables.ModelTables.came``), so the test runs over them instead of the table: the
ten thousand appointments a 5-minute build recomputed instead of 2,000,000. When they hold an
offending row, the test runs over the whole table again, so a failing test counts and says
what it always did. Anything else (a join, a GROUP BY, a subquery, a test that failed or is
new or edited, a full refresh, a table rewritten in full) runs over every row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb

from tasks.models import tables
from tasks.models.project import DataTest, ModelError
from tasks.warehouse import duckdb_message, one

# Plan operators that return rows of their input one by one (a subset, each at most once).
_ROW_BY_ROW = {"PROJECTION", "FILTER"}
_SCANS = {"SEQ_SCAN", "TABLE_SCAN"}


def count_failures(
    con: duckdb.DuckDBPyConnection,
    test: DataTest,
    fingerprints: tables.Fingerprints | None = None,
    known: tables.ModelTables | None = None,
) -> int:
    """How many rows ``test`` returns (its offending rows): over the rows this build wrote when
    that tells (none), else over every row. ``fingerprints`` and ``known``: the build's
    (None: outside a build, every row). A test that cannot run raises ModelError naming it."""
    try:
        sql = _over_new_rows(con, test, fingerprints, known) if fingerprints and known else None
        if sql is not None and not one(con, f"SELECT count(*) FROM ({sql}\n)")[0]:
            return 0
        return one(con, f"SELECT count(*) FROM ({test.sql}\n)")[0]
    except duckdb.Error as exc:
        raise ModelError(f"{test.file}: {duckdb_message(exc, test.sql)}") from None


class TogetherFailed(Exception):
    """The data tests run in one statement (``count_together``) met an error, which does not
    say whose and leaves the transaction unusable: the build runs again, testing one at a time,
    which names the test."""


def count_together(
    con: duckdb.DuckDBPyConnection,
    tests: list[DataTest],
    fingerprints: tables.Fingerprints,
    known: tables.ModelTables,
) -> dict[str, int]:
    """``count_failures`` of each of ``tests`` (test file -> count), in one statement: DuckDB
    runs its independent subqueries side by side, so tests that each scan a table on one thread
    (a list, marts.patients) share the cores, where one at a time left one idle (a 5-minute
    build's tests, ~60 ms: ~15 ms less, bench models). A test counted over the rows this build
    wrote and failing there is counted again over every row, as count_failures does. Any error
    raises TogetherFailed. Fewer than two tests: nothing to share ({})."""
    if len(tests) < 2:
        return {}
    new = [_over_new_rows(con, test, fingerprints, known) for test in tests]
    counts = ", ".join(
        f"(SELECT count(*) FROM ({sql or test.sql}\n))"
        for sql, test in zip(new, tests, strict=True)
    )
    try:
        together = one(con, f"SELECT {counts}")
        return {
            test.file: one(con, f"SELECT count(*) FROM ({test.sql}\n)")[0]
            if count and sql is not None
            else count
            for count, sql, test in zip(together, new, tests, strict=True)
        }
    except duckdb.Error:
        raise TogetherFailed from None


def _over_new_rows(
    con: duckdb.DuckDBPyConnection,
    test: DataTest,
    fingerprints: tables.Fingerprints,
    known: tables.ModelTables,
) -> str | None:
    """``test``'s SQL reading the rows this build put in the one table it reads, instead of
    the table, when its verdict over them is its verdict over the table; else None."""
    if len(test.depends_on) != 1 or test.depends_on[0] not in known.came:
        return None
    if not _passed_last(fingerprints, test):
        return None
    relation, temp = test.depends_on[0], known.came[test.depends_on[0]]
    try:
        tree = _tree(con, test.sql)
        named = list(_base_tables(tree))
        if len(named) != 1 or not _row_by_row(con, test.sql, relation):
            return None
        node = named[0]
        if node["catalog_name"] or f"{node['schema_name']}.{node['table_name']}" != relation:
            return None
        # The table's name (and alias) in the text, replaced by the temporary table under the
        # name the SQL reads it by; the parse tree must come out the same but for that table.
        start, end = node["query_location"], node["query_location"] + node["query_location_length"]
        text = test.sql.encode()
        alias = (node["alias"] or node["table_name"]).replace('"', '""')
        sql = (text[:start] + f'{temp} AS "{alias}"'.encode() + text[end:]).decode()
        again = _tree(con, sql)
        swapped = list(_base_tables(again))
        if (
            len(swapped) != 1
            or (swapped[0]["schema_name"], swapped[0]["table_name"]) != ("", temp)
            or swapped[0]["alias"] != (node["alias"] or node["table_name"])
            or _plain(tree) != _plain(again)
        ):
            return None
    except (duckdb.Error, KeyError, TypeError, ValueError):
        return None
    return sql


def _tree(con: duckdb.DuckDBPyConnection, sql: str) -> dict:
    tree = json.loads(one(con, "SELECT json_serialize_sql(?)", [sql])[0])
    if tree.get("error") or len(tree["statements"]) != 1:
        raise ValueError("not one statement")
    return tree


def _base_tables(node: object) -> Iterator[dict]:
    """Every table the parse tree names (BASE_TABLE nodes)."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE":
            yield node
        for value in node.values():
            yield from _base_tables(value)
    elif isinstance(node, list):
        for value in node:
            yield from _base_tables(value)


def _plain(node: object) -> object:
    """The parse tree without where things are in the text, and without the tables it names."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE":
            return "table"
        return {k: _plain(v) for k, v in node.items() if not k.startswith("query_location")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _row_by_row(con: duckdb.DuckDBPyConnection, sql: str, relation: str) -> bool:
    """Whether DuckDB's plan for ``sql`` is filters and projections over one scan of
    ``relation``: each row it returns is computed from one row of the table alone."""
    plan = json.loads(con.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()[0][1])
    operators = list(_operators(plan))
    scans = [o for o in operators if o.get("name") in _SCANS]
    return (
        len(scans) == 1
        and all(o.get("name") in _ROW_BY_ROW | _SCANS for o in operators)
        and str(scans[0].get("extra_info", {}).get("Table", "")).endswith(f".{relation}")
    )


def _operators(plan: object) -> Iterator[dict]:
    for node in plan if isinstance(plan, list) else [plan]:
        if isinstance(node, dict):
            yield node
            yield from _operators(node.get("children", []))


def tests_to_run(
    fingerprints: tables.Fingerprints, tests: list[DataTest], unchanged: set[str]
) -> list[DataTest]:
    """The data tests a build must run: a test passes again, without running, when it passed
    on the tables of the last commit (its fingerprint is there: ``keep_test_fingerprints``)
    with this SQL, and reads only models this build left unchanged (and not the clock). On a
    tick where nothing changed, that is most tests, and they are the ones that scan whole
    tables."""
    return [
        t
        for t in tests
        if not _passed_last(fingerprints, t) or not all(d in unchanged for d in t.depends_on)
    ]


def keep_test_fingerprints(
    fingerprints: tables.Fingerprints, every: tuple[DataTest, ...], passed: list[DataTest]
) -> None:
    """At the commit: the tests that passed on this build's tables (ran, or needed not) keep a
    fingerprint of their SQL; every other test (skipped: it reads a held model, or broken)
    loses it, so it runs again next time whatever changed. Only what changed is written (on
    most builds, nothing)."""
    kept = {t.file for t in passed}
    fingerprints.forget(t.file for t in every if t.file not in kept)
    for test in passed:
        fingerprints.keep(test.file, tables._sha(test.sql))


def _passed_last(fingerprints: tables.Fingerprints, test: DataTest) -> bool:
    """Whether ``test`` passed on the tables of the last commit with this SQL, and its verdict
    does not move with the clock, a variable or chance."""
    return fingerprints.get(test.file) == tables._sha(test.sql) and not tables._volatile(test.sql)
