"""Journeys: declared in clinic.yaml (``journeys:``), run once per tick after the models build.

A journey is an entry, a list of steps, an exit rule and a re-entry rule (tasks/config.py).
Each tick, per journey, in one transaction:

1. **Go live.** The first time a journey is seen, its go-live moment and the newest membership
   event are recorded (``state.journeys``); only entries after them ever enrol anyone, so a
   journey created today does not enrol everyone who entered its segment last year. A journey
   removed from clinic.yaml ends its enrolments; added back, it goes live afresh.
2. **Enrol** from entry events past the journey's cursors, then **exit** enrolments the exit
   rule ends (tasks/marketing/enrolment.py). Each entry event is weighed exactly once.
3. **Advance** every enrolment whose next step is due (tasks/marketing/steps.py); a send step
   queues a marketing message in the ledger, committed with the step's record.

Messages leave through dispatch: :class:`Preparer` is its re-check for journey rows (enrolment
still running? still on the list?), and the marketing gate holds them to the frequency cap and
quiet hours. Results are counts; nothing here logs personal data.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import ClinicConfig, ConditionStep, Journey
from tasks.errors import UserFacingError
from tasks.marketing import enrolment, steps
from tasks.marketing.recheck import SourcePreparer
from tasks.messages.prepare import Ready, Skip
from tasks.warehouse import one, transaction


class JourneyError(UserFacingError):
    """A journey that cannot run as configured; names the clinic file, the journey and the field."""


def _where(cfg: ClinicConfig, journey: Journey) -> str:
    return f"{cfg.source or cfg.clinic}: journey '{journey.name}'"


# --- go-live and removal -----------------------------------------------------------------------


def _go_live(con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime) -> tuple:
    """The journey's state row, created (or re-created after a removal) with now as go-live."""
    row = con.execute(
        "SELECT live_from, event_cursor, moment_cursor, removed_at FROM state.journeys "
        "WHERE journey = ?",
        [journey.name],
    ).fetchone()
    if row is None or row[3] is not None:
        newest = one(con, "SELECT coalesce(max(event_id), 0) FROM state.membership_events")[0]
        con.execute(
            "INSERT OR REPLACE INTO state.journeys VALUES (?, ?, ?, ?, NULL, ?)",
            [journey.name, now, newest, now, now],
        )
        return now, newest, now
    return row[0], row[1], row[2]


def retire_removed(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, now: datetime) -> int:
    """Journeys gone from clinic.yaml: mark them removed and end their enrolments."""
    configured = [j.name for j in cfg.journeys]
    with transaction(con):
        gone = [
            r[0]
            for r in con.execute(
                "SELECT journey FROM state.journeys WHERE removed_at IS NULL "
                "AND journey NOT IN (SELECT unnest(?::VARCHAR[]))",
                [configured],
            ).fetchall()
        ]
        if not gone:
            return 0
        con.execute(
            "UPDATE state.journeys SET removed_at = ? WHERE journey IN (SELECT unnest(?::VARCHAR[]))",
            [now, gone],
        )
        ended = con.execute(
            "UPDATE state.journey_enrolments SET status = 'exited', finished_at = $now, "
            "updated_at = $now, exit_reason = 'journey removed from the configuration' "
            "WHERE status = 'active' AND journey IN (SELECT unnest($gone::VARCHAR[])) "
            "RETURNING enrolment_id",
            {"now": now, "gone": gone},
        ).fetchall()
    return len(ended)


# --- configuration checks and one tick -----------------------------------------------------


def _date_field_problem(con: duckdb.DuckDBPyConnection, journey: Journey) -> str | None:
    """Why the journey's entry.date_field cannot be read (not a DATE column of marts.patients),
    or None (fine, or not a date entry)."""
    field = journey.entry.date_field
    if field is None:
        return None
    kind = con.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = 'marts' AND table_name = 'patients' AND column_name = ?",
        [field],
    ).fetchone()
    if kind is not None and kind[0] == "DATE":
        return None
    return (
        f"entry.date_field '{field}' is not a DATE column of marts.patients (e.g. "
        "date_of_birth); fix the journey in clinic.yaml"
    )


def date_field_problems(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig) -> dict[str, str]:
    """Journey name -> why its date entry cannot be read: the tick holds that journey alone
    (tasks.tick.held_sources), and ``relay clinics`` reports it. Nothing before a first build
    (no marts.patients yet: what the build holds says it)."""
    built = con.execute(
        "SELECT 1 FROM information_schema.tables "
        "WHERE table_schema = 'marts' AND table_name = 'patients'"
    ).fetchone()
    if built is None:
        return {}
    found = {j.name: _date_field_problem(con, j) for j in cfg.journeys}
    return {name: why for name, why in found.items() if why}


def _date_column_checked(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, journey: Journey
) -> str:
    if why := _date_field_problem(con, journey):
        raise JourneyError(f"{_where(cfg, journey)}: {why}.")
    assert journey.entry.date_field is not None  # a date entry: checked just above
    return journey.entry.date_field


def check_segments_built(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, held: Collection[str] = ()
) -> None:
    """Every segment a journey (not ``held``) names must have been built (state.audiences)."""
    built = {r[0] for r in con.execute("SELECT audience FROM state.audiences").fetchall()}
    for journey in (j for j in cfg.journeys if j.name not in held):
        names = [journey.entry.enters_segment, journey.entry.exits_segment] + [
            s.segment for s in journey.steps if isinstance(s, ConditionStep)
        ]
        for name in filter(None, names):
            if f"segments.{name}" not in built:
                raise JourneyError(
                    f"{_where(cfg, journey)}: segment '{name}' has not been built yet. "
                    "Run `relay models build` (or wait for the next tick)."
                )


def run_journey(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, journey: Journey, now: datetime
) -> dict[str, int]:
    """One tick of one journey, all or nothing. Returns counts."""
    with transaction(con):
        live_from, event_cursor, moment_cursor = _go_live(con, journey, now)
        upto = one(con, "SELECT coalesce(max(event_id), 0) FROM state.membership_events")[0]
        zone = ZoneInfo(cfg.time_zone)
        if journey.entry.date_field:
            field = _date_column_checked(con, cfg, journey)
            entries = enrolment.date_entries(con, journey, field, zone, moment_cursor, now)
        else:
            entries = enrolment.event_entries(con, journey, live_from, event_cursor, upto)
        counts = enrolment.enrol(con, journey, entries, now)
        counts += enrolment.apply_exit_rules(con, journey, now)
        counts += steps.advance(con, journey, now, zone)
        con.execute(
            "UPDATE state.journeys SET event_cursor = ?, moment_cursor = greatest(moment_cursor, ?), "
            "last_run_at = ? WHERE journey = ?",
            [upto, now, now, journey.name],
        )
    return dict(counts)


def run_journeys(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, now: datetime, held: Collection[str] = ()
) -> dict[str, dict[str, int]]:
    """Every configured journey once (each in its own transaction); counts per journey.
    ``held`` journeys (they read a model the latest build did not rebuild) wait this tick."""
    check_segments_built(con, cfg, held)
    results = {}
    removed = retire_removed(con, cfg, now)
    for journey in cfg.journeys:
        if journey.name not in held:
            results[journey.name] = run_journey(con, cfg, journey, now)
    if removed:
        results["(removed journeys)"] = {"exited": removed}
    return results


# --- the re-check before sending ---------------------------------------------------------------


class Preparer(SourcePreparer):
    """Dispatch's re-check of journey rows (tasks/marketing/recheck.py): the journey removed, its
    enrolment ended, or its exit rule holds now (a message held back by the cap or quiet hours
    may outlive the step that queued it) -> cancelled; off the channel's marketing list now ->
    skipped. Dispatch then checks suppressions and renders.
    """

    kind = "journey"

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: ClinicConfig):
        super().__init__(con, cfg)
        self.journeys = {j.name: j for j in cfg.journeys}

    def decide(self, name: str) -> dict[int, Ready | Skip]:
        journey = self.journeys.get(name)
        segment = journey.entry.enters_segment if journey and journey.exit.leaves_segment else None
        decisions: dict[int, Ready | Skip] = {}
        decision: Ready | Skip
        for message in self.planned(name, segment):
            if journey is None:
                decision = Skip("journey removed from the configuration", cancel=True)
            elif message.enrolment_status == "exited":
                decision = Skip(
                    f"journey ended before this step went: {message.exit_reason}", cancel=True
                )
            elif segment and not message.in_segment:
                decision = Skip(
                    f"journey ended before this step went: left the segment {segment}",
                    cancel=True,
                )
            else:
                decision = self.to_list_address(message)
            decisions[message.message_id] = decision
        return decisions
