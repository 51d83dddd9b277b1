"""A clinic's DuckDB file: opening it safely, its schemas, and transactions.

DuckDB lets one process write a file, and a read-only open fails while a writer holds it. So every
open goes through an advisory lock file beside the database: writers take it exclusively (a second
tick for the same clinic waits, then fails clearly), readers share it. A reader that finds the
database held asks the holder to step aside (a marker in ``<db>.readers``): the fast lane, which
holds it between its polls until the next tick, does (``step_aside``); a tick's steps and other
writers are waited for. Tables in ``raw`` and ``state`` are created here;
``staging``/``marts``/``segments`` belong to the SQL model runner.

Timestamps are TIMESTAMPTZ and every connection runs in UTC, so comparisons never depend on the
machine's time zone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tasks.cliniko import fields as parsed_fields
from tasks.cliniko.resources import RESOURCES
from tasks.dblock import (
    FAST_LANE,
    READERS_CAP,
    TICK,
    DatabaseBusy,
    acquire,
    file_lock,
    note,
    release,
    sidecar,
)
from tasks.dblock import in_use as in_use  # re-exported: callers ask the warehouse
from tasks.dblock import readers_waiting as readers_waiting
from tasks.errors import UserFacingError

SCHEMA_DIR = Path(__file__).parent / "schema"
SCHEMAS = ("raw", "state", "staging", "marts", "segments")


class NoDatabase(UserFacingError, FileNotFoundError):
    """A read of a clinic whose database does not exist yet: one line saying what to run."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"No database yet at {path}: run a sync for this clinic first "
            "(`relay sync --clinic CLINIC`, or `make demo` for the demo clinic)."
        )


# A raw row as the sync writes it, without the parsed ``fields`` some tables add (left NULL, a
# build parses them: tasks/cliniko/fields.py): for code that writes raw rows itself (tests).
RAW_COLUMNS = "(id, updated_at, payload, synced_at, removed_at)"


def raw_table_ddl(table: str) -> str:
    # id is Cliniko's 64-bit id; payload is exactly what Cliniko sent (never lose a field);
    # removed_at is set by the id reconciliation when Cliniko stops returning the row (hard delete).
    return f"""
        CREATE TABLE IF NOT EXISTS {table} (
            id          BIGINT PRIMARY KEY,
            updated_at  TIMESTAMPTZ,
            payload     JSON NOT NULL,
            synced_at   TIMESTAMPTZ NOT NULL,
            removed_at  TIMESTAMPTZ
        )"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every schema and table this code relies on. Idempotent; safe on every open."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for resource in RESOURCES:
        con.execute(raw_table_ddl(resource.table))
    for ddl in sorted(SCHEMA_DIR.glob("*.sql")):
        con.execute(ddl.read_text(encoding="utf-8"))
    # raw tables' parsed fields column (tasks/cliniko/fields.py): added, or re-parsed, once
    parsed_fields.migrate(con)
    _unkeyed(con)


# Tables an older database made with a primary key they no longer have (tasks/schema/
# 40_membership.sql says why), and the order their rows go back in.
_UNKEYED = {"audience_members": "audience, member_key", "membership_events": "event_id"}


def _unkeyed(con: duckdb.DuckDBPyConnection) -> None:
    """An older database's tables of ``_UNKEYED`` that still have their primary key are made
    again without it, with the same rows, in one transaction (DuckDB cannot drop a
    constraint; a kill rolls it back and the next open does it again). One catalog read when
    there is nothing to do."""
    keyed = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'state' AND table_name IN ? AND contains(sql, 'PRIMARY KEY') "
            "ORDER BY table_name",
            [list(_UNKEYED)],
        ).fetchall()
    ]
    if not keyed:
        return
    with transaction(con):
        for table in keyed:
            con.execute(f"CREATE TABLE state.relay_unkeyed_{table} AS FROM state.{table}")
            con.execute(f"DROP TABLE state.{table}")
        con.execute((SCHEMA_DIR / "40_membership.sql").read_text(encoding="utf-8"))
        for table in keyed:
            con.execute(
                f"INSERT INTO state.{table} "
                f"FROM state.relay_unkeyed_{table} ORDER BY {_UNKEYED[table]}"
            )
            con.execute(f"DROP TABLE state.relay_unkeyed_{table}")


def _configure(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET TimeZone = 'UTC'")


# Rows per row group in the clinic's file, a quarter of DuckDB's default (122,880). DuckDB
# scans and writes a table one row group per thread, so at the default a table of a clinic's
# patients (a list, a segment, marts.patient_rows: 100,000 rows) ran on one core and, too small
# to be written as its statement runs, was compressed by the commit's checkpoint, on one core
# too. At 32,768 they take every core (the full build a fifth faster, its commit nearly free;
# docs/scaling.md has the figures and the other sizes tried). A setting of the open, not of the
# file: rows written before keep their row groups until their table is rewritten, and any
# DuckDB reads the file as before.
ROW_GROUP_SIZE = 32_768
# Names DuckDB keeps for itself: a file named so is attached as "clinic" instead.
_RESERVED_NAMES = {"memory", "temp", "system", "main"}


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """The clinic's file, attached with ``ROW_GROUP_SIZE`` (an option DuckDB takes only when
    attaching) and made the default database under its usual name (the file's stem, as
    ``duckdb.connect(path)`` names it); the empty in-memory database it was attached from is
    detached, so a cursor of the connection opens on the clinic's file too. Closing the
    connection checkpoints the file as before."""
    # Spills beside the file, where duckdb.connect(path) puts them (not the working directory).
    con = duckdb.connect(":memory:", config={"temp_directory": f"{path}.tmp"})
    try:
        name = path.stem if path.stem.lower() not in _RESERVED_NAMES else "clinic"
        quoted_name = '"' + name.replace('"', '""') + '"'
        quoted_path = "'" + str(path).replace("'", "''") + "'"
        options = f"ROW_GROUP_SIZE {ROW_GROUP_SIZE}" + (", READ_ONLY" if read_only else "")
        try:
            con.execute(f"ATTACH {quoted_path} AS {quoted_name} ({options})")
        except duckdb.IOException as exc:
            if "Could not set lock" not in str(exc):
                raise
            # Relay's own runs never get here (they wait on the lock file): another program
            # opened the file itself, a DuckDB shell or a notebook. Said at once, in one line.
            raise DatabaseBusy(
                f"{path} is open in another program, outside relay (a DuckDB shell, a notebook, "
                "a BI tool): close it there and try again (relay's runs need the file to "
                f"themselves; `relay sql` reads it in turn with them). {exc}"
            ) from None
        con.execute(f"USE {quoted_name}")
        con.execute("DETACH memory")
    except BaseException:
        con.close()
        raise
    return con


# Databases a ``hold`` in this process has locked, with the connection it keeps open: opens of
# them pass through the lock and get a cursor of that connection.
@dataclass
class _Hold:
    con: duckdb.DuckDBPyConnection | None  # None while stepped aside for readers
    lock: int | None  # the lock file's descriptor, holding it exclusively (None: stepped aside)
    presence: int  # the ``.hold`` file's descriptor, locked (shared) for the whole hold
    holder: str  # what holds it, as a waiting open is told


_held: dict[Path, _Hold] = {}
_held_guard = threading.Lock()
# Database-wide settings a step may change (DuckDB has no per-cursor value for these).
_DATABASE_SETTINGS = ("memory_limit", "threads")


def _open_writer(path: Path) -> duckdb.DuckDBPyConnection:
    con = _connect(path, read_only=False)
    try:
        _configure(con)
        ensure_schema(con)
    except BaseException:
        con.close()
        raise
    return con


@contextlib.contextmanager
def open_db(
    db_path: str | Path,
    *,
    read_only: bool = False,
    wait_seconds: float = 600.0,
    create: bool = True,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a clinic database (creating it and its tables when writable), holding the lock.
    A read, or a write with ``create=False`` (a step that means nothing before the first sync),
    of a database that does not exist yet raises :class:`NoDatabase`.

    A read that finds the database held asks the holder to step aside while it waits and
    reads (``readers_waiting``): the fast lane does, between its polls; a tick's steps and
    other writers do not, and are waited for."""
    path = Path(db_path)
    if (read_only or not create) and not path.exists():
        raise NoDatabase(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held_guard:
        held = _held.get(path.resolve())
    if held is not None:
        if held.con is None:
            raise RuntimeError(f"{path} is held by this process but stepped aside for readers")
        # Inside a hold: a cursor of the held connection (its own transactions and settings;
        # one database instance, so no reopening and no second schema check per step).
        connection = held.con
        cursor = connection.cursor()
        try:
            _configure(cursor)
            yield cursor
        finally:
            cursor.close()
            # Some settings are the database's, not the cursor's (a sync bounds memory_limit):
            # reset them so the next step starts as it would on a fresh open.
            for setting in _DATABASE_SETTINGS:
                connection.execute(f"RESET GLOBAL {setting}")
        return
    with file_lock(path, exclusive=not read_only, wait_seconds=wait_seconds, asks=read_only):
        con = _connect(path, read_only) if read_only else _open_writer(path)
        try:
            if read_only:
                _configure(con)
            yield con
        finally:
            con.close()


@contextlib.contextmanager
def hold(db_path: str | Path, *, wait_seconds: float = 600.0) -> Iterator[None]:
    """Keep a clinic's database to this process across several opens: a tick's steps each open
    it, and no other run may slip in between them. Opens in this process pass through; other
    processes wait (or get DatabaseBusy), as they would for one long open.

    The database stays open for the whole hold (created and its tables checked once), and each
    open inside it is a cursor of that connection: a tick's dozen opens cost one. Only
    :func:`step_aside` lets go of it inside a hold (for readers, between the fast lane's polls);
    ``in_use`` sees the hold throughout."""
    path = Path(db_path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held_guard:
        if path in _held:
            raise RuntimeError(f"{path} is already held by this process")
    presence = os.open(sidecar(path, ".hold"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        lock = acquire(path, True, wait_seconds, holder=TICK)
        held = _Hold(None, lock, presence, TICK)
        try:
            # shared: another process's hold stepped aside for readers keeps its own
            fcntl.flock(presence, fcntl.LOCK_SH)
            held.con = _open_writer(path)
            with _held_guard:
                _held[path] = held
            try:
                yield
            finally:
                with _held_guard:
                    del _held[path]
        finally:
            if held.con is not None:
                held.con.close()
            if held.lock is not None:
                release(held.lock, exclusive=True)
    finally:
        os.close(presence)


def _held_here(db_path: str | Path) -> tuple[Path, _Hold]:
    path = Path(db_path).resolve()
    with _held_guard:
        held = _held.get(path)
    if held is None:
        raise RuntimeError(f"{path} is not held by this process")
    return path, held


def describe_hold(db_path: str | Path, holder: str) -> None:
    """Say what holds this process's hold of the database now (``FAST_LANE`` after a tick's
    steps): what an open waiting for it is told."""
    _, held = _held_here(db_path)
    held.holder = holder
    if held.lock is not None:
        note(held.lock, holder)


def step_aside(db_path: str | Path, *, until: float, cap: float = READERS_CAP) -> str | None:
    """Inside a hold, between pieces of work, with every cursor of it closed: let readers in.
    Closes the held connection, lets go of the lock, waits while live readers ask for the
    database (``readers_waiting``; at most ``cap`` seconds, not past the monotonic moment
    ``until``), then takes the lock back (waiting as an open does, until ``until`` at the
    latest) and reopens. Returns None when the database is held again, or why not (the hold
    then holds nothing; ending it is safe)."""
    path, held = _held_here(db_path)
    if held.con is None or held.lock is None:
        raise RuntimeError(f"{path} is stepped aside already")
    held.con.close()  # DuckDB's file lock first, then ours
    held.con = None
    release(held.lock, exclusive=True)
    held.lock = None
    end = min(time.monotonic() + cap, until)
    while time.monotonic() < end and readers_waiting(path):
        time.sleep(0.2)
    try:
        held.lock = acquire(path, True, max(0.0, until - time.monotonic()), holder=held.holder)
    except DatabaseBusy:
        return "the database was still in use when the next tick was due (readers, or a writer)"
    try:
        held.con = _open_writer(path)
    except BaseException:
        release(held.lock, exclusive=True)
        held.lock = None
        raise
    return None


class HandOver:
    """This process's hold of a database, handed over to readers on request: for a holder
    that waits between pieces of work (the fast lane, tasks/lane.py). ``asked`` is a look at
    the readers' folder (nothing when none waits); ``step_aside`` is :func:`step_aside`.
    Made inside the hold, it notes ``holder`` in the lock file for those who wait."""

    def __init__(
        self, db_path: str | Path, holder: str = FAST_LANE, cap: float = READERS_CAP
    ) -> None:
        self.path, self.cap = Path(db_path).resolve(), cap
        describe_hold(self.path, holder)

    def asked(self) -> bool:
        return readers_waiting(self.path)

    def step_aside(self, until: float) -> str | None:
        return step_aside(self.path, until=until, cap=self.cap)


def memory_db() -> duckdb.DuckDBPyConnection:
    """An in-memory database with every table: for unit tests and dry runs."""
    con = duckdb.connect(":memory:")
    _configure(con)
    ensure_schema(con)
    return con


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: commit on success, roll back on any exception (including KeyboardInterrupt)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


# DuckDB errors whose message may quote a value a statement read: a conversion or a value out
# of range (DataError), a duplicate key (IntegrityError: 'Duplicate key "email: ..."'), a string
# a function could not read (InvalidInputException: strptime, JSON, which quotes its whole input).
DATA_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException)

# A quoted span, from a line's first quote to its last of the same kind: a value holding a
# quote of its own (O'Brien, a JSON document) goes whole, not in pieces. Unquoted, an email
# address or a phone-like number (from an analyst's error(), a value out of range) goes too.
_QUOTED = (re.compile(r"'.*'"), re.compile(r'".*"'))
_UNQUOTED = re.compile(r"\S+@\S+|\+?\d[\d ().-]{4,}\d")
_APOSTROPHE = re.compile(r"(?<=[A-Za-z])'(?=[A-Za-z])")  # can't, isn't: no quote


# Messages that show a value without quoting it: RE2's "<what>: <the pattern, or a piece>" (a
# pattern built from a column: regexp_matches(x, first_name)), a strftime format built from one.
_UNQUOTED_VALUES = (
    re.compile(
        r"Invalid Input Error: (?:missing [)\]]|unexpected \)|invalid [A-Za-z0-9 -]+"
        r"|no argument for repetition operator|bad repetition operator): (.+)"
    ),
    re.compile(r"Invalid Input Error: Failed to parse format specifier (.+?)(?:: .*)?"),
)

# The message of SQL's error(): whatever text the statement gave it, a patient's name too
# (error(first_name || ' ' || last_name)), unquoted and unmarked.
_RAISED = "Invalid Input Error: "
_ERROR_CALL = re.compile(r"\berror\s*\(", re.IGNORECASE)


def duckdb_message(exc: BaseException, sql: str | None = None) -> str:
    """DuckDB's message, fit for logs, Prefect and state tables. An error about data
    (``DATA_ERRORS``) keeps its first line only (the lines after it echo the input or the
    statement), without what it quotes (``'…'``), an ``Input:`` it shows, an address or a long
    number, RE2's piece of a pattern and a strftime format (``_UNQUOTED_VALUES``), and is cut
    at a quote left over; when anything went, the message says so. Errors
    about the SQL (a column not found, a syntax error) are kept whole: they name the analyst's
    own words, and what to fix. ``sql``: the statement's text, when it is an analyst's file:
    an error() it calls raised a message of its own, kept when it is a literal of that file,
    else left out (it is built from the rows it read); so is a pattern or format."""
    text = str(exc).strip()
    if not isinstance(exc, DATA_ERRORS):
        return text
    first = text.split("\n", 1)[0].strip()
    if isinstance(exc, duckdb.InvalidInputException) and sql and _ERROR_CALL.search(sql):
        said = first.removeprefix(_RAISED)
        if first.startswith(_RAISED) and said and said not in sql:
            return (
                f"{_RAISED}(message left out: the SQL calls error(), whose message may be "
                "built from a patient's values; read it with `relay sql` on the statement)"
            )
        if said in sql:
            return first
    for unquoted in _UNQUOTED_VALUES:
        found = unquoted.fullmatch(first)
        if found and not (sql and found[1] in sql):  # in the file: the analyst's own words
            cut = f"{first[: found.start(1)]}…{first[found.end(1) :]}"
            return f"{cut} (values left out: they may be a patient's)"
    line = _APOSTROPHE.sub("\x01", text.split("\n", 1)[0].split(" Input:", 1)[0])
    for quoted in _QUOTED:
        line = quoted.sub("\x00", line)
    line = _UNQUOTED.sub("…", re.split("['\"]", line, maxsplit=1)[0])
    line = line.replace("\x00", "'…'").replace("\x01", "'").strip()
    if line != text.split("\n", 1)[0].strip():  # said, so that '…' is not read as the value
        line += " (values left out: they may be a patient's)"
    return line


@contextlib.contextmanager
def data_out_of_errors() -> Iterator[None]:
    """Around the code whose exceptions reach Prefect (logged with their traceback, kept as a
    task's or flow's state message, put in the tick's summary): a DuckDB error about data
    (``DATA_ERRORS``) leaves as the same error with the message ``duckdb_message`` makes of it,
    the original suppressed, so a value a statement read (a patient's phone number, an email in
    a duplicate key) never does. A decorator too (``@data_out_of_errors()``): Prefect's task
    decorator goes outside it; a flow's body is a ``with`` block instead (Prefect versions a
    flow by the file its function's code is in)."""
    try:
        yield
    except DATA_ERRORS as exc:
        safe = type(exc)(duckdb_message(exc))
    else:
        return
    raise safe from None


def one(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (an aggregate without GROUP BY, a SELECT
    of expressions, an UPDATE's count): DuckDB's ``fetchone()`` is typed as maybe None, and here
    None would be a bug, said plainly rather than as "'NoneType' is not subscriptable"."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        query = " ".join(sql.split())
        raise RuntimeError(f"no row from a query that always returns one (a bug): {query[:120]}")
    return row


def relation_exists(con: duckdb.DuckDBPyConnection, relation: str) -> bool:
    """Whether ``schema.name`` is a table or view in this database yet (models not built, a
    resource not synced): one home for the question the planners and reports ask."""
    schema, name = relation.split(".")
    return bool(
        one(
            con,
            "SELECT count(*) FROM (SELECT schema_name, table_name FROM duckdb_tables() UNION ALL "
            "SELECT schema_name, view_name FROM duckdb_views()) WHERE schema_name = ? "
            "AND table_name = ?",
            [schema, name],
        )[0]
    )
