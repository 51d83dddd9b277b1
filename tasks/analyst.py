"""An analyst's read-only look at a clinic's database: ad-hoc SQL and finding a patient's id.

Both open the database read-only through :func:`tasks.warehouse.open_db` (the file's shared lock),
as every read-only command does: a tick's fast lane that holds the database steps aside for the
read between its polls; a tick's steps or another writer are waited for, up to ``wait_seconds``,
and then the caller hears what holds it. Nothing here can write: DuckDB refuses any statement
that would, and the error says the connection is read-only.

Finding a patient prints ids and which field matched, never the other fields: the analyst typed
the text, so echoing it back adds nothing, and the patient's other details stay in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from tasks.errors import UserFacingError
from tasks.warehouse import open_db


class QueryError(UserFacingError):
    """DuckDB refused the analyst's SQL; its own message is kept, framed with the file."""


def _open(db_path: Path, wait_seconds: float):
    return open_db(db_path, read_only=True, wait_seconds=wait_seconds)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[tuple]
    truncated: bool
    statement: str = ""  # the SQL that gave it, as written


def query(db_path: Path, sql: str, *, limit: int = 50, wait_seconds: float = 30.0) -> Table:
    """Run one read-only statement; at most ``limit`` rows come back (``truncated`` says more exist)."""
    return queries(db_path, sql, limit=limit, wait_seconds=wait_seconds)[-1]


def queries(db_path: Path, sql: str, *, limit: int = 50, wait_seconds: float = 30.0) -> list[Table]:
    """Each statement of ``sql`` (``SELECT ...; SELECT ...``) run in turn, read-only: a table
    each, not only the last one's. DuckDB parses the whole text first, so a typo anywhere runs
    none of them."""
    with _open(db_path, wait_seconds) as con:
        # The clinic's database and nothing else: a statement opening another file (COPY ...
        # TO, read_csv, ATTACH, INSTALL) is refused, so patients' details leave only as printed.
        # (Settable once: a statement cannot turn it back on.)
        con.execute("SET enable_external_access = false")
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(f"{db_path.name}: {_first_line(exc)}") from None
        return [_one(con, db_path, s, limit) for s in statements] or [Table([], [], False)]


def _one(con: duckdb.DuckDBPyConnection, db_path: Path, statement, limit: int) -> Table:
    text = statement.query.strip().rstrip(";").strip()
    try:
        rel = con.sql(statement)
    except duckdb.PermissionException as exc:
        raise QueryError(f"{db_path.name}: {_OUTSIDE} ({_first_line(exc)})") from None
    except duckdb.Error as exc:
        raise QueryError(f"{db_path.name}: {_first_line(exc)}") from None
    if rel is None:  # a statement with no result (e.g. SET): nothing to show
        return Table([], [], False, text)
    try:
        rows = rel.limit(limit + 1).fetchall()
    except duckdb.Error as exc:
        raise QueryError(f"{db_path.name}: {_first_line(exc)}") from None
    return Table(list(rel.columns), rows[:limit], len(rows) > limit, text)


_OUTSIDE = (
    "relay sql reads the clinic's database only: a file outside it (COPY ... TO, read_csv, "
    "ATTACH, INSTALL) is not opened from here"
)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text if len(text) < 2000 else text[:2000] + " ..."


@dataclass(frozen=True)
class Match:
    patient_id: int
    fields: tuple[str, ...]  # which of the searched fields matched
    archived: bool


# What `relay patients find` searches, as marts.patients names it.
SEARCHED = ("first_name", "last_name", "preferred_first_name", "email_normalised", "mobile_e164")


def find_patients(
    db_path: Path, text: str, *, limit: int = 20, wait_seconds: float = 30.0
) -> list[Match]:
    """Patients whose name (a first, preferred or last name, or first-or-preferred then last
    name: "Grace Hopper"), email or SMS number contains ``text`` (case-insensitive; digits of a
    phone number match ignoring spaces and a national leading 0). Returns ids and the matching fields only."""
    needle = " ".join(text.lower().split())
    if len(needle) < 2:
        raise UserFacingError("Give at least 2 characters to search for.")
    # a number as typed locally (0412 345 678) is found in its +61412345678 form: the leading
    # zero of a national number is not in the E.164 form
    digits = "".join(ch for ch in needle if ch.isdigit()).lstrip("0")
    checks = [f"contains(lower(coalesce({f}, '')), $needle)" for f in SEARCHED[:-1]]
    phone = (
        "len($digits) >= 4 AND "
        "contains(regexp_replace(coalesce(mobile_e164, ''), '[^0-9]', '', 'g'), $digits)"
    )
    # a name as a person types it ("Grace Hopper"), first or preferred name then last name
    full = (
        "(contains(lower(concat_ws(' ', first_name, last_name)), $needle) OR "
        "contains(lower(concat_ws(' ', preferred_first_name, last_name)), $needle))"
    )
    matched = ", ".join(
        f"CASE WHEN {c} THEN '{f}' END" for c, f in zip(checks, SEARCHED[:-1], strict=True)
    )
    sql = f"""
        SELECT patient_id, list_filter([{matched}, CASE WHEN {phone} THEN 'mobile_e164' END],
                                       lambda x: x IS NOT NULL) AS fields, is_archived, {full}
        FROM marts.patients
        WHERE {" OR ".join(checks)} OR ({phone}) OR {full}
        ORDER BY is_archived, patient_id
        LIMIT $limit
    """
    with _open(db_path, wait_seconds) as con:
        try:
            rows = con.execute(sql, {"needle": needle, "digits": digits, "limit": limit}).fetchall()
        except duckdb.CatalogException:
            raise UserFacingError(
                f"{db_path.name} has no marts.patients yet: run `relay models build` first."
            ) from None
    return [
        Match(pid, tuple((fields or ["first_name + last_name"]) if full_name else fields),
              bool(archived))
        for pid, fields, archived, full_name in rows
    ]  # fmt: skip
