"""A raw record's fields, parsed once: when the sync writes the record, not at every build.

A full model build used to parse every payload of ``raw.individual_appointments`` (2,000,000 at
100,000 patients): a third of its CPU. Now the row the sync writes carries, beside the payload
exactly as sent, a ``fields`` column: the payload fields staging reads, typed (timestamps,
integers, booleans, ids from links). The row and its fields are one INSERT, so they can never
disagree, and a kill loses nothing it did not lose before. A build reads ``fields.<name>``
(sql/staging/individual_appointments.sql).

Each parsed resource is declared here once: the payload path of every field and its type.
From that one declaration come the ``fields`` column's type, the SQL the writer (and the
migration, and the benchmark's generator) computes it with, and the payload fields the staging
conformance test checks against Cliniko's documentation. Parsing is the same as staging did:
each path read as text in one ``json_extract_string(payload, [paths])`` call, then typed with
``try_cast`` (``""`` and wrong types become NULL), links cut to their last path segment.

Existing databases are migrated when opened for writing (``migrate``, from
``tasks.warehouse.ensure_schema``): the column is added and filled from the payloads, in one
transaction. The column's comment is a digest of the declaration, so a changed declaration
re-parses every row, and forgets every model's fingerprint so the next build rebuilds in full
from the new fields. ``fields.synced_at`` is the write it was parsed from: a row written
some other way (SQL in a test, a tool) without its fields, or with a newer ``synced_at`` than
theirs, is parsed by the next build (``fill_missing``), so staging never reads a missing or
stale field. (Every write must advance ``synced_at`` anyway: it is how an incremental model
sees a change.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb

# The id at the end of a link URL, ignoring a query string: ".../patients/82?x=1" -> 82 (the
# models' cliniko_link_id macro says the same; string splitting, a third of a regex's cost).
_LINK_ID = "try_cast(split_part(split_part({v}, '?', 1), '/', -1) AS BIGINT)"
_TYPED = {
    "TIMESTAMPTZ": "try_cast({v} AS TIMESTAMPTZ)",
    "INTEGER": "try_cast({v} AS INTEGER)",
    "BOOLEAN": "try_cast({v} AS BOOLEAN)",
    "VARCHAR": "{v}",
    "LINK": _LINK_ID,  # a link's id, BIGINT
}
_SQL_TYPE = {"LINK": "BIGINT"}


@dataclass(frozen=True)
class Field:
    name: str  # the column's name inside ``fields``
    path: str  # JSON path in the payload, e.g. '$.patient.links.self'
    kind: str  # one of _TYPED's keys

    @property
    def payload_field(self) -> str:
        """The top-level payload field it reads (what Cliniko's documentation lists)."""
        return self.path.removeprefix("$.").split(".", 1)[0]


def _link(name: str) -> Field:
    return Field(f"{name}_id", f"$.{name}.links.self", "LINK")


PARSED: dict[str, tuple[Field, ...]] = {
    "individual_appointments": (
        Field("created_at", "$.created_at", "TIMESTAMPTZ"),
        Field("updated_at", "$.updated_at", "TIMESTAMPTZ"),
        Field("starts_at", "$.starts_at", "TIMESTAMPTZ"),
        Field("ends_at", "$.ends_at", "TIMESTAMPTZ"),
        Field("cancelled_at", "$.cancelled_at", "TIMESTAMPTZ"),
        Field("cancellation_reason", "$.cancellation_reason", "INTEGER"),
        Field("archived_at", "$.archived_at", "TIMESTAMPTZ"),
        Field("deleted_at", "$.deleted_at", "TIMESTAMPTZ"),
        Field("did_not_arrive", "$.did_not_arrive", "BOOLEAN"),
        Field("patient_arrived", "$.patient_arrived", "BOOLEAN"),
        Field("booking_ip_address", "$.booking_ip_address", "VARCHAR"),
        _link("patient"),
        _link("practitioner"),
        _link("business"),
        _link("appointment_type"),
    ),
}


def column_type(resource: str) -> str:
    """The ``fields`` column's type: a STRUCT of the declared fields, then ``synced_at``, the
    write of the row they were parsed from."""
    members = [f'"{f.name}" {_SQL_TYPE.get(f.kind, f.kind)}' for f in PARSED[resource]]
    return "STRUCT(" + ", ".join([*members, '"synced_at" TIMESTAMPTZ']) + ")"


def parse_sql(resource: str) -> str:
    """A SQL expression computing ``fields`` from a raw row's ``payload`` and ``synced_at``
    columns, parsing the payload once."""
    specs = PARSED[resource]
    paths = ", ".join(f"'{f.path}'" for f in specs)
    members = ", ".join(
        f'"{f.name}" := ' + _TYPED[f.kind].format(v=f"f[{i}]") for i, f in enumerate(specs, 1)
    )
    # one parse per row: the list of texts goes into a lambda that types each member
    return (
        f"list_transform([json_extract_string(payload, [{paths}])], "
        f"lambda f: struct_pack({members}, synced_at := synced_at))[1]::{column_type(resource)}"
    )


def digest(resource: str) -> str:
    """What ``fields`` was computed by (kept as the column's comment)."""
    return "relay-fields:" + hashlib.sha256(parse_sql(resource).encode()).hexdigest()[:16]


def payload_fields(resource: str) -> set[str]:
    """The top-level payload fields the sync parses into ``fields`` (none when not parsed)."""
    return {f.payload_field for f in PARSED.get(resource, ())}


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Give each parsed raw table its ``fields`` column, computed by the current declaration:
    added (or re-computed, when its comment names another declaration) and filled from the
    payloads in one transaction; a kill rolls it back and the next open does it again. Cheap
    when nothing is to do (one catalog read). Returns the tables it changed."""
    current = {
        table: comment
        for table, comment in con.execute(
            "SELECT table_name, comment FROM duckdb_columns() WHERE schema_name = 'raw' "
            "AND column_name = 'fields' AND database_name = current_database()"
        ).fetchall()
    }
    changed = [name for name in PARSED if current.get(name, "") != digest(name)]
    if not changed:
        return []
    con.execute("SET enable_progress_bar = false")
    con.execute("BEGIN TRANSACTION")
    try:
        for name in changed:
            if name in current:
                con.execute(f"ALTER TABLE raw.{name} DROP COLUMN fields")
            con.execute(f"ALTER TABLE raw.{name} ADD COLUMN fields {column_type(name)}")
            con.execute(f"UPDATE raw.{name} SET fields = {parse_sql(name)}")
            con.execute(f"COMMENT ON COLUMN raw.{name}.fields IS '{digest(name)}'")
        # Rows staging read from the old fields: every model is rebuilt in full next time.
        con.execute("DELETE FROM state.model_fingerprints")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return changed


def fill_missing(con: duckdb.DuckDBPyConnection) -> int:
    """Parse the rows written without ``fields``, or rewritten since their fields were parsed
    (``fields.synced_at`` is not the row's: not written by the sync's writer, e.g. SQL in a
    test); inside the caller's transaction. Reads two timestamp columns when there are none."""
    filled = 0
    for name in PARSED:
        # ids first: an UPDATE filtered on two columns reads every payload (0.4-1 s at 2M)
        ids = [
            r[0]
            for r in con.execute(
                f"SELECT id FROM raw.{name} WHERE fields.synced_at IS DISTINCT FROM synced_at"
            ).fetchall()
        ]
        if ids:
            con.execute(
                f"UPDATE raw.{name} SET fields = {parse_sql(name)} "
                "WHERE id IN (SELECT unnest($ids::BIGINT[]))",
                {"ids": ids},
            )
            filled += len(ids)
    return filled
