"""Who is in each marketing list and segment, build after build: ``state.audiences``,
``state.audience_members`` and the append-only ``state.membership_events`` that journeys start
from. Recorded inside the build's transaction, after the data tests, so a failed build records
nobody joining or leaving.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime

import duckdb

from tasks.messages.channels import MARKETING_LISTS
from tasks.models.project import Project


def _member_selects(project: Project) -> dict[str, tuple[str, str]]:
    """Each audience -> (the model it is read from, its members as a SELECT of (address or
    patient id as the member key, patient id) from ``{rows}``): the subscribed rows of each
    marketing list that was built, and every segment. ``{rows}`` is the model's table, or the
    rows a build took from it or put in it (``MemberChanges``)."""
    built = {m.relation for m in project.models}
    selects = {
        lst.audience: (
            lst.table,
            f"SELECT {lst.address_column}, patient_id FROM {{rows}} WHERE status = 'subscribed'",
        )
        for lst in MARKETING_LISTS.values()
        if lst.table in built
    }
    for segment in project.segments:
        selects[segment.relation] = (segment.relation, "SELECT patient_id, patient_id FROM {rows}")
    return selects


def _audience_queries(project: Project) -> dict[str, str]:
    """Each audience and its members, read from its model's table."""
    return {
        audience: select.replace("{rows}", ".".join(f'"{p}"' for p in table.split(".", 1)))
        for audience, (table, select) in _member_selects(project).items()
    }


class MemberChanges:
    """The member rows each audience's table lost and gained in this build, in the temporary
    table relay_member_changes (made inside the build's transaction: a rollback drops it).
    ``note(relation)``: what ``tables.replace_changed_rows`` tells the rows it took out of
    ``relation``'s table and put in, when that table is an audience's; ``noted``: the models
    whose rows were noted, whose audiences ``record_membership`` compares by those rows only (a
    few changed rows instead of every patient of every list and segment)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, project: Project):
        self.con, self.noted = con, set[str]()
        self.selects = {t: (a, sql) for a, (t, sql) in _member_selects(project).items()}
        con.execute(
            "CREATE OR REPLACE TEMP TABLE relay_member_changes "
            "(audience VARCHAR, member_key VARCHAR, patient_id BIGINT, came BOOLEAN)"
        )

    def note(self, relation: str) -> Callable[[str, str], None] | None:
        if relation not in self.selects:
            return None
        audience, select = self.selects[relation]

        def note(went: str, came: str) -> None:
            members = " UNION ALL ".join(
                f"SELECT k, p, {is_came} FROM ({select.replace('{rows}', rows)}) AS t(k, p)"
                for rows, is_came in ((went, False), (came, True))
            )
            self.con.execute(
                "INSERT INTO relay_member_changes SELECT ?, CAST(k AS VARCHAR), CAST(p AS BIGINT), "
                f"c FROM ({members}) AS m(k, p, c) WHERE k IS NOT NULL",
                [audience],
            )
            self.noted.add(relation)

        return note


def record_membership(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    build_id: str,
    built_at: datetime,
    unchanged: Collection[str] = (),
    noted: Collection[str] = (),
) -> dict[str, dict[str, int]]:
    """Compare each audience with its members at the last build and append joined/left events.

    An audience seen for the first time records its members as 'initial' joins, so journeys
    start from people who enter later instead of treating everyone as new.

    ``unchanged``: models the build left exactly as the last commit had them. Their audiences
    (if recorded and not retired) are not compared: state.audience_members already holds their
    members, as recorded when those rows were written, so nobody joined or left; their size is
    read from there. On most ticks that is most audiences, each a scan of up to every patient.

    ``noted``: models whose table this build changed by taking rows out and putting rows in,
    each noted (``MemberChanges``). Their recorded audiences compare only those rows' members
    with state.audience_members: the members it holds are those of the rows the table held
    (both are written in the same transactions), so a member only the new rows have joined,
    and one only the old rows had left: the same events as comparing every member.
    """
    queries = _audience_queries(project)
    if not queries:
        con.execute("DROP TABLE IF EXISTS relay_member_changes")  # MemberChanges': done
        return {}
    live = set(_recorded_of(con, [a for a in queries if _table_of(a) in {*unchanged, *noted}]))
    same = [a for a in queries if a in live and _table_of(a) in unchanged]
    delta = [a for a in queries if a in live and a not in same]  # their tables were noted
    before = _sizes(con, same + delta)  # one count for both
    sizes = {a: {"size": before.get(a, 0), "joined": 0, "left": 0} for a in same}
    queries = {a: sql for a, sql in queries.items() if a not in sizes}
    recorded = _record_noted(con, delta, build_id, built_at, before) if delta else {}
    queries = {a: sql for a, sql in queries.items() if a not in recorded}
    recorded |= _record(con, queries, build_id, built_at) if queries else {}
    con.execute("DROP TABLE IF EXISTS relay_member_changes")  # MemberChanges': read, done
    return dict(sorted({**sizes, **recorded}.items()))


def _recorded_of(con: duckdb.DuckDBPyConnection, audiences: list[str]) -> list[str]:
    """Those of ``audiences`` recorded before and not retired (their members are in
    state.audience_members)."""
    rows = con.execute(
        "SELECT audience FROM state.audiences WHERE retired_at IS NULL AND audience IN ?",
        [audiences or [""]],
    ).fetchall()
    return [r[0] for r in rows]


def _table_of(audience: str) -> str:
    """The model an audience is read from (segments are named by their relation)."""
    lists = {lst.audience: lst.table for lst in MARKETING_LISTS.values()}
    return lists.get(audience, audience)


def _sizes(con: duckdb.DuckDBPyConnection, audiences: list[str]) -> dict[str, int]:
    """Each of ``audiences``' size as recorded (in state.audience_members)."""
    if not audiences:
        return {}
    return dict(
        con.execute(
            "SELECT audience, count(*) FROM state.audience_members WHERE audience IN ? "
            "GROUP BY audience",
            [audiences],
        ).fetchall()
    )


def _record_noted(
    con: duckdb.DuckDBPyConnection,
    audiences: list[str],
    build_id: str,
    built_at: datetime,
    before: dict[str, int],
) -> dict[str, dict[str, int]]:
    """Who joined and left ``audiences`` (recorded ones, ``before``: their sizes as recorded),
    from the member rows their tables lost and gained this build (relay_member_changes): a
    member key gained and not lost joined (unless a member already), one lost and not gained
    left (if a member). Each joined is a member added and each left one removed, so a size is
    before + joined - left."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE relay_changes AS
        WITH noted AS (
            SELECT audience, member_key, bool_or(came) AS came, bool_or(NOT came) AS went,
                   min(patient_id) FILTER (WHERE came) AS patient_id
            FROM relay_member_changes WHERE audience IN $audiences GROUP BY ALL
        ),
        members AS (
            SELECT m.audience, m.member_key, m.patient_id, m.rowid AS member_rowid
            FROM state.audience_members m SEMI JOIN noted n USING (audience, member_key)
        )
        SELECT n.audience, n.member_key, coalesce(m.patient_id, n.patient_id) AS patient_id,
               CASE WHEN m.member_key IS NULL THEN 'joined' ELSE 'left' END AS event,
               m.member_rowid
        FROM noted n LEFT JOIN members m USING (audience, member_key)
        WHERE (n.came AND NOT n.went AND m.member_key IS NULL)
           OR (n.went AND NOT n.came AND m.member_key IS NOT NULL)
        """,
        {"audiences": audiences},
    )
    _apply(con, audiences, build_id, built_at, new=False)
    # a member kept whose row now names another patient (a shared address passed on)
    _follow_holders(
        con,
        "SELECT audience, member_key, min(patient_id) FILTER (WHERE came) AS patient_id "
        "FROM relay_member_changes GROUP BY ALL HAVING bool_or(came)",
        audiences,
    )
    counts = _counts(con, audiences, before)
    for count in counts.values():
        count["size"] += count["joined"] - count["left"]
    return counts


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
               CASE WHEN m.member_key IS NULL THEN 'joined' ELSE 'left' END AS event,
               m.member_rowid
        FROM relay_current c
        FULL OUTER JOIN (
            SELECT *, rowid AS member_rowid FROM state.audience_members WHERE audience IN ?
        ) m USING (audience, member_key)
        WHERE c.member_key IS NULL OR m.member_key IS NULL
        """,
        [list(queries)],
    )
    _apply(con, list(queries), build_id, built_at, new=True)
    _follow_holders(con, "SELECT * FROM relay_current", list(queries))
    sizes = dict(
        con.execute("SELECT audience, count(*) FROM relay_current GROUP BY audience").fetchall()
    )
    counts = _counts(con, list(queries), sizes)
    for temp in ("relay_current", "relay_new_audiences"):
        con.execute(f"DROP TABLE {temp}")
    return counts


def _apply(
    con: duckdb.DuckDBPyConnection,
    audiences: list[str],
    build_id: str,
    built_at: datetime,
    *,
    new: bool,
) -> None:
    """Append relay_changes' events and bring state.audience_members to them. ``new``: the
    joins of an audience in relay_new_audiences are its 'initial' members. A member who left
    is deleted by the rowid relay_changes found it at (a join on the key read every member of
    every audience again)."""
    initial = "audience IN (SELECT audience FROM relay_new_audiences)" if new else "false"
    con.execute(
        f"""
        INSERT INTO state.membership_events
            (build_id, audience, member_key, patient_id, event, initial, occurred_at)
        SELECT ?, audience, member_key, patient_id, event, event = 'joined' AND {initial}, ?
        FROM relay_changes
        """,
        [build_id, built_at],
    )
    con.execute(
        "DELETE FROM state.audience_members WHERE rowid IN "
        "(SELECT member_rowid FROM relay_changes WHERE event = 'left')"
    )
    # In key order: the primary key's index takes sorted keys faster than scattered ones, and
    # a first build inserts every member of every audience (~600,000 at 100,000 patients).
    con.execute(
        "INSERT INTO state.audience_members SELECT audience, member_key, patient_id, ? "
        "FROM relay_changes WHERE event = 'joined' ORDER BY audience, member_key",
        [built_at],
    )


def _follow_holders(con: duckdb.DuckDBPyConnection, current: str, audiences: list[str]) -> None:
    """A marketing list's member is its address; the patient it names can change while the
    address stays on the list (a shared address passes to the family member seen most
    recently, a merge keeps the other record). That is no join or leave, but the member's
    patient follows the list's row: journeys enrol, send and exit by it (tasks/marketing), and
    kept the first holder for good, so the one the list named was refused as "not on the
    list". ``current``: a SELECT of (audience, member_key, patient_id) as the tables have them
    now."""
    lists = [a for a in audiences if a in {lst.audience for lst in MARKETING_LISTS.values()}]
    if not lists:
        return
    con.execute(
        f"""
        UPDATE state.audience_members AS m SET patient_id = c.patient_id
        FROM ({current}) AS c
        WHERE m.audience IN $lists AND c.audience = m.audience
          AND c.member_key = m.member_key AND m.patient_id IS DISTINCT FROM c.patient_id
        """,
        {"lists": lists},
    )


def _counts(
    con: duckdb.DuckDBPyConnection, audiences: list[str], sizes: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Each audience's size (``sizes``), and who joined and left it (relay_changes, dropped)."""
    changes = {
        (a, e): n
        for a, e, n in con.execute(
            "SELECT audience, event, count(*) FROM relay_changes GROUP BY ALL"
        ).fetchall()
    }
    con.execute("DROP TABLE relay_changes")
    return {
        a: {
            "size": sizes.get(a, 0),
            "joined": changes.get((a, "joined"), 0),
            "left": changes.get((a, "left"), 0),
        }
        for a in sorted(audiences)
    }
