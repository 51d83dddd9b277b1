"""Reading the SQL project: every ``sql/**/*.sql`` file as a model or a data test, with the tables
its SQL reads, in dependency order.

An analyst's contract (sql/README.md): one SELECT per file; model name = file name, schema =
folder; dependencies are read from the SQL itself (DuckDB's parse tree, json_serialize_sql:
every table named with its schema, CTE names left out); ``raw.*`` and ``state.*`` are sources.
A ``-- config:`` header line picks the materialisation: ``table`` (default), ``view``, or
``incremental`` with a ``key`` (and ``delete_if_null``: a selected row with that column NULL
removes its key's row). Nothing here writes but ``remember_parses``, which the runner calls
inside its build: a file the runner cannot use is refused before a build touches anything.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tasks.errors import UserFacingError
from tasks.models.order import dependency_order
from tasks.paths import PROJECT_ROOT, read_edited_text
from tasks.warehouse import one

SQL_DIR = PROJECT_ROOT / "sql"
MODEL_SCHEMAS = ("staging", "marts", "segments")
TESTS_FOLDER = "tests"
MATERIALIZATIONS = ("table", "view", "incremental")

# Table functions (tasks/models/functions.py) whose first argument names the table they read.
CHANGE_FUNCTIONS = ("raw_changes", "replaced_patients", "changed_values")

_CONFIG_LINE = re.compile(r"^--\s*config:(.*)$", re.IGNORECASE)


class ModelError(UserFacingError):
    """A model or data test file the runner cannot use; the message names the file."""


@dataclass(frozen=True)
class Model:
    schema: str
    name: str
    file: str  # path relative to the project, as shown in errors: sql/marts/patients.sql
    sql: str
    materialized: str = "table"
    key: tuple[str, ...] = ()  # incremental: new rows replace existing rows with the same key
    # incremental: a selected row with this column NULL removes its key's row and is not kept
    delete_if_null: str | None = None
    depends_on: tuple[str, ...] = ()  # qualified models and sources this model reads

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def full_sql(self) -> str:
        """The model's rows when built in full: its SELECT, less the rows that only delete
        (``delete_if_null``)."""
        if not self.delete_if_null:
            return self.sql
        return f'SELECT * FROM ({self.sql}\n) WHERE "{self.delete_if_null}" IS NOT NULL'


@dataclass(frozen=True)
class DataTest:
    name: str
    file: str
    sql: str
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Broken:
    """A file the runner cannot use as it stands (read with ``keep_going``): ``relation`` is
    the model it would build (None when the file is not where a model can be)."""

    file: str
    relation: str | None
    message: str


@dataclass(frozen=True)
class Project:
    models: tuple[Model, ...]  # in dependency order
    tests: tuple[DataTest, ...]
    broken: tuple[Broken, ...] = ()  # files discover(keep_going=True) could not use
    # each usable file's parse (key: ``_parse_key``) -> the tables it reads, and whether this
    # process parsed any of them (neither remembered in it nor stored: ``remember_parses``)
    parses: tuple[tuple[str, tuple[str, ...]], ...] = ()
    parsed_now: bool = False

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

    def readers(self, relations: Iterable[str]) -> set[str]:
        """``relations`` and every model that reads one of them, directly or through others:
        what a failure of ``relations`` leaves as it was (the dependency graph of the SQL)."""
        found = set(relations)
        for model in self.models:  # dependency order: a reader comes after what it reads
            if found.intersection(model.depends_on):
                found.add(model.relation)
        return found


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _parse_config(file: str, text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    in_header = True  # the header ends at the first line of SQL
    for number, line in enumerate(map(str.strip, text.splitlines()), 1):
        in_header = in_header and (not line or line.startswith("--"))
        match = _CONFIG_LINE.match(line)
        if match and not in_header:
            raise ModelError(
                f"{file}: line {number}: a '-- config:' line is read only in the '--' comment "
                "lines at the top of the file, before any SQL (or /* */ comment). Move it there."
            )
        if not match:
            continue
        for item in filter(None, (p.strip() for p in match.group(1).split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not value or key not in ("materialized", "key", "delete_if_null"):
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
    if "delete_if_null" in config and materialized != "incremental":
        raise ModelError(f"{file}: delete_if_null= is for an incremental model (with its key=).")
    if "key" in config and materialized != "incremental":
        # a table or view is built whole each time: its key= was read and silently ignored
        raise ModelError(
            f"{file}: key= is for an incremental model (materialized=incremental); a "
            f"{materialized} has no key. To require one row per value, write a data test "
            "(sql/tests/)."
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
    return _stripped(text)


def _stripped(text: str) -> str:
    return text.strip().rstrip(";").strip()


_WRITES = ("INSERT_QUERY_NODE", "UPDATE_QUERY_NODE", "DELETE_QUERY_NODE")  # run in a CTE


def tables_read(
    con: duckdb.DuckDBPyConnection, file: str, sql: str, tree: str | None = None
) -> tuple[str, ...]:
    """The tables ``sql`` reads, as schema.table, from DuckDB's parse tree (json_serialize_sql).

    Parsing alone, no binding: a model's upstream tables need not exist yet (DuckDB's
    get_table_names binds the query and fails on a JOIN ... USING over tables not yet built).
    Unqualified names must be CTEs of the query; every table is named with its schema.
    ``tree``: the SQL's json_serialize_sql when already read (``_parse_trees``).
    """
    nodes: list[dict] = []  # only the nodes read below, kept as the JSON decoder makes them

    def keep(node: dict) -> dict:
        if "cte_map" in node or node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION") + _WRITES:
            nodes.append(node)
        return node

    # object_hook instead of walking the decoded tree in Python: a model's tree has thousands
    # of nodes, and walking them was most of reading the project, every tick.
    serialized = tree if tree is not None else one(con, "SELECT json_serialize_sql(?)", [sql])[0]
    parsed = json.loads(serialized, object_hook=keep)
    if parsed.get("error"):
        raise ModelError(f"{file}: {parsed.get('error_message', 'cannot parse the SQL')}")
    for node in nodes:
        if node.get("type") in _WRITES:  # DuckDB runs it: a segment deleted every unsubscribe
            kind = node["type"].split("_")[0]
            raise ModelError(f"{file}: writes ({kind} in a WITH clause); a model only reads.")
    ctes = {
        entry["key"].lower()
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    tables = set()
    for node in nodes:
        if node.get("type") == "TABLE_FUNCTION":
            # raw_changes('raw.patients'), replaced_patients('marts.appointments') and
            # changed_values('marts.patient_rows', ...) (tasks.models.functions) read the table
            # they name.
            function = node.get("function") or {}
            arguments = function.get("arguments") or [{}]
            literal = (arguments[0].get("expression") or {}).get("literal") or {}
            named = function.get("function_name") in CHANGE_FUNCTIONS
            if named and literal.get("kind") == "STRING":
                tables.add(literal["text"].lower())
            continue
        if node.get("type") != "BASE_TABLE":
            continue
        schema, table = node.get("schema_name", "").lower(), node["table_name"].lower()
        if schema:
            tables.add(f"{schema}.{table}")
        elif table not in ctes:
            raise ModelError(
                f"{file}: reads '{table}' without a schema. Name it in full, e.g. "
                f"staging.{table}, marts.{table}, segments.{table} or raw.{table}."
            )
    return tuple(sorted(tables))


# File text -> (its SELECT, the tables it reads), for files read before in this process: the
# parse depends on the text alone, and a process that builds again (the fast lane after each
# booking, a CLI build then its tests) need not parse every file again. A file that cannot be
# used is never kept: it is parsed, and refused, each time.
_PARSE_MEMO: dict[str, tuple[str, tuple[str, ...]]] = {}


# The same, across processes: every tick is a new process (forked from the worker's template),
# and parsing the project was ~50 ms of each build. Keyed by the text, DuckDB's version (which
# parses it) and this file's code (which reads the parse: ``_PARSER``); only files that parsed as one SELECT are stored, and only by a build
# (``remember_parses``), so a stored parse is what ``_parsed`` would compute again.
STORED_PARSES = "state.parsed_sql"


# Keys of parses this process made and no build of it has stored yet (``remember_parses``).
_UNSTORED: set[str] = set()


# What reads the parse (``tables_read``) lives in this file: a new version of it reads stored
# parses of none of the old texts.
_PARSER = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _parse_key(text: str) -> str:
    return hashlib.sha256(f"{duckdb.__version__}\0{_PARSER}\0{text}".encode()).hexdigest()


def _load_stored_parses(
    con: duckdb.DuckDBPyConnection, texts: Iterable[str], sources: set[str]
) -> None:
    """Put the stored parses of ``texts`` not yet in ``_PARSE_MEMO`` there (one query)."""
    missing = {_parse_key(t): t for t in texts if t not in _PARSE_MEMO}
    if not missing or STORED_PARSES not in sources:
        return
    for key, depends_on in con.execute(
        f"SELECT key, depends_on FROM {STORED_PARSES} WHERE key IN ?", [list(missing)]
    ).fetchall():
        _PARSE_MEMO[missing[key]] = (_stripped(missing[key]), tuple(depends_on))


def _forget_stored(con: duckdb.DuckDBPyConnection, keys: list[str], sources: set[str]) -> None:
    """Take from ``_UNSTORED`` the ``keys`` a committed build stored (asked only after this
    process parsed something: a build that stored them may have been rolled back)."""
    if keys and STORED_PARSES in sources:
        rows = con.execute(f"SELECT key FROM {STORED_PARSES} WHERE key IN ?", [keys]).fetchall()
        _UNSTORED.difference_update(r[0] for r in rows)


def remember_parses(con: duckdb.DuckDBPyConnection, project: Project) -> None:
    """Store the project's parses for the next process, when this one had to parse a file (an
    edited file, a new DuckDB, the first build); replaces what was stored, so parses of texts
    no longer in the project go. Called inside the build's transaction: rolled back with it."""
    if not project.parsed_now:
        return
    con.execute(f"DELETE FROM {STORED_PARSES}")
    if project.parses:
        keys, depends_on = zip(*project.parses, strict=True)
        con.execute(
            f"INSERT INTO {STORED_PARSES} SELECT DISTINCT unnest(?::VARCHAR[]), unnest(?::VARCHAR[][])",
            [list(keys), [list(d) for d in depends_on]],
        )


def _parsed(
    con: duckdb.DuckDBPyConnection, file: str, text: str, read: tuple[str, str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """``read``: the file's SELECT and parse tree when ``_parse_trees`` already has them."""
    found = _PARSE_MEMO.get(text)
    if found is None:
        sql, tree = read or (_single_select(con, file, text), None)
        found = sql, tables_read(con, file, sql, tree)
        if len(_PARSE_MEMO) >= 1024:  # edited files leave old texts behind: bound it
            _PARSE_MEMO.clear()
            _UNSTORED.clear()
        _PARSE_MEMO[text] = found
        _UNSTORED.add(_parse_key(text))
    return found


def _source_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name IN ('raw', 'state') "
        "UNION ALL SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE database_name = current_database() AND schema_name IN ('raw', 'state')"
    ).fetchall()
    return {r[0].lower() for r in rows}


def _order(models: dict[str, Model], broken: list[Broken] | None = None) -> tuple[Model, ...]:
    """Dependency order. A cycle is reported with the files that form it; given ``broken``
    (``keep_going``), its files go there instead, held like any broken file with their readers."""
    while True:
        relations, cycle = dependency_order({r: m.depends_on for r, m in models.items()})
        if cycle is None:
            return tuple(models[r] for r in relations)
        message = (
            "Models depend on each other in a cycle: "
            + " -> ".join(models[r].file for r in cycle)
            + ". Remove one of these references."
        )
        if broken is None:
            raise ModelError(message)
        for relation in dict.fromkeys(cycle):
            broken.append(Broken(models.pop(relation).file, relation, message))


def discover(
    con: duckdb.DuckDBPyConnection, sql_dir: Path | None = None, *, keep_going: bool = False
) -> Project:
    """Read every model and data test under ``sql_dir`` (the project's sql/ unless given) and
    check their references. A file the runner cannot use raises ModelError naming it; with
    ``keep_going`` it is listed in ``Project.broken`` instead (with every model and test that
    reads it through an unusable file, or forms a cycle), and the rest of the project is read."""
    sql_dir = sql_dir or SQL_DIR
    models: dict[str, Model] = {}
    tests: list[DataTest] = []
    broken: list[Broken] = []
    paths = sorted(sql_dir.glob("**/*.sql"))
    sources = _source_tables(con)  # raw.* and state.*
    texts = _texts(paths)
    _load_stored_parses(con, texts.values(), sources)
    trees = _parse_trees(con, texts, sql_dir)
    for path in paths:
        file = _relative(path, sql_dir)
        folder = path.parent.relative_to(sql_dir).parts
        kind = folder[0] if len(folder) == 1 else None
        relation = f"{kind}.{path.stem.lower()}" if kind in MODEL_SCHEMAS else None
        try:
            item = _read_file(con, path, file, kind, texts, trees)
        except ModelError as exc:
            if not keep_going:
                raise
            broken.append(Broken(file, relation, str(exc).removeprefix(f"{file}: ")))
            continue
        if isinstance(item, DataTest):
            tests.append(item)
        elif item.relation in models:  # Loyal.sql beside loyal.sql: neither may win unsaid
            raise ModelError(
                f"{file} and {models[item.relation].file} both build {item.relation}: rename one."
            )
        else:
            models[item.relation] = item
    unusable = {b.relation for b in broken if b.relation}
    everything: list[Model | DataTest] = [*models.values(), *tests]
    for item in everything:
        for dep in item.depends_on:
            if dep not in models and dep not in sources and dep not in unusable:
                schema = dep.split(".", 1)[0]
                hint = "sources are the raw.* and state.* tables"
                if schema in MODEL_SCHEMAS:
                    hint = f"there is no file sql/{schema}/{dep.split('.', 1)[1]}.sql"
                message = f"reads {dep}, which does not exist ({hint})."
                if not keep_going:
                    raise ModelError(f"{item.file}: {message}")
                relation = item.relation if isinstance(item, Model) else None
                broken.append(Broken(item.file, relation, message))
                if relation is not None:  # its readers are held with it, not "missing" too
                    models.pop(relation, None)
                    unusable.add(relation)
                tests = [t for t in tests if t is not item]
                break
    parses = tuple((_parse_key(t), _PARSE_MEMO[t][1]) for t in texts.values() if t in _PARSE_MEMO)
    _forget_stored(con, [key for key, _ in parses if key in _UNSTORED], sources)
    ordered = _order(models, broken if keep_going else None)  # a cycle's files join ``broken``
    return Project(
        models=ordered,
        tests=tuple(tests),
        broken=tuple(broken),
        parses=parses,
        parsed_now=any(key in _UNSTORED for key, _ in parses),
    )


def _texts(paths: list[Path]) -> dict[Path, str]:
    """Each readable file's text (why one cannot be read is said by ``_read_file``)."""
    texts = {}
    for path in paths:
        try:
            texts[path] = path.read_text(encoding="utf-8-sig")  # -sig: no BOM (Windows editors)
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def _parse_trees(
    con: duckdb.DuckDBPyConnection, texts: dict[Path, str], sql_dir: Path
) -> dict[Path, tuple[str, str]]:
    """Each readable file's SQL (one SELECT) and its parse tree, every file's read by one query
    instead of one query per file (a build reads the project every time). A file left out is
    read (and its problem reported) by ``_read_file``."""
    sqls: dict[Path, str] = {}
    for path, text in texts.items():
        if text in _PARSE_MEMO:  # read before in this process: nothing to parse
            continue
        try:
            sqls[path] = _single_select(con, _relative(path, sql_dir), text)
        except ModelError:
            continue
    if not sqls:
        return {}
    serialized = one(
        con,
        "SELECT list_transform(?::VARCHAR[], lambda s: json_serialize_sql(s))",
        [list(sqls.values())],
    )[0]
    return {path: (sql, tree) for (path, sql), tree in zip(sqls.items(), serialized, strict=True)}


def _read_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    file: str,
    kind: str | None,
    texts: dict[Path, str],
    trees: dict[Path, tuple[str, str]],
) -> Model | DataTest:
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
    text = texts[path] if path in texts else read_edited_text(path, ModelError, file)
    sql, depends_on = _parsed(con, file, text, trees.get(path))
    if kind == TESTS_FOLDER:
        return DataTest(name=name, file=file, sql=sql, depends_on=depends_on)
    config = _parse_config(file, text)
    return Model(
        schema=kind,
        name=name,
        file=file,
        sql=sql,
        materialized=config["materialized"],
        key=tuple(c.strip() for c in config.get("key", "").split("+") if c.strip()),
        delete_if_null=config.get("delete_if_null"),
        depends_on=depends_on,
    )
