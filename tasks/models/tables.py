"""How a model's new rows reach its table, inside the build's transaction: by difference, so a
build writes what changed rather than every row again.

- ``merge``: an incremental model's (changed-only) selection replaces the rows with its keys.
- ``replace_changed_rows``: an existing table loses the rows that went and gains the rows that
  came (rewritten in full when a set difference cannot tell: see its docstring).
- ``ModelTables``: what the build knows of each model table (columns, rows, whether its rows
  are all distinct), read once when it starts and kept as it writes them.
- ``data_high_water``: the newest raw write a build reads (the next one merges what came after).
- ``reads_no_change``: what a build leaves as it was (``same_view``, ``same_table``, ``merge``;
  a data test's verdict: tasks/models/checks.py).

What the rest of the system relies on of a model's rows (key columns; a segment's one row per
patient, each a patient) is checked by ``tasks.models.shape``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime

import duckdb

from tasks.cliniko.resources import RESOURCES
from tasks.models import functions as models_functions
from tasks.models.project import MODEL_SCHEMAS, DataTest, Model, Project
from tasks.models.shape import BEFORE, CAME, check_came, check_shape, check_unique
from tasks.models.shape import read_columns as _columns
from tasks.warehouse import duckdb_message, one

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
    words = set().union(*(_words(models[r].sql) for r in seen))  # \bname\b, one pass a file
    named = {k: v for k, v in sorted(settings.items()) if k in words}
    return hashlib.sha256(f"{text}\n{named!r}".encode()).hexdigest()


@functools.lru_cache(maxsize=512)
def _words(sql: str) -> frozenset[str]:
    """The words (runs of \\w) of a model's SQL: a setting named in it is one of them. Each
    model's SQL is read once a process, not once per model downstream of it."""
    return frozenset(re.findall(r"\w+", sql))


def merge(
    con: duckdb.DuckDBPyConnection,
    model: Model,
    rel: str,
    known: ModelTables,
    note: Callable[[str, str], object] | None,
    unchanged: Collection[str],
) -> bool:
    """Replace the rows whose key the model's (changed-only) selection returns (a row whose
    ``delete_if_null`` column is NULL only removes); the rows replaced are read before the DELETE
    for changed_values and ``note`` (an audience's: tasks/models/membership.py). Idempotent: a
    crash before COMMIT leaves the previous rows. Returns whether the selection had any row.
    Not run when it ``reads_no_change``: no changes (each was 3-17 ms of planning)."""
    if reads_no_change(model, unchanged):
        return False
    if not one(con, f"CREATE OR REPLACE TEMP TABLE relay_delta AS {model.sql}")[0]:
        return False
    check_unique(con, "relay_delta", model.key)
    match = " AND ".join(f't."{c}" IS NOT DISTINCT FROM d."{c}"' for c in model.key)
    table_columns = known.columns.get(model.relation) or _columns(con, rel)
    # The rows to replace, found in one pass over the table (by rowid), with the patients they
    # move away from (replaced_patients, tasks/models/functions.py): a DELETE ... USING and a
    # join for those patients read every row of a 2M-row table twice; a DELETE ... RETURNING
    # cost 4-5 times the DELETE.
    moved = model.key != ("patient_id",) and "patient_id" in {c for c, _ in table_columns}
    patients = ", t.patient_id AS old, d.patient_id AS new" if moved else ""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE relay_went AS SELECT t.rowid AS relay_rowid{patients} "
        f"FROM {rel} t JOIN relay_delta d ON {match}"
    )
    if moved:
        con.execute(
            "INSERT INTO relay_replaced SELECT DISTINCT ?, old FROM relay_went "
            "WHERE old IS NOT NULL AND old IS DISTINCT FROM new",
            [model.relation],
        )
    old = f"(SELECT * FROM {rel} WHERE rowid IN (SELECT relay_rowid FROM relay_went))"
    models_functions.keep_changed_values(con, model.relation, known.asked, old, "relay_delta")
    if model.delete_if_null:  # a row that only deletes its key's row is not put in
        con.execute(f'DELETE FROM relay_delta WHERE "{model.delete_if_null}" IS NULL')
    if note is not None:
        note(old, "relay_delta")
    went = one(con, f"DELETE FROM {rel} WHERE rowid IN (SELECT relay_rowid FROM relay_went)")[0]
    came = one(con, f"INSERT INTO {rel} BY NAME SELECT * FROM relay_delta")[0]
    rows = known.rows[model.relation] - went + came
    known.wrote(model.relation, known.columns.get(model.relation), rows)
    known.keep_came(con, model.relation, came, table_columns)
    return True


# relay_diff's rows (replace_changed_rows): those the table lost carry their rowid in it.
_WENT = "(SELECT * EXCLUDE (relay_rowid) FROM relay_diff WHERE relay_rowid IS NOT NULL)"
_CAME = "(SELECT * EXCLUDE (relay_rowid) FROM relay_diff WHERE relay_rowid IS NULL)"


def replace_changed_rows(
    con: duckdb.DuckDBPyConnection,
    model: Model,
    rel: str,
    known: ModelTables,
    note: Callable[[str, str], object] | None = None,
) -> bool:
    """Bring an existing table to the model's new rows by deleting the rows that went and
    inserting the rows that came, instead of rewriting it: most builds change a handful of rows
    in each list and segment, and rewriting ~20 tables of 100,000 rows every build made the
    commit's checkpoint most of a small rebuild. The same rows either way (models have no order).

    One pass finds both (a full outer join on every column: half the cost of one anti join
    each way). A set difference cannot tell copies apart, so it needs the table's rows all
    distinct (``ModelTables.distinct``: proven when they were written) and no row that stays
    with a copy among the new rows: with distinct old rows, that is exactly "the rows that
    stay are as many on both sides" (old - went == new - came), arithmetic on counts the
    statements return; the new rows are then distinct when the rows that came are. The table
    is rewritten instead when that fails, the columns or their types changed, a column is
    nested (MAP, LIST, STRUCT...) or the old rows have copies. ``note(went, came)``: told the
    rows that went and came (relations, before the temporary table holding them is dropped),
    when the table was brought by difference, not rewritten. The new rows pass
    ``check_shape`` first. Returns whether a row went or came (False: the table is as it
    was). The temporary tables stay until the next model replaces them and the build's end
    (``ModelTables.finish``) drops them: a statement each instead of three a model."""
    relation = model.relation
    rows = one(con, f"CREATE OR REPLACE TEMP TABLE relay_new AS {model.sql}")[0]
    temp = _columns(con, "relay_new")
    check_shape(con, model, "relay_new", temp, unique=False)  # unique: below
    if (
        not temp
        or temp != known.columns.get(relation)
        or any(_NESTED.search(t) for _, t in temp)
        or not known.is_distinct(con, model, rel)
    ):
        return _rewrite(con, model, rel, known, temp, rows)
    same = " AND ".join(f'o."{c}" IS NOT DISTINCT FROM n."{c}"' for c, _ in temp)
    values = ", ".join(f'coalesce(o."{c}", n."{c}") AS "{c}"' for c, _ in temp)
    changed = one(
        con,
        f"CREATE OR REPLACE TEMP TABLE relay_diff AS SELECT o.rowid AS relay_rowid, {values} "
        f"FROM {rel} o FULL JOIN relay_new n ON {same} WHERE o.rowid IS NULL OR n.rowid IS NULL",
    )[0]
    # The rows that came are inserted first: what that returns tells how many went. (Rows
    # inserted in a transaction take rowids no committed row has: the delete is by old rowid.)
    came = one(con, f"INSERT INTO {rel} SELECT * FROM {_CAME}")[0] if changed else 0
    went = changed - came
    if went:
        con.execute(f"DELETE FROM {rel} WHERE rowid IN (SELECT relay_rowid FROM relay_diff)")
    if known.rows[relation] - went != rows - came or (
        came > 1 and model.schema != "segments" and _has_duplicate_rows(con, _CAME)
    ):  # a new row has a copy (a segment's cannot: one row per patient_id)
        return _rewrite(con, model, rel, known, temp, rows)
    if came and model.schema == "segments":
        # The old rows had one per patient, each a patient (checked when written): the rows
        # that came are asked, with every other segment's, when the models are built.
        known.segment_came(con, relation, rel)
    if changed and note is not None:
        note(_WENT, _CAME)
    known.wrote(relation, temp, rows, distinct=True)
    return bool(changed)


def _rewrite(
    con: duckdb.DuckDBPyConnection,
    model: Model,
    rel: str,
    known: ModelTables,
    columns: list[tuple[str, str]],
    rows: int,
) -> bool:
    """The table rewritten from relay_new (whether its rows are distinct is not known)."""
    check_shape(con, model, "relay_new", columns)
    con.execute(f"CREATE OR REPLACE TABLE {rel} AS SELECT * FROM relay_new")
    known.wrote(model.relation, columns, rows)
    return True


def _has_duplicate_rows(con: duckdb.DuckDBPyConnection, rel: str) -> bool:
    """Whether two rows might be copies: fewer distinct row hashes than rows. Copies always
    share a hash, so False is certain; a collision only makes a table be rewritten (what a
    duplicate does), never compared wrongly. A fraction of a DISTINCT * over every column."""
    return one(con, f"SELECT count(*) <> count(DISTINCT hash(t)) FROM {rel} t")[0]


def raw_writes(con: duckdb.DuckDBPyConnection) -> dict[str, datetime | None]:
    """Each raw table's newest write by the sync (a row stored, or marked removed; None when
    it has none), in one query: what ``data_high_water`` and ``raw_unchanged`` read."""
    union = " UNION ALL ".join(
        f"SELECT '{r.table}' AS name, (SELECT max(t) FROM (SELECT max(synced_at) AS t FROM "
        f"{r.table} UNION ALL SELECT max(removed_at) FROM {r.table})) AS written"
        for r in RESOURCES
    )
    return dict(con.execute(union).fetchall())


def data_high_water(
    con: duckdb.DuckDBPyConnection, writes: Mapping[str, datetime | None] | None = None
) -> datetime | None:
    """The newest write the sync made to any raw table (a row stored, or marked removed);
    ``writes``: ``raw_writes``, when read already."""
    written = raw_writes(con) if writes is None else writes
    return max((w for w in written.values() if w is not None), default=None)


def raw_unchanged(
    writes: Mapping[str, datetime | None], since: datetime | None, full_refresh: bool = False
) -> set[str]:
    """The raw tables the sync has not written to (a row stored or marked removed: ``writes``)
    after ``since``, the newest raw write the last good build read: a model reading only these
    and unchanged models computes what it did then. None on a first build or full refresh."""
    if since is None or full_refresh:
        return set()
    return {name for name, written in writes.items() if written is None or written <= since}


class ModelTables:
    """The model tables (and views) as a build finds and leaves them, read when it starts, not
    once per model: what is there, each table's columns and types, its row count (a query
    each) and whether its rows are all distinct (state.distinct_model_tables: proven by the
    build that wrote them; only builds write model tables). Kept up to date as the build
    writes them (``wrote``, ``create``, ``dropped``: every write to a model table goes through
    one, or its counts and columns are wrong); ``finish`` stores the distinct ones."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        full_refresh: bool = False,
        tests: Iterable[DataTest] = (),
        models: Iterable[Model] = (),
    ):
        # relation -> columns (``merge``)
        self.asked = models_functions.changed_values_read(m.sql for m in models)
        # Tables and views of the model schemas: relation -> 'table' or 'view'.
        self.existing: dict[str, str] = {
            f"{schema}.{name}": kind
            for schema, name, kind in con.execute(
                "SELECT schema_name, table_name, 'table' FROM duckdb_tables() "
                "WHERE database_name = current_database() AND schema_name IN $schemas "
                "UNION ALL SELECT schema_name, view_name, 'view' FROM duckdb_views() "
                "WHERE database_name = current_database() AND schema_name IN $schemas "
                "AND NOT internal",
                {"schemas": list(MODEL_SCHEMAS)},
            ).fetchall()
        }
        relations = sorted(r for r, kind in self.existing.items() if kind == "table")
        self.columns: dict[str, list[tuple[str, str]] | None] = {r: [] for r in relations}
        self.rows: dict[str, int] = {}
        if relations:
            for relation, column, kind in con.execute(
                "SELECT schema_name || '.' || table_name, column_name, data_type "
                "FROM duckdb_columns() WHERE database_name = current_database() "
                "AND schema_name || '.' || table_name IN ? ORDER BY 1, column_index",
                [relations],
            ).fetchall():
                self.columns[relation].append((column, kind))  # type: ignore[union-attr]
            counts = " UNION ALL ".join(f"SELECT ?, count(*) FROM {_quoted(r)}" for r in relations)
            self.rows = dict(con.execute(counts, relations).fetchall())
        self.stored = {
            r[0] for r in con.execute("SELECT model FROM state.distinct_model_tables").fetchall()
        }
        # A full refresh trusts nothing remembered: a table changed by hand is compared right.
        self.distinct = set() if full_refresh else self.stored & set(relations)
        # The rows a merge put in a table a data test reads alone: relation -> a temporary
        # table of them (``keep_came``; what tasks/models/checks.py may test instead).
        self.came: dict[str, str] = {}
        self._came_tables: list[str] = []
        alone = {t.depends_on[0] for t in tests if len(t.depends_on) == 1}
        self._alone = set() if full_refresh else alone
        # Segments brought to their new rows by difference, and their table: the rows that
        # came (in shape.CAME) are checked together, by ``check_segments``.
        self._segments_came: list[tuple[str, str]] = []

    def is_distinct(self, con: duckdb.DuckDBPyConnection, model: Model, rel: str) -> bool:
        """Whether the table's rows are all distinct: a segment's (one row per patient_id,
        checked when written), one proven so when written, else asked now."""
        return (
            model.schema == "segments"
            or model.relation in self.distinct
            or not _has_duplicate_rows(con, rel)
        )

    def wrote(
        self,
        relation: str,
        columns: list[tuple[str, str]] | None,
        rows: int,
        distinct: bool = False,
    ) -> None:
        """``relation``'s table now has ``columns`` (None: not known) and ``rows``;
        ``distinct``: proven to hold no two identical rows."""
        self.columns[relation], self.rows[relation] = columns, rows
        (self.distinct.add if distinct else self.distinct.discard)(relation)
        self.came.pop(relation, None)

    def keep_came(
        self, con: duckdb.DuckDBPyConnection, relation: str, came: int, columns: object
    ) -> None:
        """relay_delta holds the ``came`` rows a merge just put in ``relation``'s table: kept
        till the build ends, renamed, when a data test reads that table alone, they are at most
        half of it and they have its ``columns`` (tasks/models/checks.py tests them)."""
        small = relation in self._alone and came * 2 <= self.rows[relation]
        if small and _columns(con, "relay_delta") == columns:
            name = f"relay_came_{len(self._came_tables)}"
            con.execute(f"ALTER TABLE relay_delta RENAME TO {name}")
            self._came_tables.append(name)
            self.came[relation] = name

    def segment_came(self, con: duckdb.DuckDBPyConnection, relation: str, rel: str) -> None:
        """Rows came into segment ``relation``'s table (``rel``) by difference (those of
        relay_diff without an old rowid): their patient ids are kept for ``check_segments``."""
        if not self._segments_came:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {CAME} (relation VARCHAR, patient_id BIGINT)"
            )
        con.execute(
            f"INSERT INTO {CAME} SELECT ?, patient_id FROM relay_diff WHERE relay_rowid IS NULL",
            [relation],
        )
        self._segments_came.append((relation, rel))

    def check_segments(
        self,
        con: duckdb.DuckDBPyConnection,
        project: Project,
        held: Collection[str] = (),
        remembered: bool = False,
    ) -> tuple[str, str, tuple[str]] | None:
        """What a segment promises (one row per patient, each a patient: tasks/models/shape.py)
        asked of the rows that came into each segment brought by difference, all in one
        statement once every model is built (two statements a segment, as each was written,
        were ~50 ms of a 5-minute build); and, when someone left marts.patients in this build
        (``remembered``: shape.remember_patients kept who was there), every segment not
        ``held`` is asked for them. The first failing segment: its file, what is wrong (as the
        build reports a model's error) and the models it holds (itself)."""
        # the build's own record of what is there (no catalog query): read at its start, or
        # written by it since
        patients = "marts.patients" in self.existing or "marts.patients" in self.columns
        every = [
            (m.relation, _quoted(m.relation)) for m in project.segments if m.relation not in held
        ]
        failed = check_came(con, self._segments_came, patients, every, remembered)
        if failed is None:
            return None
        model = project.model(failed[0])
        return model.file, duckdb_message(failed[1], model.sql), (model.relation,)

    def create(self, con: duckdb.DuckDBPyConnection, relation: str, rel: str, sql: str) -> None:
        """``rel`` (re)made from ``sql`` in full: its columns are read when asked."""
        self.wrote(relation, None, one(con, f"CREATE OR REPLACE TABLE {rel} AS {sql}")[0])

    def dropped(self, relation: str) -> None:
        """``relation``'s table or view was dropped."""
        self.came.pop(relation, None)
        self.existing.pop(relation, None)
        self.columns.pop(relation, None)
        self.rows.pop(relation, None)
        self.distinct.discard(relation)

    def finish(self, con: duckdb.DuckDBPyConnection) -> None:
        """At the commit: drop the temporary tables the models left; store the tables proven
        distinct, when they changed (inside the build's transaction)."""
        temps = ("relay_new", "relay_diff", "relay_delta", "relay_went", "relay_replaced")
        for temp in (*temps, CAME, BEFORE, *self._came_tables):
            con.execute(f"DROP TABLE IF EXISTS {temp}")
        if self.distinct != self.stored:
            con.execute("DELETE FROM state.distinct_model_tables")
            con.execute(
                "INSERT INTO state.distinct_model_tables SELECT unnest(?)", [sorted(self.distinct)]
            )


def _quoted(relation: str) -> str:
    return ".".join(f'"{p}"' for p in relation.split(".", 1))


# What a query's answer may depend on besides the tables it reads: the clock, a variable,
# chance. A view or data test naming one is never taken as unchanged.
_VOLATILE = re.compile(
    r"\b(now|today|current_date|current_time|current_timestamp|localtime|localtimestamp|"
    r"get_current_time|get_current_timestamp|getvariable|relay_changed_ids|random|uuid|"
    r"gen_random_uuid)\b",
    re.IGNORECASE,
)


def _volatile(sql: str) -> bool:
    """Whether ``sql`` names something of ``_VOLATILE`` outside its comments: a model's header
    saying what it holds "now" does not make its answer move with the clock (DuckDB's own
    tokenizer tells comments from code; a string literal still counts, to be safe)."""
    tokens = duckdb.tokenize(sql)
    code = "".join(
        sql[start : tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)]
        for i, (start, kind) in enumerate(tokens)
        if kind != duckdb.token_type.comment
    )
    return bool(_VOLATILE.search(code))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Fingerprints:
    """state.model_fingerprints as a build reads (once) and writes it: model (or test file) ->
    its fingerprint, each write made inside the build's transaction (a rollback keeps the old)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        rows = con.execute("SELECT model, fingerprint FROM state.model_fingerprints").fetchall()
        self.known: dict[str, str] = dict(rows)

    def get(self, key: str) -> str | None:
        return self.known.get(key)

    def keep(self, key: str, now: str) -> bool:
        """Whether ``key``'s fingerprint at the last commit was ``now``; records ``now`` for
        the next build either way."""
        previous = self.known.get(key)
        if previous != now:
            self.con.execute(
                "INSERT OR REPLACE INTO state.model_fingerprints VALUES (?, ?)", [key, now]
            )
            self.known[key] = now
        return previous == now

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the fingerprints of ``keys`` (those it has: none, no statement)."""
        gone = [k for k in keys if k in self.known]
        if gone:
            self.con.execute("DELETE FROM state.model_fingerprints WHERE model IN ?", [gone])
            for key in gone:
                del self.known[key]


def reads_no_change(model: Model, unchanged: Collection[str]) -> bool:
    """Whether ``model``'s SQL reads no clock, variable or chance and only what is
    ``unchanged`` (raw tables the sync has not written to since the last build, models this
    build left as they were; never state.*): the one rule of what a build may leave as it was."""
    return not _volatile(model.sql) and all(d in unchanged for d in model.depends_on)


def same_view(
    fingerprints: Fingerprints, model: Model, existing: str | None, unchanged: set[str]
) -> bool:
    """Whether a view model reads as it did at the last commit: the view is there with this
    SQL (its fingerprint, kept here; recorded either way) and it ``reads_no_change``."""
    return (
        fingerprints.keep(model.relation, _sha(model.sql))
        and existing == "view"
        and reads_no_change(model, unchanged)
    )


def same_table(
    fingerprints: Fingerprints,
    model: Model,
    project: Project,
    settings: object,
    unchanged: set[str],
) -> bool:
    """Whether a table model would compute the rows it holds, so the build need not run it: its
    SQL, the SQL upstream of it and the settings it names are those of the last commit (its
    fingerprint, kept here; recorded either way, a held model loses it) and it
    ``reads_no_change`` (an idle tick's lists, reading state.*, still see new unsubscribes)."""
    now = fingerprint(model, project, asdict(settings))  # type: ignore[call-overload]
    return (
        fingerprints.keep(model.relation, now)
        and "raw_changes" not in model.sql
        and reads_no_change(model, unchanged)
    )
