"""Who enters a journey and who leaves it: the entry events, the re-entry rule and the exit rules.

- **Entry events**: joined/left events of the membership history (the models' build records
  them; a new audience's first members are marked ``initial`` and never count) past the journey's
  cursor, or a date field's anniversary (e.g. the birthday at 09:00 in the clinic's time zone)
  since the last run. Only patients on one of the lists the journey sends on enrol, and the
  re-entry rule (once ever / again after the last enrolment ended) applies, counting the
  enrolments of patient records merged into the patient's in Cliniko (the same person: the
  record kept takes the visits and enters the segment again).
- **Exit**: enrolments whose patient left the entry segment or every list the journey sends on.

The journey's tick (tasks/marketing/journeys.py) calls these in its transaction and moves the
cursors, so each entry event is weighed exactly once.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import Journey
from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.gate import local_moment

# A date entry found later than this (the system was down on the day) is let go, not sent late.
DATE_ENTRY_LATENESS = timedelta(days=1)


# --- entry ---------------------------------------------------------------------------------------


def event_entries(
    con: duckdb.DuckDBPyConnection, journey: Journey, live_from: datetime, cursor: int, upto: int
) -> list[tuple[int, str, datetime]]:
    """(patient, occasion, entered_at) for entry events past the cursor: the latest per patient."""
    entry = journey.entry
    if entry.joins_list:
        audience, event = MARKETING_LISTS[entry.joins_list].audience, "joined"
    elif entry.enters_segment:
        audience, event = f"segments.{entry.enters_segment}", "joined"
    else:
        audience, event = f"segments.{entry.exits_segment}", "left"
    rows = con.execute(
        """
        SELECT patient_id, 'event:' || event_id, occurred_at
        FROM state.membership_events
        WHERE audience = ? AND event = ? AND NOT initial AND patient_id IS NOT NULL
          AND event_id > ? AND event_id <= ? AND occurred_at >= ?
        QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY event_id DESC) = 1
        """,
        [audience, event, cursor, upto, live_from],
    ).fetchall()
    return [(int(p), occasion, at) for p, occasion, at in rows]


def anniversaries(
    since: datetime, until: datetime, at: time, zone: ZoneInfo
) -> list[tuple[int, int, int, datetime]]:
    """(year, month, day, moment) of each local calendar day whose ``at`` o'clock, in ``zone``,
    falls in (since, until]. Computed on the local calendar, so a birthday is the patient's
    date where the clinic is, whatever the UTC date."""
    days = []
    day = since.astimezone(zone).date()
    while day <= until.astimezone(zone).date():
        moment = local_moment(day, at, zone)
        if since < moment <= until:
            days.append((day.year, day.month, day.day, moment))
        day += timedelta(days=1)
    return days


def date_entries(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    field: str,
    zone: ZoneInfo,
    moment_cursor: datetime,
    now: datetime,
) -> list[tuple[int, str, datetime]]:
    """(patient, occasion, entered_at) for each anniversary of the DATE column ``field`` of
    marts.patients since the last run (at most :data:`DATE_ENTRY_LATENESS` late)."""
    since = max(moment_cursor, now - DATE_ENTRY_LATENESS)
    entries = []
    for year, month, day, moment in anniversaries(since, now, journey.entry.at, zone):
        leap_day_too = month == 2 and day == 28 and not _is_leap(year)  # 29 Feb -> 28 Feb
        rows = con.execute(
            f"""
            SELECT patient_id FROM marts.patients
            WHERE NOT is_archived AND "{field}" IS NOT NULL
              AND ((month("{field}") = $month AND day("{field}") = $day)
                   OR ($leap AND month("{field}") = 2 AND day("{field}") = 29))
            """,
            {"month": month, "day": day, "leap": leap_day_too},
        ).fetchall()
        entries += [(int(r[0]), f"date:{year}", moment) for r in rows]
    return entries


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def enrol(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    entries: list[tuple[int, str, datetime]],
    now: datetime,
) -> Counter:
    counts: Counter = Counter()
    if not entries:
        return counts
    patients, occasions, entered = (list(c) for c in zip(*entries, strict=True))
    lists = [MARKETING_LISTS[c].audience for c in journey.channels]
    blocking = "" if journey.reentry == "once" else "AND e.status = 'active'"
    rows = con.execute(
        f"""
        INSERT INTO state.journey_enrolments
            (journey, patient_id, occasion, entered_at, enrolled_at, status, next_step, next_at,
             updated_at, entry_key)
        SELECT $journey, c.patient_id, c.occasion, c.entered_at, $now, 'active', 0,
               c.entered_at, $now,
               -- its name in send keys: what it is, not this database's enrolment counter
               CASE WHEN c.occasion LIKE 'date:%' THEN 'y' || substr(c.occasion, 6)
                    ELSE 'n' || (1 + (SELECT count(*) FROM state.journey_enrolments p
                                      WHERE p.journey = $journey
                                        AND p.patient_id = c.patient_id)) END
        FROM (SELECT unnest($patients::BIGINT[]) AS patient_id,
                     unnest($occasions::VARCHAR[]) AS occasion,
                     unnest($entered::TIMESTAMPTZ[]) AS entered_at) AS c
        WHERE c.patient_id IN (SELECT patient_id FROM state.audience_members
                               WHERE audience IN (SELECT unnest($lists::VARCHAR[])))
          -- a record merged into this one in Cliniko is the same person: its enrolment counts
          AND NOT EXISTS (SELECT 1 FROM state.journey_enrolments e
                          WHERE e.journey = $journey {blocking}
                            AND (e.patient_id = c.patient_id
                                 OR e.patient_id IN (SELECT patient_id FROM marts.patients
                                                     WHERE merged_into_patient_id = c.patient_id)))
        ON CONFLICT DO NOTHING
        RETURNING enrolment_id
        """,
        {
            "journey": journey.name,
            "now": now,
            "patients": patients,
            "occasions": occasions,
            "entered": entered,
            "lists": lists,
        },
    ).fetchall()
    counts["enrolled"] = len(rows)
    counts["entries_not_enrolled"] = len(entries) - len(rows)
    return counts


# --- exit --------------------------------------------------------------------------------------


def _exit(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    audiences: list[str],
    reason: str,
    now: datetime,
) -> int:
    """End active enrolments whose patient is in none of ``audiences``."""
    return len(
        con.execute(
            """
            UPDATE state.journey_enrolments
            SET status = 'exited', exit_reason = $reason, finished_at = $now, updated_at = $now
            WHERE journey = $journey AND status = 'active'
              AND patient_id NOT IN (SELECT patient_id FROM state.audience_members
                                     WHERE audience IN (SELECT unnest($audiences::VARCHAR[]))
                                       AND patient_id IS NOT NULL)
            RETURNING enrolment_id
            """,
            {"journey": journey.name, "audiences": audiences, "reason": reason, "now": now},
        ).fetchall()
    )


def apply_exit_rules(con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime) -> Counter:
    counts: Counter = Counter()
    segment = journey.entry.enters_segment
    if segment and journey.exit.leaves_segment:
        counts["exited"] += _exit(
            con, journey, [f"segments.{segment}"], f"left the segment {segment}", now
        )
    if journey.exit.unsubscribes:
        lists = [MARKETING_LISTS[c].audience for c in journey.channels]
        counts["exited"] += _exit(
            con, journey, lists, f"no longer on the {' or '.join(journey.channels)} list", now
        )
    return counts
