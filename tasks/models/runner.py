"""The SQL model runner: ``sql/**/*.sql`` -> tables in staging, marts and segments.

An analyst's contract (sql/README.md): one SELECT per file; model name = file name, schema =
folder; dependencies are read from the SQL itself (DuckDB's parse tree, json_serialize_sql:
every table named with its schema, CTE names left out); ``raw.*`` and ``state.*`` are sources.
A ``-- config:`` header line picks the materialisation: ``table`` (default), ``view``, or
``incremental`` with a ``key``.

An incremental model selects what changed itself, with two DuckDB variables:
``getvariable('changes_since')`` (raw rows written after it are new: the newest raw write the
previous good build read) and ``getvariable('previous_built_at')`` (appointments that started
since then changed status). Variables are constants to DuckDB, so a filter on ``synced_at`` skips
unchanged storage without reading the JSON (a one-row table in a join would not). The runner
deletes the existing rows whose key appears in that selection and inserts it, so a tick's cost
follows the changes, not the history. When a model must be built in full (first build,
``--full-refresh``, its SQL, an upstream model's SQL or the country changed) both are NULL while
it runs and the same SELECT returns everything.

A build is atomic: every model, every data test and the membership history run inside one DuckDB
transaction. Anything failing rolls it all back, so the last good version of every model stays in
place, and the failure is recorded in ``state.model_builds`` for the planner to see.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from tasks.cliniko.resources import RESOURCES
from tasks.config import MarketingListSettings
from tasks.errors import UserFacingError
from tasks.models import functions as models_functions
from tasks.paths import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"
MODEL_SCHEMAS = ("staging", "marts", "segments")
TESTS_FOLDER = "tests"
MATERIALIZATIONS = ("table", "view", "incremental")

# The audiences whose membership is recorded after each build (besides every segment).
LIST_AUDIENCES = {
    "email_marketing_list": "SELECT email, patient_id FROM marts.email_marketing_list "
    "WHERE status = 'subscribed'",
    "sms_marketing_list": "SELECT mobile_e164, patient_id FROM marts.sms_marketing_list "
    "WHERE status = 'subscribed'",
}

_CONFIG_LINE = re.compile(r"^--\s*config:(.*)$", re.IGNORECASE)
# Column types a row-by-row comparison leaves to a full rewrite.
_NESTED = re.compile(r"MAP\(|STRUCT\(|UNION\(|\[|\]")


class ModelError(UserFacingError):
    """A model or data test file the runner cannot use; the message names the file."""


class BuildFailed(UserFacingError):
    """A build stopped; every model is as it was before it started."""

    def __init__(self, build_id: str, file: str, message: str):
        super().__init__(
            f"{file}: {message}\nThe build ({build_id}) was rolled back: every model is still "
            "the last good version, and planning/sending will wait for a good build."
        )
        self.build_id = build_id
        self.file = file
        self.detail = message


@dataclass(frozen=True)
class Model:
    schema: str
    name: str
    file: str  # path relative to the project, as shown in errors: sql/marts/patients.sql
    sql: str
    materialized: str = "table"
    key: tuple[str, ...] = ()  # incremental: new rows replace existing rows with the same key
    depends_on: tuple[str, ...] = ()  # qualified models and sources this model reads

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class DataTest:
    name: str
    file: str
    sql: str
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Project:
    models: tuple[Model, ...]  # in dependency order
    tests: tuple[DataTest, ...]

    def model(self, relation: str) -> Model:
        for m in self.models:
            if m.relation == relation:
                return m
        raise ModelError(
            f"No model named {relation}. Models: {', '.join(m.relation for m in self.models)}"
        )

    @property
    def segments(self) -> tuple[Model, ...]:
        return tuple(m for m in self.models if m.schema == "segments")


@dataclass(frozen=True)
class ListSettings:
    """The clinic's marketing-list settings as the models read them (state.build_context)."""

    country: str = "AU"
    clinic_time_zone: str = "Australia/Melbourne"
    active_patient_months: int | None = 24
    list_size_cap: int | None = None
    honour_email_opt_in: bool = False
    cap_order: str = "most_recent_visit"
    soft_bounce_limit: int = MarketingListSettings().soft_bounce_limit  # its one home: config

    @classmethod
    def from_config(cls, cfg) -> ListSettings:  # cfg: tasks.config.ClinicConfig
        ml = cfg.marketing_list
        return cls(
            country=cfg.country,
            clinic_time_zone=cfg.time_zone,
            active_patient_months=ml.active_patient_months,
            list_size_cap=ml.size_cap,
            honour_email_opt_in=ml.honour_cliniko_email_opt_in,
            cap_order=ml.cap_keeps,
            soft_bounce_limit=ml.soft_bounce_limit,
        )


@dataclass
class BuildResult:
    """Counts only: safe for logs, Prefect results and artifacts."""

    build_id: str
    built_at: datetime
    rows: dict[str, int | None] = field(default_factory=dict)
    tests_passed: int = 0
    audiences: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"rows": self.rows, "tests_passed": self.tests_passed, "audiences": self.audiences}


# --- discovery ---------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _parse_config(file: str, text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break  # the header ends at the first line of SQL
        match = _CONFIG_LINE.match(stripped)
        if not match:
            continue
        for item in filter(None, (p.strip() for p in match.group(1).split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not value or key not in ("materialized", "key"):
                raise ModelError(
                    f"{file}: cannot read '-- config:' item '{item}'. Write e.g. "
                    "'-- config: materialized=view' or "
                    "'-- config: materialized=incremental, key=appointment_kind+appointment_id'."
                )
            config[key] = value
    materialized = config.setdefault("materialized", "table")
    if materialized not in MATERIALIZATIONS:
        raise ModelError(
            f"{file}: materialized={materialized} is not one of {', '.join(MATERIALIZATIONS)}."
        )
    if materialized == "incremental" and not config.get("key"):
        raise ModelError(
            f"{file}: an incremental model needs key= in its '-- config:' line (the column, or "
            "columns joined by '+', whose rows a new selection replaces)."
        )
    return config


def _single_select(con: duckdb.DuckDBPyConnection, file: str, text: str) -> str:
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise ModelError(f"{file}: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ModelError(
            f"{file}: must hold exactly one SELECT statement (found {len(statements)} "
            "statement(s)); a model is one query: import CTEs, logical CTEs, a final select."
        )
    return text.strip().rstrip(";").strip()


def _walk(node: object) -> Iterable[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _tables_read(con: duckdb.DuckDBPyConnection, file: str, sql: str) -> tuple[str, ...]:
    """The tables ``sql`` reads, as schema.table, from DuckDB's parse tree (json_serialize_sql).

    Parsing alone, no binding: a model's upstream tables need not exist yet (DuckDB's
    get_table_names binds the query and fails on a JOIN ... USING over tables not yet built).
    Unqualified names must be CTEs of the query; every table is named with its schema.
    """
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        raise ModelError(f"{file}: {tree.get('error_message', 'cannot parse the SQL')}")
    nodes = list(_walk(tree))
    ctes = {
        entry["key"].lower()
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    tables = set()
    for node in nodes:
        if node.get("type") != "BASE_TABLE":
            continue
        schema, table = node.get("schema_name", "").lower(), node["table_name"].lower()
        if schema:
            tables.add(f"{schema}.{table}")
        elif table not in ctes:
            raise ModelError(
                f"{file}: reads '{table}' without a schema. Name it in full, e.g. "
                f"staging.{table}, marts.{table} or raw.{table}."
            )
    return tuple(sorted(tables))


def _source_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name IN ('raw', 'state') "
        "UNION ALL SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE database_name = current_database() AND schema_name IN ('raw', 'state')"
    ).fetchall()
    return {r[0].lower() for r in rows}


def _order(models: dict[str, Model]) -> tuple[Model, ...]:
    """Dependency order; a cycle is reported with the files that form it."""
    ordered: list[Model] = []
    state: dict[str, str] = {}  # relation -> 'visiting' | 'done'

    def visit(relation: str, path: list[str]) -> None:
        if state.get(relation) == "done":
            return
        if state.get(relation) == "visiting":
            cycle = path[path.index(relation) :] + [relation]
            raise ModelError(
                "Models depend on each other in a cycle: "
                + " -> ".join(models[r].file for r in cycle)
                + ". Remove one of these references."
            )
        state[relation] = "visiting"
        for dep in models[relation].depends_on:
            if dep in models:
                visit(dep, path + [relation])
        state[relation] = "done"
        ordered.append(models[relation])

    for relation in sorted(models):
        visit(relation, [])
    return tuple(ordered)


def discover(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> Project:
    """Read every model and data test under ``sql_dir`` and check their references."""
    files = sorted(sql_dir.glob("**/*.sql"))
    models: dict[str, Model] = {}
    tests: list[DataTest] = []
    for path in files:
        file = _relative(path, sql_dir)
        folder = path.parent.relative_to(sql_dir).parts
        kind = folder[0] if len(folder) == 1 else None
        if kind not in (*MODEL_SCHEMAS, TESTS_FOLDER):
            raise ModelError(
                f"{file}: models live directly in sql/staging, sql/marts or sql/segments, and "
                "data tests in sql/tests. Move the file."
            )
        name = path.stem.lower()
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ModelError(
                f"{file}: a model's file name becomes its table name: use lower-case letters, "
                "digits and underscores."
            )
        text = path.read_text(encoding="utf-8")
        sql = _single_select(con, file, text)
        depends_on = _tables_read(con, file, sql)
        if kind == TESTS_FOLDER:
            tests.append(DataTest(name=name, file=file, sql=sql, depends_on=depends_on))
            continue
        config = _parse_config(file, text)
        models[f"{kind}.{name}"] = Model(
            schema=kind,
            name=name,
            file=file,
            sql=sql,
            materialized=config["materialized"],
            key=tuple(c.strip() for c in config.get("key", "").split("+") if c.strip()),
            depends_on=depends_on,
        )
    sources = _source_tables(con)  # raw.* and state.*
    for item in [*models.values(), *tests]:
        for dep in item.depends_on:
            if dep not in models and dep not in sources:
                schema = dep.split(".", 1)[0]
                hint = (
                    f"there is no file sql/{schema}/{dep.split('.', 1)[1]}.sql"
                    if schema in MODEL_SCHEMAS
                    else "sources are the raw.* and state.* tables"
                )
                raise ModelError(f"{item.file}: reads {dep}, which does not exist ({hint}).")
    return Project(models=_order(models), tests=tuple(tests))


# --- building ----------------------------------------------------------------------------------


def _message(exc: BaseException) -> str:
    """DuckDB's message, with quoted values removed when the error is about data (they may be a
    patient's email or name), so it can go to logs and state tables."""
    text = str(exc).strip()
    if isinstance(exc, duckdb.DataError | duckdb.ConstraintException):
        text = re.sub(r"'[^']*'", "'…'", text)
    return text


def _data_high_water(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The newest write the sync made to any raw table (a row stored, or marked removed)."""
    union = " UNION ALL ".join(
        f"SELECT max(synced_at) AS t FROM {r.table} UNION ALL SELECT max(removed_at) FROM {r.table}"
        for r in RESOURCES
    )
    return con.execute(f"SELECT max(t) FROM ({union})").fetchone()[0]


def _fingerprint(model: Model, project: Project, settings: ListSettings) -> str:
    """What an incremental model's rows were computed from: its SQL, the SQL of every model
    upstream of it (a fixed staging model must not leave old rows in a mart) and the country
    (how phones are read). A different fingerprint rebuilds the model in full."""
    models = {m.relation: m for m in project.models}
    seen, todo = set(), [model.relation]
    while todo:
        relation = todo.pop()
        if relation in seen:
            continue
        seen.add(relation)
        todo.extend(d for d in models[relation].depends_on if d in models)
    text = "\n".join(models[r].sql for r in sorted(seen))
    return hashlib.sha256(f"{text}\n{settings.country}".encode()).hexdigest()


class ModelBuild:
    """One build, step by step, so a Prefect flow can run each model as its own task.

    ``start()`` opens the transaction, ``run_model()`` materialises one model, ``finish()`` runs
    the data tests, records membership and commits; ``abort()`` rolls back and records why.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        project: Project,
        settings: ListSettings,
        *,
        now: datetime | None = None,
        full_refresh: bool = False,
    ):
        self.con = con
        self.project = project
        self.settings = settings
        self.full_refresh = full_refresh
        self.phones = models_functions.PhonePrefill([], settings.country)
        self.started_at = datetime.now(UTC)
        self.result = BuildResult(
            build_id=f"{self.started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            built_at=now or self.started_at,
        )

    @property
    def build_id(self) -> str:
        return self.result.build_id

    def start(self) -> None:
        con = self.con
        models_functions.register(con)
        con.execute("BEGIN TRANSACTION")
        s = self.settings
        previous = con.execute(
            "SELECT data_high_water, built_at FROM state.model_builds "
            "WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
        self.changes_since, self.previous_built_at = previous or (None, None)
        self.data_high_water = _data_high_water(con)
        self._set_changes(self.changes_since, self.previous_built_at)
        con.execute("DELETE FROM state.build_context")
        con.execute(
            "INSERT INTO state.build_context VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                self.build_id,
                self.result.built_at,
                s.country,
                s.clinic_time_zone,
                s.active_patient_months,
                s.list_size_cap,
                s.honour_email_opt_in,
                s.cap_order,
                s.soft_bounce_limit,
            ],
        )
        # The phone memo keeps numbers read in this country by this phonenumbers version only.
        models_functions.take_parsed_mobiles()
        con.execute(
            "DELETE FROM state.phone_numbers WHERE country <> ? OR parser <> ?",
            [s.country, models_functions.PHONE_PARSER],
        )
        self.phones = models_functions.PhonePrefill.start(
            con, s.country, None if self.full_refresh else self.changes_since
        )
        # Tables and views in place before this build (one catalog read, not one per model).
        self.existing = {
            f"{schema}.{name}": kind
            for schema, name, kind in con.execute(
                "SELECT schema_name, table_name, 'table' FROM duckdb_tables() "
                "WHERE database_name = current_database() AND schema_name IN ? "
                "UNION ALL SELECT schema_name, view_name, 'view' FROM duckdb_views() "
                "WHERE database_name = current_database() AND schema_name IN ? AND NOT internal",
                [list(MODEL_SCHEMAS), list(MODEL_SCHEMAS)],
            ).fetchall()
        }
        self._drop_orphans()

    def _set_changes(self, since: datetime | None, previous: datetime | None) -> None:
        self.con.execute("SET VARIABLE changes_since = ?::TIMESTAMPTZ", [since])
        self.con.execute("SET VARIABLE previous_built_at = ?::TIMESTAMPTZ", [previous])

    def _drop_orphans(self) -> None:
        """Tables and views whose file was deleted go too: nothing downstream may read a model
        nobody maintains. A deleted segment's audience is retired without leave events."""
        known = {m.relation for m in self.project.models}
        for relation, kind in list(self.existing.items()):
            if relation not in known:
                schema, name = relation.split(".", 1)
                self.con.execute(f'DROP {kind.upper()} "{schema}"."{name}"')
                del self.existing[relation]
        retired = [
            r[0]
            for r in self.con.execute(
                "SELECT audience FROM state.audiences WHERE retired_at IS NULL "
                "AND audience LIKE 'segments.%'"
            ).fetchall()
            if r[0] not in known
        ]
        for audience in retired:
            self.con.execute("DELETE FROM state.audience_members WHERE audience = ?", [audience])
            self.con.execute(
                "UPDATE state.audiences SET retired_at = ? WHERE audience = ?",
                [self.result.built_at, audience],
            )

    def run_model(self, model: Model) -> int | None:
        """Materialise one model; returns its row count (None for a view)."""
        try:
            if "state.phone_numbers" in model.depends_on:
                self.phones.store(self.con)
            rows = self._materialise(model)
        except duckdb.Error as exc:
            raise BuildFailed(self.build_id, model.file, _message(exc)) from None
        self.result.rows[model.relation] = rows
        return rows

    def _materialise(self, model: Model) -> int | None:
        con, rel = self.con, f'"{model.schema}"."{model.name}"'
        existing = self.existing.get(model.relation)
        if model.materialized == "view":
            if existing == "table":
                con.execute(f"DROP TABLE {rel}")
            con.execute(f"CREATE OR REPLACE VIEW {rel} AS {model.sql}")
            return None
        if existing == "view":
            con.execute(f"DROP VIEW {rel}")
            existing = None
        if model.materialized == "incremental":
            fingerprint = _fingerprint(model, self.project, self.settings)
            previous = con.execute(
                "SELECT fingerprint FROM state.model_fingerprints WHERE model = ?",
                [model.relation],
            ).fetchone()
            if (
                existing
                and not self.full_refresh
                and self.changes_since is not None
                and previous
                and previous[0] == fingerprint
            ):
                self._merge(model, rel)
            else:
                self._set_changes(None, None)
                con.execute(f"CREATE OR REPLACE TABLE {rel} AS {model.sql}")
                self._set_changes(self.changes_since, self.previous_built_at)
                self._check_unique(rel, model.key)
            con.execute(
                "INSERT OR REPLACE INTO state.model_fingerprints VALUES (?, ?)",
                [model.relation, fingerprint],
            )
        elif existing == "table":
            self._replace_changed_rows(model, rel)
        else:
            con.execute(f"CREATE OR REPLACE TABLE {rel} AS {model.sql}")
        self._check_shape(model, rel)
        return con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]

    def _merge(self, model: Model, rel: str) -> None:
        """Replace the rows whose key the model's (changed-only) selection returns. Idempotent:
        a crash before COMMIT leaves the previous rows, and the next build selects again."""
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE relay_delta AS {model.sql}")
        self._check_unique("relay_delta", model.key)
        match = " AND ".join(f't."{c}" IS NOT DISTINCT FROM d."{c}"' for c in model.key)
        columns = ", ".join(f'"{c}"' for c in model.key)
        con.execute(
            f"DELETE FROM {rel} t USING (SELECT DISTINCT {columns} FROM relay_delta) d "
            f"WHERE {match}"
        )
        con.execute(f"INSERT INTO {rel} BY NAME SELECT * FROM relay_delta")
        con.execute("DROP TABLE relay_delta")

    def _replace_changed_rows(self, model: Model, rel: str) -> None:
        """Bring an existing table to the model's new rows by deleting the rows that went and
        inserting the rows that came, instead of rewriting it: most builds change a handful of
        rows in each list and segment, and rewriting ~20 tables of 100,000 rows every build made
        the commit's checkpoint the largest part of a small rebuild. The table holds the same
        rows either way (its physical order may differ; models have no order). The table is
        rewritten instead when the columns or their types changed, a column is nested (MAP,
        LIST, STRUCT...), or either side has duplicate rows (a set difference cannot tell
        copies apart)."""
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE relay_new AS {model.sql}")
        try:
            temp = self._columns("relay_new")
            if (
                not temp
                or temp != self._columns(rel)
                or any(_NESTED.search(t) for _, t in temp)
                or self._has_duplicate_rows("relay_new")
                or self._has_duplicate_rows(rel)
            ):
                con.execute(f"CREATE OR REPLACE TABLE {rel} AS SELECT * FROM relay_new")
                return
            same = " AND ".join(f'o."{c}" IS NOT DISTINCT FROM n."{c}"' for c, _ in temp)
            con.execute(
                f"DELETE FROM {rel} WHERE rowid IN "
                f"(SELECT o.rowid FROM {rel} o ANTI JOIN relay_new n ON {same})"
            )
            con.execute(
                f"INSERT INTO {rel} SELECT n.* FROM relay_new n ANTI JOIN {rel} o ON {same}"
            )
        finally:
            con.execute("DROP TABLE relay_new")

    def _has_duplicate_rows(self, rel: str) -> bool:
        return self.con.execute(
            f"SELECT (SELECT count(*) FROM {rel}) <> (SELECT count(*) FROM "
            f"(SELECT DISTINCT * FROM {rel}))"
        ).fetchone()[0]

    def _columns(self, rel: str) -> list[tuple[str, str]]:
        """A table's columns and their types, in order (from a query's description: a fraction
        of the cost of information_schema)."""
        description = self.con.execute(f"SELECT * FROM {rel} LIMIT 0").description
        return [(d[0], str(d[1])) for d in description]

    def _check_shape(self, model: Model, rel: str) -> None:
        """What the rest of the system relies on: key columns exist; a segment has one row per
        patient_id."""
        needed = list(model.key) + (["patient_id"] if model.schema == "segments" else [])
        if not needed:
            return
        columns = {
            r[0]
            for r in self.con.execute(f"SELECT name FROM pragma_table_info('{rel}')").fetchall()
        }
        for column in needed:
            if column not in columns:
                raise duckdb.BinderException(
                    f"the model must return a column named {column}"
                    + (
                        " (one row per patient in the segment)"
                        if model.schema == "segments"
                        else ""
                    )
                )
        if model.schema == "segments":
            self._check_unique(rel, ("patient_id",), "a segment has one row per patient")

    def _check_unique(self, rel: str, key: tuple[str, ...], why: str = "") -> None:
        columns = ", ".join(f'"{c}"' for c in key)
        duplicates = self.con.execute(
            f"SELECT count(*) FROM (SELECT {columns} FROM {rel} GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
        if duplicates:
            raise duckdb.ConstraintException(
                f"{duplicates} value(s) of {'+'.join(key)} appear on more than one row; "
                + (why or "the key must be unique")
            )

    def run_tests(self) -> int:
        for test in self.project.tests:
            failures = count_failures(self.con, test)
            if failures:
                raise BuildFailed(
                    self.build_id,
                    test.file,
                    f"data test failed: {failures} offending row(s). Run `relay models test` "
                    "after fixing the models, or query the test's SELECT to see them.",
                )
        self.result.tests_passed = len(self.project.tests)
        return len(self.project.tests)

    def finish(self) -> BuildResult:
        """Record membership and the build, then commit: the new models become visible at once."""
        try:
            self.result.audiences = record_membership(
                self.con, self.project, self.build_id, self.result.built_at
            )
        except duckdb.Error as exc:
            raise BuildFailed(
                self.build_id, "tasks/models/runner.py (membership)", _message(exc)
            ) from None
        self.phones.cancel()
        self._remember_phone_numbers()
        self.con.execute(
            "INSERT INTO state.model_builds VALUES (?, ?, now(), 'succeeded', ?, ?, NULL, NULL, ?)",
            [
                self.build_id,
                self.started_at,
                self.result.built_at,
                self.data_high_water,
                json.dumps(self.result.summary()),
            ],
        )
        self.con.execute("COMMIT")
        return self.result

    def _remember_phone_numbers(self) -> None:
        """Store the numbers this build read in state.phone_numbers, with the build: a later
        build (a full one too) looks them up instead of parsing them again."""
        parsed = [
            (number, e164)
            for number, country, e164 in models_functions.take_parsed_mobiles()
            if country == self.settings.country
        ]
        if parsed:
            models_functions.remember_mobiles(
                self.con,
                self.settings.country,
                [n for n, _ in parsed],
                [e for _, e in parsed],
            )

    @classmethod
    def prepare(
        cls,
        con: duckdb.DuckDBPyConnection,
        settings: ListSettings,
        *,
        sql_dir: Path = SQL_DIR,
        now: datetime | None = None,
        full_refresh: bool = False,
    ) -> ModelBuild:
        """Read the project and start a build. Files the runner cannot use (unknown table, cycle,
        two statements...) fail the build before it touches anything, and that is recorded too:
        planning waits for a good build either way."""
        try:
            project = discover(con, sql_dir)
        except ModelError as exc:
            named = re.search(r"sql/\S+?\.sql", str(exc))
            cls(con, Project((), ()), settings, now=now)._record_failure(
                named.group(0) if named else None, str(exc)
            )
            raise
        run = cls(con, project, settings, now=now, full_refresh=full_refresh)
        run.start()
        return run

    def abort(self, failure: BuildFailed) -> None:
        """Roll back everything this build did, then record (on its own) that it failed."""
        self.con.execute("ROLLBACK")
        self.phones.cancel()
        models_functions.take_parsed_mobiles()
        self._record_failure(failure.file, failure.detail)

    def _record_failure(self, file: str | None, message: str) -> None:
        self.con.execute(
            "INSERT INTO state.model_builds VALUES (?, ?, now(), 'failed', ?, NULL, ?, ?, NULL)",
            [self.build_id, self.started_at, self.result.built_at, file, message],
        )


def count_failures(con: duckdb.DuckDBPyConnection, test: DataTest) -> int:
    try:
        return con.execute(f"SELECT count(*) FROM ({test.sql})").fetchone()[0]
    except duckdb.Error as exc:
        raise ModelError(f"{test.file}: {_message(exc)}") from None


def build(
    con: duckdb.DuckDBPyConnection,
    settings: ListSettings,
    *,
    sql_dir: Path = SQL_DIR,
    now: datetime | None = None,
    full_refresh: bool = False,
) -> BuildResult:
    """Build every model, test it and record membership, all or nothing.

    Raises ModelError when the files cannot be used (nothing is touched) and BuildFailed when a
    model or test fails (rolled back); both are recorded in state.model_builds.
    """
    run = ModelBuild.prepare(con, settings, sql_dir=sql_dir, now=now, full_refresh=full_refresh)
    try:
        for model in run.project.models:
            run.run_model(model)
        run.run_tests()
        return run.finish()
    except BuildFailed as failure:
        run.abort(failure)
        raise
    except ModelError as exc:
        failure = BuildFailed(run.build_id, str(exc).split(":", 1)[0], str(exc).split(": ", 1)[-1])
        run.abort(failure)
        raise failure from None
    except BaseException:
        run.phones.cancel()
        con.execute("ROLLBACK")
        raise


def run_tests(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> dict[str, int]:
    """Run the data tests against the models as built: test file -> offending row count."""
    project = discover(con, sql_dir)
    models_functions.register(con)
    return {test.file: count_failures(con, test) for test in project.tests}


# --- membership history ------------------------------------------------------------------------


def _audience_queries(con: duckdb.DuckDBPyConnection, project: Project) -> dict[str, str]:
    built = {m.relation for m in project.models}
    queries = {name: sql for name, sql in LIST_AUDIENCES.items() if f"marts.{name}" in built}
    for segment in project.segments:
        queries[segment.relation] = (
            f'SELECT patient_id, patient_id FROM "segments"."{segment.name}"'
        )
    return queries


def record_membership(
    con: duckdb.DuckDBPyConnection, project: Project, build_id: str, built_at: datetime
) -> dict[str, dict[str, int]]:
    """Compare each audience with its members at the last build and append joined/left events.

    An audience seen for the first time records its members as 'initial' joins, so journeys
    start from people who enter later instead of treating everyone as new.
    """
    queries = _audience_queries(con, project)
    if not queries:
        return {}
    union = " UNION ALL ".join(
        f"SELECT '{audience}' AS audience, CAST(k AS VARCHAR) AS member_key, "
        f"CAST(p AS BIGINT) AS patient_id FROM ({sql}) AS t(k, p) WHERE k IS NOT NULL"
        for audience, sql in queries.items()
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE relay_current AS SELECT audience, member_key, "
        f"min(patient_id) AS patient_id FROM ({union}) GROUP BY ALL"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE relay_new_audiences AS SELECT unnest(?) AS audience "
        "EXCEPT SELECT audience FROM state.audiences WHERE retired_at IS NULL",
        [list(queries)],
    )
    con.execute(
        "DELETE FROM state.audiences WHERE audience IN (SELECT audience FROM relay_new_audiences)"
    )
    con.execute(
        "INSERT INTO state.audiences SELECT audience, ?, ?, NULL FROM relay_new_audiences",
        [build_id, built_at],
    )
    # One pass over members before and after: who joined, who left.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE relay_changes AS
        SELECT coalesce(c.audience, m.audience) AS audience,
               coalesce(c.member_key, m.member_key) AS member_key,
               coalesce(c.patient_id, m.patient_id) AS patient_id,
               CASE WHEN m.member_key IS NULL THEN 'joined' ELSE 'left' END AS event
        FROM relay_current c
        FULL OUTER JOIN (SELECT * FROM state.audience_members WHERE audience IN ?) m
            USING (audience, member_key)
        WHERE c.member_key IS NULL OR m.member_key IS NULL
        """,
        [list(queries)],
    )
    con.execute(
        """
        INSERT INTO state.membership_events
            (build_id, audience, member_key, patient_id, event, initial, occurred_at)
        SELECT ?, audience, member_key, patient_id, event,
               event = 'joined' AND audience IN (SELECT audience FROM relay_new_audiences), ?
        FROM relay_changes
        """,
        [build_id, built_at],
    )
    con.execute(
        "DELETE FROM state.audience_members m USING relay_changes c "
        "WHERE c.event = 'left' AND m.audience = c.audience AND m.member_key = c.member_key"
    )
    con.execute(
        "INSERT INTO state.audience_members SELECT audience, member_key, patient_id, ? "
        "FROM relay_changes WHERE event = 'joined'",
        [built_at],
    )
    counts = con.execute(
        """
        WITH sizes AS (SELECT audience, count(*) AS size FROM relay_current GROUP BY audience),
        changes AS (
            SELECT audience,
                   count(*) FILTER (WHERE event = 'joined') AS joined,
                   count(*) FILTER (WHERE event = 'left') AS left_
            FROM relay_changes GROUP BY audience
        )
        SELECT a.audience, coalesce(size, 0), coalesce(joined, 0), coalesce(left_, 0)
        FROM (SELECT unnest(?) AS audience) a
        LEFT JOIN sizes USING (audience)
        LEFT JOIN changes USING (audience)
        ORDER BY a.audience
        """,
        [list(queries)],
    ).fetchall()
    for temp in ("relay_current", "relay_new_audiences", "relay_changes"):
        con.execute(f"DROP TABLE {temp}")
    return {a: {"size": size, "joined": j, "left": left} for a, size, j, left in counts}


# --- reading results ---------------------------------------------------------------------------


def latest_build(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The most recent build attempt (status, when, which file failed), or None."""
    row = con.execute(
        "SELECT build_id, started_at, finished_at, status, failed_file, error "
        "FROM state.model_builds ORDER BY finished_at DESC, started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    keys = ("build_id", "started_at", "finished_at", "status", "failed_file", "error")
    return dict(zip(keys, row, strict=True))


def require_good_build(con: duckdb.DuckDBPyConnection) -> dict:
    """For planning and sending: refuse to work from models whose latest build failed."""
    latest = latest_build(con)
    if latest is None:
        raise UserFacingError("The models have never been built. Run `relay models build`.")
    if latest["status"] != "succeeded":
        raise UserFacingError(
            f"The latest model build ({latest['build_id']}) failed in {latest['failed_file']}; "
            "planning waits for a good build. Fix the file and run `relay models build`."
        )
    return latest


@dataclass
class SegmentPreview:
    """A segment as its file stands now, against the models of the last build. ``sample`` holds
    names and emails: for the analyst's terminal only, never logs or artifacts."""

    relation: str
    size: int
    on_email_list: int
    on_sms_list: int
    recorded: bool  # the audience has a membership history (built before)
    joined: int  # would join, compared with the members recorded at the last build
    left: int
    sample: list[tuple[int, str | None, str | None]]


def preview_segment(
    con: duckdb.DuckDBPyConnection, name: str, *, sample_size: int = 10, sql_dir: Path = SQL_DIR
) -> SegmentPreview:
    """Run ``sql/segments/<name>.sql`` without writing anything and compare with its members."""
    project = discover(con, sql_dir)
    relation = f"segments.{name.removeprefix('segments.')}"
    if relation not in {m.relation for m in project.segments}:
        known = ", ".join(m.name for m in project.segments) or "none"
        raise ModelError(f"No segment '{name}' (sql/segments/{name}.sql). Segments: {known}.")
    segment = project.model(relation)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE relay_preview AS "
            f"SELECT DISTINCT patient_id FROM ({segment.sql})"
        )
    except duckdb.Error as exc:
        raise ModelError(f"{segment.file}: {_message(exc)}") from None
    (size,) = con.execute("SELECT count(*) FROM relay_preview").fetchone()
    on_email, on_sms = con.execute(
        """
        SELECT
            (SELECT count(*) FROM marts.email_marketing_list
             WHERE status = 'subscribed' AND patient_id IN (SELECT patient_id FROM relay_preview)),
            (SELECT count(*) FROM marts.sms_marketing_list
             WHERE status = 'subscribed' AND patient_id IN (SELECT patient_id FROM relay_preview))
        """
    ).fetchone()
    recorded, joined, left = con.execute(
        """
        WITH members AS (
            SELECT CAST(member_key AS BIGINT) AS patient_id FROM state.audience_members
            WHERE audience = ?
        )
        SELECT
            EXISTS (SELECT 1 FROM state.audiences WHERE audience = ? AND retired_at IS NULL),
            (SELECT count(*) FROM relay_preview ANTI JOIN members USING (patient_id)),
            (SELECT count(*) FROM members ANTI JOIN relay_preview USING (patient_id))
        """,
        [relation, relation],
    ).fetchone()
    sample = con.execute(
        "SELECT p.patient_id, p.greeting_name, p.email FROM relay_preview s "
        "JOIN marts.patients p USING (patient_id) ORDER BY p.patient_id LIMIT ?",
        [sample_size],
    ).fetchall()
    con.execute("DROP TABLE relay_preview")
    return SegmentPreview(relation, size, on_email, on_sms, recorded, joined, left, sample)
