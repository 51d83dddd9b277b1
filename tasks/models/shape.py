"""What the rest of the system relies on of a model's rows, checked as the build writes them
(tasks/models/tables.py; the rows that came into a segment by difference: every segment's
together, ``check_came``, once the models are built) and when a segment is previewed
(tasks/models/preview.py): key columns
exist; a segment's ``patient_id`` is a whole number, one row per patient, each a patient of
``marts.patients``. Each check raises a DuckDB error, which the runner reports with the model's
file, holding that model and what reads it."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from tasks.models.project import Model
from tasks.warehouse import one


def read_columns(con: duckdb.DuckDBPyConnection, rel: str) -> list[tuple[str, str]]:
    """A table's columns and their types, in order (from DuckDB's relation of it, bound but
    not run: a third of the cost of a query's description, a fraction of information_schema's;
    the same type names as duckdb_columns())."""
    relation = con.table(rel)
    return list(zip(relation.columns, map(str, relation.dtypes), strict=True))


def check_shape(
    con: duckdb.DuckDBPyConnection,
    model: Model,
    rel: str,
    columns: list[tuple[str, str]] | None = None,
    unique: bool = True,
) -> None:
    """What the rest of the system relies on: key columns exist; a segment's patient_id is a
    whole number, and it has one row per patient, each a patient of the whole database
    (``unique``: the rows are checked here). ``columns``: ``rel``'s, when known (else read)."""
    needed = list(model.key) + (["patient_id"] if model.schema == "segments" else [])
    if not needed:
        return
    types = dict(read_columns(con, rel) if columns is None else columns)
    for column in needed:
        if column not in types:
            raise duckdb.BinderException(
                f"the model must return a column named {column}"
                + (" (one row per patient in the segment)" if model.schema == "segments" else "")
            )
    if model.schema != "segments":
        return
    if types["patient_id"] not in PATIENT_ID_TYPES:
        # membership, the planner and the lists compare it with BIGINT patient ids: text there
        # failed the whole build, in membership.py, with the rows' values left out
        raise duckdb.BinderException(
            f"patient_id is {types['patient_id']}; a segment's patient_id is a patient's id "
            "(marts.patients.patient_id, a BIGINT)"
        )
    if unique:
        check_unique(con, rel, ("patient_id",), SEGMENT_ROWS)
        check_patients(con, f"(SELECT patient_id FROM {rel})")


SEGMENT_ROWS = "a segment has one row per patient"

# Whole-number types every value of which is a BIGINT (a patient id).
PATIENT_ID_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"
}  # fmt: skip


def check_patients(
    con: duckdb.DuckDBPyConnection, patient_ids: str, has_patients: bool | None = None
) -> None:
    """Each of ``patient_ids`` (a query of one column, ``patient_id``) names a patient of the
    whole database (marts.patients: not deleted; archived ones are patients). A segment of
    appointment ids or NULLs would otherwise be built, previewed and sent to by id. Asked only
    where the project has marts.patients (it is built before every segment); ``has_patients``:
    whether it has, when the caller knows (else the catalog is asked: a statement a call)."""
    if has_patients is None:
        has_patients = one(
            con,
            "SELECT EXISTS (SELECT 1 FROM duckdb_views() WHERE database_name = current_database() "
            "AND schema_name = 'marts' AND view_name = 'patients') OR EXISTS (SELECT 1 FROM "
            "duckdb_tables() WHERE database_name = current_database() AND schema_name = 'marts' "
            "AND table_name = 'patients')",
        )[0]
    if not has_patients:
        return
    unknown = one(con, f"SELECT count(*) FROM {patient_ids} AS s WHERE {_UNKNOWN}")[0]
    if unknown:
        raise _not_patients(unknown)


# A row of ``s`` whose patient_id names no patient of the whole database.
_UNKNOWN = (
    "s.patient_id IS NULL OR NOT EXISTS "
    "(SELECT 1 FROM marts.patients p WHERE p.patient_id = s.patient_id)"
)


def _not_patients(unknown: int) -> duckdb.ConstraintException:
    return duckdb.ConstraintException(
        f"{unknown} row(s) with a patient_id that is not a patient (NULL, or not in "
        "marts.patients: an appointment's id, a deleted patient); a segment is a set of "
        "patients"
    )


# The rows that came into segments' tables by difference this build (tasks/models/tables.py
# replace_changed_rows), checked together when the models are built: ``check_came``.
CAME = "relay_segment_came"
# marts.patients' patient ids as the build found them (``remember_patients``).
BEFORE = "relay_patients_before"


def remember_patients(con: duckdb.DuckDBPyConnection) -> bool:
    """Keep marts.patients' patient ids as the last commit left them (in ``BEFORE``), for
    ``check_came`` to tell who left it in this build. Run before the build's transaction: a
    marts.patients that cannot be read (none yet, a view its held file left behind) fails
    only this statement, not the build. Whether they were kept."""
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {BEFORE} AS SELECT patient_id FROM marts.patients"
        )
    except duckdb.Error:
        con.execute(f"DROP TABLE IF EXISTS {BEFORE}")
        return False
    return True


def check_came(
    con: duckdb.DuckDBPyConnection,
    segments: Sequence[tuple[str, str]],
    has_patients: bool,
    every: Sequence[tuple[str, str]] = (),
    remembered: bool = False,
) -> tuple[str, duckdb.Error] | None:
    """What ``check_unique`` and ``check_patients`` ask of a segment, asked of the rows that
    came into each of ``segments`` ((relation, its table) whose old rows were checked when
    written; the patient ids that came in ``CAME``), in one statement instead of two a
    segment (~5 ms each). A patient on two rows is on a row that came; the old rows had no
    NULL. An old row was a patient when written: a patient who has left marts.patients since
    the build began (``remembered``: in ``BEFORE``; deleted in Cliniko) is looked for in
    ``every`` segment (relation, table or view) built or kept, only when someone left.
    Returns the first segment failing (in ``segments``' then ``every``'s order) and why."""
    failing: dict[tuple[str, str], int] = {}
    if segments:
        rows = " UNION ALL ".join(
            f"SELECT $r{i} AS relation, patient_id FROM {rel} WHERE patient_id IS NULL OR "
            f"patient_id IN (SELECT patient_id FROM {CAME} WHERE relation = $r{i})"
            for i, (_, rel) in enumerate(segments)
        )
        # marts.patients (a view of joins) read once for every segment's rows, not once each
        unknown = f"SELECT relation, count(*) FROM {CAME} AS s WHERE {_UNKNOWN} GROUP BY ALL"
        found = con.execute(
            f"SELECT relation, count(*), 'duplicates' FROM (SELECT relation, patient_id FROM "
            f"({rows}) GROUP BY ALL HAVING count(*) > 1) GROUP BY ALL"
            + (f" UNION ALL SELECT *, 'unknown' FROM ({unknown})" if has_patients else ""),
            {f"r{i}": relation for i, (relation, _) in enumerate(segments)},
        ).fetchall()
        failing |= {(relation, kind): n for relation, n, kind in found}
    gone = f"SELECT patient_id FROM {BEFORE} EXCEPT SELECT patient_id FROM marts.patients"
    if every and remembered and has_patients and one(con, f"SELECT count(*) FROM ({gone})")[0]:
        came = {relation for relation, _ in segments}  # their rows that came: counted above
        kept = " UNION ALL ".join(
            f"SELECT $r{i} AS relation, patient_id FROM {rel}"
            + (
                f" WHERE patient_id NOT IN (SELECT patient_id FROM {CAME} WHERE relation = "
                f"$r{i} AND patient_id IS NOT NULL)"
                if relation in came
                else ""
            )
            for i, (relation, rel) in enumerate(every)
        )
        found = con.execute(
            f"SELECT relation, count(*) FROM ({kept}) WHERE patient_id IN ({gone}) GROUP BY ALL",
            {f"r{i}": relation for i, (relation, _) in enumerate(every)},
        ).fetchall()
        failing |= {(relation, "left"): n for relation, n in found}
    for relation, _ in [*segments, *every]:
        if n := failing.get((relation, "duplicates")):
            return relation, _duplicates(n, ("patient_id",), SEGMENT_ROWS)
        if n := failing.get((relation, "unknown"), 0) + failing.get((relation, "left"), 0):
            return relation, _not_patients(n)
    return None


def check_unique(
    con: duckdb.DuckDBPyConnection, rel: str, key: tuple[str, ...], why: str = ""
) -> None:
    columns = ", ".join(f'"{c}"' for c in key)
    duplicates = one(
        con, f"SELECT count(*) FROM (SELECT {columns} FROM {rel} GROUP BY ALL HAVING count(*) > 1)"
    )[0]
    if duplicates:
        raise _duplicates(duplicates, key, why)


def _duplicates(duplicates: int, key: tuple[str, ...], why: str) -> duckdb.ConstraintException:
    return duckdb.ConstraintException(
        f"{duplicates} value(s) of {'+'.join(key)} appear on more than one row; "
        + (why or "the key must be unique")
    )
