"""How a model's new rows reach its table, inside the build's transaction: by difference, so a
build writes what changed rather than every row again.

- ``merge``: an incremental model's (changed-only) selection replaces the rows with its keys.
- ``replace_changed_rows``: an existing table loses the rows that went and gains the rows that
  came (rewritten in full when a set difference cannot tell: see its docstring).
- ``check_shape`` / ``check_unique``: what the rest of the system relies on (key columns, one row
  per patient in a segment); they raise DuckDB errors, which the runner reports with the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import duckdb

from tasks.models.project import Model, Project
from tasks.warehouse import one

# Column types a row-by-row comparison leaves to a full rewrite.
_NESTED = re.compile(r"MAP\(|STRUCT\(|UNION\(|\[|\]")


def fingerprint(model: Model, project: Project, settings: Mapping[str, object]) -> str:
    """What an incremental model's rows were computed from: its SQL, the SQL of every model
    upstream of it (a fixed staging model must not leave old rows in a mart) and the value of
    each clinic setting (state.build_context's columns: ``settings``) that SQL names, e.g. the
    country (how phones are read) or the tag categories. A different fingerprint rebuilds the
    model in full."""
    models = {m.relation: m for m in project.models}
    seen, todo = set(), [model.relation]
    while todo:
        relation = todo.pop()
        if relation in seen:
            continue
        seen.add(relation)
        todo.extend(d for d in models[relation].depends_on if d in models)
    text = "\n".join(models[r].sql for r in sorted(seen))
    named = {k: v for k, v in sorted(settings.items()) if re.search(rf"\b{k}\b", text)}
    return hashlib.sha256(f"{text}\n{named!r}".encode()).hexdigest()


def merge(con: duckdb.DuckDBPyConnection, model: Model, rel: str) -> None:
    """Replace the rows whose key the model's (changed-only) selection returns. Idempotent:
    a crash before COMMIT leaves the previous rows, and the next build selects again."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE relay_delta AS {model.sql}")
    check_unique(con, "relay_delta", model.key)
    match = " AND ".join(f't."{c}" IS NOT DISTINCT FROM d."{c}"' for c in model.key)
    columns = ", ".join(f'"{c}"' for c in model.key)
    con.execute(
        f"DELETE FROM {rel} t USING (SELECT DISTINCT {columns} FROM relay_delta) d WHERE {match}"
    )
    con.execute(f"INSERT INTO {rel} BY NAME SELECT * FROM relay_delta")
    con.execute("DROP TABLE relay_delta")


def replace_changed_rows(con: duckdb.DuckDBPyConnection, model: Model, rel: str) -> None:
    """Bring an existing table to the model's new rows by deleting the rows that went and
    inserting the rows that came, instead of rewriting it: most builds change a handful of
    rows in each list and segment, and rewriting ~20 tables of 100,000 rows every build made
    the commit's checkpoint the largest part of a small rebuild. The table holds the same
    rows either way (its physical order may differ; models have no order). The table is
    rewritten instead when the columns or their types changed, a column is nested (MAP,
    LIST, STRUCT...), or either side has duplicate rows (a set difference cannot tell
    copies apart)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE relay_new AS {model.sql}")
    try:
        temp = _columns(con, "relay_new")
        if (
            not temp
            or temp != _columns(con, rel)
            or any(_NESTED.search(t) for _, t in temp)
            or _has_duplicate_rows(con, "relay_new")
            or _has_duplicate_rows(con, rel)
        ):
            con.execute(f"CREATE OR REPLACE TABLE {rel} AS SELECT * FROM relay_new")
            return
        same = " AND ".join(f'o."{c}" IS NOT DISTINCT FROM n."{c}"' for c, _ in temp)
        con.execute(
            f"DELETE FROM {rel} WHERE rowid IN "
            f"(SELECT o.rowid FROM {rel} o ANTI JOIN relay_new n ON {same})"
        )
        con.execute(f"INSERT INTO {rel} SELECT n.* FROM relay_new n ANTI JOIN {rel} o ON {same}")
    finally:
        con.execute("DROP TABLE relay_new")


def _has_duplicate_rows(con: duckdb.DuckDBPyConnection, rel: str) -> bool:
    return one(
        con,
        f"SELECT (SELECT count(*) FROM {rel}) <> (SELECT count(*) FROM "
        f"(SELECT DISTINCT * FROM {rel}))",
    )[0]


def _columns(con: duckdb.DuckDBPyConnection, rel: str) -> list[tuple[str, str]]:
    """A table's columns and their types, in order (from a query's description: a fraction
    of the cost of information_schema)."""
    description = con.execute(f"SELECT * FROM {rel} LIMIT 0").description
    return [(d[0], str(d[1])) for d in description]


def check_shape(con: duckdb.DuckDBPyConnection, model: Model, rel: str) -> None:
    """What the rest of the system relies on: key columns exist; a segment has one row per
    patient_id."""
    needed = list(model.key) + (["patient_id"] if model.schema == "segments" else [])
    if not needed:
        return
    columns = {r[0] for r in con.execute(f"SELECT name FROM pragma_table_info('{rel}')").fetchall()}
    for column in needed:
        if column not in columns:
            raise duckdb.BinderException(
                f"the model must return a column named {column}"
                + (" (one row per patient in the segment)" if model.schema == "segments" else "")
            )
    if model.schema == "segments":
        check_unique(con, rel, ("patient_id",), "a segment has one row per patient")


def check_unique(
    con: duckdb.DuckDBPyConnection, rel: str, key: tuple[str, ...], why: str = ""
) -> None:
    columns = ", ".join(f'"{c}"' for c in key)
    duplicates = one(
        con, f"SELECT count(*) FROM (SELECT {columns} FROM {rel} GROUP BY ALL HAVING count(*) > 1)"
    )[0]
    if duplicates:
        raise duckdb.ConstraintException(
            f"{duplicates} value(s) of {'+'.join(key)} appear on more than one row; "
            + (why or "the key must be unique")
        )
