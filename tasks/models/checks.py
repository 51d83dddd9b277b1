"""Running a data test over the rows a build wrote, when that gives the test's verdict.

A data test that passed on the tables of the last commit, with this SQL (its fingerprint:
``tables.keep_test_fingerprints``; not reading the clock), and reads one model table alone, row
by row (its plan is a scan of that table, filters and projections: each row it returns comes
from one row of the table, whatever the others hold), returns now only rows of the rows this
build put in that table: every other row was there at the last commit, where it returned
none. An incremental merge knows those rows (``tables.ModelTables.came``), so the test runs
over them instead of the whole table: the few thousand appointments a 5-minute build
recomputed instead of 2,000,000. When they hold an offending row, the test runs over the whole
table again, so a failing test counts and says what it always did. Anything else (a join, a
GROUP BY, a subquery, a test that failed or changed, a full refresh, a table rewritten in full)
runs over every row, as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb

from tasks.models import tables
from tasks.models.project import DataTest
from tasks.warehouse import one

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
    (None: outside a build, every row)."""
    sql = _over_new_rows(con, test, fingerprints, known) if fingerprints and known else None
    if sql is not None and not one(con, f"SELECT count(*) FROM ({sql})")[0]:
        return 0
    return one(con, f"SELECT count(*) FROM ({test.sql})")[0]


def _over_new_rows(
    con: duckdb.DuckDBPyConnection,
    test: DataTest,
    fingerprints: tables.Fingerprints,
    known: tables.ModelTables,
) -> str | None:
    """``test``'s SQL reading the rows this build put in the one table it reads, instead of
    the table, when its verdict over them is its verdict over the table; else None."""
    if (
        len(test.depends_on) != 1
        or test.depends_on[0] not in known.came
        or fingerprints.get(test.file) != tables._sha(test.sql)
        or tables._volatile(test.sql)
    ):
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
