"""Who is in each marketing list and segment, build after build: ``state.audiences``,
``state.audience_members`` and the append-only ``state.membership_events`` that journeys start
from. Recorded inside the build's transaction, after the data tests, so a failed build records
nobody joining or leaving.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import duckdb

from tasks.messages.channels import MARKETING_LISTS
from tasks.models.project import Project


def _audience_queries(project: Project) -> dict[str, str]:
    """Each audience and its members (address or patient id as the member key, patient id): the
    subscribed rows of each marketing list that was built, and every segment."""
    built = {m.relation for m in project.models}
    queries = {
        lst.audience: f"SELECT {lst.address_column}, patient_id FROM {lst.table} "
        "WHERE status = 'subscribed'"
        for lst in MARKETING_LISTS.values()
        if lst.table in built
    }
    for segment in project.segments:
        queries[segment.relation] = (
            f'SELECT patient_id, patient_id FROM "segments"."{segment.name}"'
        )
    return queries


def record_membership(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    build_id: str,
    built_at: datetime,
    unchanged: Collection[str] = (),
) -> dict[str, dict[str, int]]:
    """Compare each audience with its members at the last build and append joined/left events.

    An audience seen for the first time records its members as 'initial' joins, so journeys
    start from people who enter later instead of treating everyone as new.

    ``unchanged``: models the build left exactly as the last commit had them. Their audiences
    (if recorded and not retired) are not compared: state.audience_members already holds their
    members, as recorded when those rows were written, so nobody joined or left; their size is
    read from there. On most ticks that is most audiences, each a scan of up to every patient.
    """
    queries = _audience_queries(project)
    if not queries:
        return {}
    same = [a for a in queries if _table_of(a) in unchanged]
    same = [
        r[0]
        for r in con.execute(
            "SELECT audience FROM state.audiences WHERE retired_at IS NULL AND audience IN ?",
            [same or [""]],
        ).fetchall()
    ]
    sizes = _sizes(con, same)
    queries = {a: sql for a, sql in queries.items() if a not in sizes}
    recorded = _record(con, queries, build_id, built_at) if queries else {}
    return dict(sorted({**sizes, **recorded}.items()))


def _table_of(audience: str) -> str:
    """The model an audience is read from (segments are named by their relation)."""
    lists = {lst.audience: lst.table for lst in MARKETING_LISTS.values()}
    return lists.get(audience, audience)


def _sizes(con: duckdb.DuckDBPyConnection, audiences: list[str]) -> dict[str, dict[str, int]]:
    """Each unchanged audience's size as recorded, none joined or left."""
    counts = dict(
        con.execute(
            "SELECT audience, count(*) FROM state.audience_members WHERE audience IN ? "
            "GROUP BY audience",
            [audiences or [""]],
        ).fetchall()
    )
    return {a: {"size": counts.get(a, 0), "joined": 0, "left": 0} for a in audiences}


def _record(
    con: duckdb.DuckDBPyConnection, queries: dict[str, str], build_id: str, built_at: datetime
) -> dict[str, dict[str, int]]:
    """Compare the audiences of ``queries`` with their recorded members; append the events."""
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
    # In key order: the primary key's index takes sorted keys faster than scattered ones, and
    # a first build inserts every member of every audience (~600,000 at 100,000 patients).
    con.execute(
        "INSERT INTO state.audience_members SELECT audience, member_key, patient_id, ? "
        "FROM relay_changes WHERE event = 'joined' ORDER BY audience, member_key",
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
