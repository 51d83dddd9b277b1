"""A segment as its file stands now, against the last good tables: ``relay preview segment``.

Reads only (a temporary table), and works after a failed build: the tables it compares with are
the last good ones, whichever models the latest build left as they were."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from tasks.messages.channels import MARKETING_LISTS
from tasks.models.project import ModelError, discover
from tasks.models.shape import check_shape
from tasks.warehouse import duckdb_message, one


def _require_built(con: duckdb.DuckDBPyConnection, project, segment) -> None:
    """A model the segment reads that has a file but no table yet (added since the last build)
    is named with its file, and what to run: not DuckDB's 'does not exist! Did you mean ...'."""
    files = {m.relation: m.file for m in project.models}
    existing = {
        f"{schema}.{name}"
        for schema, name in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() UNION ALL "
            "SELECT schema_name, view_name FROM duckdb_views()"
        ).fetchall()
    }
    unbuilt = [r for r in segment.depends_on if r in files and r not in existing]
    if unbuilt:
        names = ", ".join(f"{r} ({files[r]})" for r in unbuilt)
        raise ModelError(
            f"{segment.file}: reads {names}, not built yet: a preview reads the last build's "
            "tables. Run `relay models build`, then preview again."
        )


@dataclass
class SegmentPreview:
    """A segment as its file stands now, against the models of the last build. ``sample`` holds
    names and emails: for the analyst's terminal only, never logs or artifacts."""

    relation: str
    size: int
    on_email_list: int
    on_sms_list: int
    reads: tuple[str, ...]  # the models its SQL reads (the last good tables, if held)
    recorded: bool  # the audience has a membership history (built before)
    joined: int  # would join, compared with the members recorded at the last build
    left: int
    sample: list[tuple[int, str | None, str | None]]


def preview_segment(
    con: duckdb.DuckDBPyConnection, name: str, *, sample_size: int = 10, sql_dir: Path | None = None
) -> SegmentPreview:
    """Run ``sql/segments/<name>.sql`` without writing anything and compare with its members."""
    project = discover(con, sql_dir, keep_going=True)
    # the file as a terminal completes it (a path, with or without .sql), or as the build
    # names it (segments.<name>, a lower-cased file name)
    stem = Path(name).name.removesuffix(".sql").removeprefix("segments.")
    relation = f"segments.{stem.lower()}"
    broken = next((b for b in project.broken if b.relation == relation), None)
    if broken is not None:
        raise ModelError(f"{broken.file}: {broken.message}")
    if relation not in {m.relation for m in project.segments}:
        known = ", ".join(m.name for m in project.segments) or "none"
        raise ModelError(f"No segment '{name}' (sql/segments/{stem}.sql). Segments: {known}.")
    segment = project.model(relation)
    _require_built(con, project, segment)
    try:
        # the shape the build requires (a patient_id column, one row per patient), said the same
        con.execute(f"CREATE OR REPLACE TEMP TABLE relay_preview_rows AS {segment.sql}")
        check_shape(con, segment, "relay_preview_rows")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE relay_preview AS "
            "SELECT DISTINCT patient_id FROM relay_preview_rows"
        )
    except duckdb.Error as exc:
        raise ModelError(f"{segment.file}: {duckdb_message(exc, segment.sql)}") from None
    (size,) = one(con, "SELECT count(*) FROM relay_preview")
    on_email, on_sms = (
        one(
            con,
            f"SELECT count(*) FROM {MARKETING_LISTS[channel].table} WHERE status = 'subscribed' "
            "AND patient_id IN (SELECT patient_id FROM relay_preview)",
        )[0]
        for channel in ("email", "sms")
    )
    recorded, joined, left = one(
        con,
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
    )
    sample = con.execute(
        "SELECT p.patient_id, p.greeting_name, p.email FROM relay_preview s "
        "JOIN marts.patients p USING (patient_id) ORDER BY p.patient_id LIMIT ?",
        [sample_size],
    ).fetchall()
    con.execute("DROP TABLE relay_preview")
    return SegmentPreview(
        relation, size, on_email, on_sms, segment.depends_on, recorded, joined, left, sample
    )
