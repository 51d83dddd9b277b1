"""Journeys: declared in clinic.yaml (``journeys:``), run once per tick after the models build.

A journey is an entry, a list of steps, an exit rule and a re-entry rule (tasks/config.py).
Each tick, per journey, in one transaction:

1. **Go live.** The first time a journey is seen, its go-live moment and the newest membership
   event are recorded (``state.journeys``); only entries after them ever enrol anyone, so a
   journey created today does not enrol everyone who entered its segment last year. A journey
   removed from clinic.yaml ends its enrolments; added back, it goes live afresh.
2. **Enrol** from entry events: joined/left events of the membership history (the models' build
   records them; a new audience's first members are marked ``initial`` and never count) past the
   journey's cursor, or a date field's anniversary (e.g. the birthday at 09:00 in the clinic's time
   zone) since the last run. Only patients on one of the lists the journey sends on enrol; the
   re-entry rule (once ever / again after the last enrolment ended) applies. Each entry event is
   weighed exactly once.
3. **Exit** enrolments whose patient left the entry segment or every list the journey sends on.
4. **Advance** every enrolment whose next step is due, step by step until it waits, fails a
   condition or completes. A send step puts a marketing message into the ledger with the key
   ``journey:<name>:<patient>:e<enrolment>:s<step>``; the step's record and the enrolment's
   progress commit with it, so a crash or a rerun never repeats a step or skips one.

Messages leave through dispatch: :class:`MarketingPreparer` is its re-check for journey and
campaign rows (enrolment still running? still on the list?), and the marketing gate holds them to
the frequency cap and quiet hours. Results are counts; nothing here logs personal data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import ClinicConfig, ConditionStep, Journey, SendStep, WaitStep
from tasks.errors import UserFacingError
from tasks.messages import ledger
from tasks.messages.ledger import LedgerRow, PlannedMessage, make_send_key
from tasks.messages.prepare import Prepare, Ready, Skip, clinic_details
from tasks.messages.templates import build_context
from tasks.warehouse import transaction

LIST_AUDIENCE = {"email": "email_marketing_list", "sms": "sms_marketing_list"}
# A date entry found later than this (the system was down on the day) is let go, not sent late.
DATE_ENTRY_LATENESS = timedelta(days=1)


class JourneyError(UserFacingError):
    """A journey that cannot run as configured; names the clinic file, the journey and the field."""


def _where(cfg: ClinicConfig, journey: Journey) -> str:
    return f"{cfg.source or cfg.clinic}: journey '{journey.name}'"


def send_key(journey: str, patient_id: int, enrolment_id: int, step: int) -> str:
    return make_send_key("journey", journey, patient_id, f"e{enrolment_id}:s{step}")


# --- go-live and removal -----------------------------------------------------------------------


def _go_live(con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime) -> tuple:
    """The journey's state row, created (or re-created after a removal) with now as go-live."""
    row = con.execute(
        "SELECT live_from, event_cursor, moment_cursor, removed_at FROM state.journeys "
        "WHERE journey = ?",
        [journey.name],
    ).fetchone()
    if row is None or row[3] is not None:
        newest = con.execute(
            "SELECT coalesce(max(event_id), 0) FROM state.membership_events"
        ).fetchone()[0]
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


# --- entry -------------------------------------------------------------------------------------


def _event_entries(
    con: duckdb.DuckDBPyConnection, journey: Journey, live_from: datetime, cursor: int, upto: int
) -> list[tuple[int, str, datetime]]:
    """(patient, occasion, entered_at) for entry events past the cursor: the latest per patient."""
    entry = journey.entry
    if entry.joins_list:
        audience, event = LIST_AUDIENCE[entry.joins_list], "joined"
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


def _date_column_checked(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, journey: Journey
) -> str:
    field = journey.entry.date_field
    kind = con.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = 'marts' AND table_name = 'patients' AND column_name = ?",
        [field],
    ).fetchone()
    if kind is None or kind[0] != "DATE":
        raise JourneyError(
            f"{_where(cfg, journey)}: entry.date_field '{field}' is not a DATE column of "
            "marts.patients (e.g. date_of_birth). Fix the journey in clinic.yaml."
        )
    return field


def anniversaries(
    since: datetime, until: datetime, at: time, zone: ZoneInfo
) -> list[tuple[int, int, int, datetime]]:
    """(year, month, day, moment) of each local calendar day whose ``at`` o'clock, in ``zone``,
    falls in (since, until]. Computed on the local calendar, so a birthday is the patient's
    date where the clinic is, whatever the UTC date."""
    days = []
    day = since.astimezone(zone).date()
    while day <= until.astimezone(zone).date():
        moment = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
        if since < moment <= until:
            days.append((day.year, day.month, day.day, moment))
        day += timedelta(days=1)
    return days


def _date_entries(
    con: duckdb.DuckDBPyConnection,
    cfg: ClinicConfig,
    journey: Journey,
    moment_cursor: datetime,
    now: datetime,
) -> list[tuple[int, str, datetime]]:
    field = _date_column_checked(con, cfg, journey)
    since = max(moment_cursor, now - DATE_ENTRY_LATENESS)
    entries = []
    for year, month, day, moment in anniversaries(
        since, now, journey.entry.at, ZoneInfo(cfg.time_zone)
    ):
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


def _enrol(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    entries: list[tuple[int, str, datetime]],
    now: datetime,
) -> Counter:
    counts: Counter = Counter()
    if not entries:
        return counts
    patients, occasions, entered = (list(c) for c in zip(*entries, strict=True))
    lists = [LIST_AUDIENCE[c] for c in journey.channels]
    blocking = "" if journey.reentry == "once" else "AND e.status = 'active'"
    rows = con.execute(
        f"""
        INSERT INTO state.journey_enrolments
            (journey, patient_id, occasion, entered_at, enrolled_at, status, next_step, next_at,
             updated_at)
        SELECT $journey, c.patient_id, c.occasion, c.entered_at, $now, 'active', 0,
               c.entered_at, $now
        FROM (SELECT unnest($patients::BIGINT[]) AS patient_id,
                     unnest($occasions::VARCHAR[]) AS occasion,
                     unnest($entered::TIMESTAMPTZ[]) AS entered_at) AS c
        WHERE c.patient_id IN (SELECT patient_id FROM state.audience_members
                               WHERE audience IN (SELECT unnest($lists::VARCHAR[])))
          AND NOT EXISTS (SELECT 1 FROM state.journey_enrolments e
                          WHERE e.journey = $journey AND e.patient_id = c.patient_id {blocking})
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


def _apply_exit_rules(con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime) -> Counter:
    counts: Counter = Counter()
    segment = journey.entry.enters_segment
    if segment and journey.exit.leaves_segment:
        counts["exited"] += _exit(
            con, journey, [f"segments.{segment}"], f"left the segment {segment}", now
        )
    if journey.exit.unsubscribes:
        lists = [LIST_AUDIENCE[c] for c in journey.channels]
        counts["exited"] += _exit(
            con, journey, lists, f"no longer on the {' or '.join(journey.channels)} list", now
        )
    return counts


# --- steps -------------------------------------------------------------------------------------


def _members(con: duckdb.DuckDBPyConnection, audience: str, patients: Iterable[int]) -> set[int]:
    return {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT patient_id FROM state.audience_members WHERE audience = ? "
            "AND patient_id IN (SELECT unnest(?::BIGINT[]))",
            [audience, list(patients)],
        ).fetchall()
    }


def _record_steps(
    con: duckdb.DuckDBPyConnection,
    step: int,
    kind: str,
    records: list[tuple[int, str, str | None, int | None]],
    now: datetime,
) -> None:
    if not records:
        return
    ids, outcomes, details, messages = (list(c) for c in zip(*records, strict=True))
    con.execute(
        """
        INSERT INTO state.journey_steps
        SELECT unnest($ids::BIGINT[]), $step, $kind, unnest($outcomes::VARCHAR[]),
               unnest($details::VARCHAR[]), unnest($messages::BIGINT[]), $now
        ON CONFLICT DO NOTHING
        """,
        {"ids": ids, "step": step, "kind": kind, "outcomes": outcomes, "details": details,
         "messages": messages, "now": now},
    )  # fmt: skip


def _move(
    con: duckdb.DuckDBPyConnection,
    ids: list[int],
    now: datetime,
    *,
    next_step: int,
    next_at: datetime | None = None,
) -> None:
    con.execute(
        "UPDATE state.journey_enrolments SET next_step = $step, "
        "next_at = coalesce($at, next_at), updated_at = $now "
        "WHERE enrolment_id IN (SELECT unnest($ids::BIGINT[]))",
        {"step": next_step, "at": next_at, "now": now, "ids": ids},
    )


def _end(
    con: duckdb.DuckDBPyConnection, ids: list[int], status: str, reason: str | None, now: datetime
) -> None:
    con.execute(
        "UPDATE state.journey_enrolments SET status = $status, exit_reason = $reason, "
        "finished_at = $now, updated_at = $now WHERE enrolment_id IN (SELECT unnest($ids::BIGINT[]))",
        {"status": status, "reason": reason, "now": now, "ids": ids},
    )


def _send(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    index: int,
    step: SendStep,
    due: list[tuple[int, int]],
    now: datetime,
) -> Counter:
    counts: Counter = Counter()
    on_list = _members(con, LIST_AUDIENCE[step.send], [p for _, p in due])
    messages = [
        PlannedMessage(
            send_key=send_key(journey.name, patient_id, enrolment_id, index),
            source_kind="journey",
            source_name=journey.name,
            patient_id=patient_id,
            channel=step.send,
            purpose="marketing",
            template=step.template,
            due_at=now,
            expires_at=now + step.within if step.within else None,
        )
        for enrolment_id, patient_id in due
        if patient_id in on_list
    ]
    ledger.insert_planned(con, messages, now)
    ids = dict(
        con.execute(
            "SELECT send_key, message_id FROM state.messages "
            "WHERE send_key IN (SELECT unnest(?::VARCHAR[]))",
            [[m.send_key for m in messages]],
        ).fetchall()
    )
    records = []
    for enrolment_id, patient_id in due:
        if patient_id in on_list:
            key = send_key(journey.name, patient_id, enrolment_id, index)
            records.append((enrolment_id, "queued", None, ids[key]))
        else:
            records.append((enrolment_id, "skipped", f"not on the {step.send} list", None))
    _record_steps(con, index, "send", records, now)
    counts["queued"] += len(messages)
    counts["send_skipped"] += len(due) - len(messages)
    return counts


def wait_until(start: datetime, wait: timedelta, zone: ZoneInfo) -> datetime:
    """When a wait that starts now ends. Whole days (24 hours, 2 weeks...) are calendar days in
    the clinic's time zone, so "wait 1 day" after a 09:00 email is 09:00 the next day across a
    daylight-saving change; other waits are elapsed time."""
    if wait % timedelta(days=1):
        return start + wait
    local = start.astimezone(zone).replace(tzinfo=None) + wait
    return local.replace(tzinfo=zone).astimezone(UTC)


def _advance(
    con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime, zone: ZoneInfo
) -> Counter:
    """Run every due step of every active enrolment, a step index at a time (set-wise)."""
    counts: Counter = Counter()
    last = len(journey.steps)
    for _ in range(last + 1):
        due_rows = con.execute(
            "SELECT next_step, enrolment_id, patient_id FROM state.journey_enrolments "
            "WHERE journey = ? AND status = 'active' AND next_at <= ? ORDER BY enrolment_id",
            [journey.name, now],
        ).fetchall()
        if not due_rows:
            break
        by_step: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for index, enrolment_id, patient_id in due_rows:
            by_step[index].append((enrolment_id, patient_id))
        for index, due in sorted(by_step.items()):
            ids = [e for e, _ in due]
            if index >= last:  # steps were removed from clinic.yaml under this enrolment
                _end(con, ids, "completed", None, now)
                counts["completed"] += len(ids)
                continue
            step = journey.steps[index]
            if isinstance(step, SendStep):
                counts += _send(con, journey, index, step, due, now)
                _move(con, ids, now, next_step=index + 1)
            elif isinstance(step, WaitStep):
                _record_steps(con, index, "wait", [(e, "waited", None, None) for e in ids], now)
                _move(con, ids, now, next_step=index + 1, next_at=wait_until(now, step.wait, zone))
            else:
                counts += _condition(con, journey, index, step, due, now)
        done = con.execute(
            "UPDATE state.journey_enrolments SET status = 'completed', finished_at = $now, "
            "updated_at = $now WHERE journey = $journey AND status = 'active' AND next_step >= $last "
            "RETURNING enrolment_id",
            {"now": now, "journey": journey.name, "last": last},
        ).fetchall()
        counts["completed"] += len(done)
    return counts


def _condition(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    index: int,
    step: ConditionStep,
    due: list[tuple[int, int]],
    now: datetime,
) -> Counter:
    segment = journey.entry.enters_segment if step.only_if == "still_in_segment" else step.segment
    members = _members(con, f"segments.{segment}", [p for _, p in due])
    want_in = step.only_if != "not_in_segment"
    passed = [e for e, p in due if (p in members) == want_in]
    failed = [e for e, p in due if (p in members) != want_in]
    detail = f"{'not ' if want_in else ''}in the segment {segment}"
    _record_steps(con, index, "condition", [(e, "passed", None, None) for e in passed], now)
    _record_steps(con, index, "condition", [(e, "failed", detail, None) for e in failed], now)
    if passed:
        _move(con, passed, now, next_step=index + 1)
    if failed:
        _end(con, failed, "exited", f"step {index + 1} condition not met: {detail}", now)
    return Counter(conditions_failed=len(failed))


# --- one tick ----------------------------------------------------------------------------------


def check_segments_built(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig) -> None:
    """Every segment a journey or campaign names must have been built (state.audiences)."""
    built = {r[0] for r in con.execute("SELECT audience FROM state.audiences").fetchall()}
    for journey in cfg.journeys:
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
        upto = con.execute(
            "SELECT coalesce(max(event_id), 0) FROM state.membership_events"
        ).fetchone()[0]
        if journey.entry.date_field:
            entries = _date_entries(con, cfg, journey, moment_cursor, now)
        else:
            entries = _event_entries(con, journey, live_from, event_cursor, upto)
        counts = _enrol(con, journey, entries, now)
        counts += _apply_exit_rules(con, journey, now)
        counts += _advance(con, journey, now, ZoneInfo(cfg.time_zone))
        con.execute(
            "UPDATE state.journeys SET event_cursor = ?, moment_cursor = greatest(moment_cursor, ?), "
            "last_run_at = ? WHERE journey = ?",
            [upto, now, now, journey.name],
        )
    return dict(counts)


def run_journeys(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, now: datetime
) -> dict[str, dict[str, int]]:
    """Every configured journey once (each in its own transaction); counts per journey."""
    check_segments_built(con, cfg)
    results = {}
    removed = retire_removed(con, cfg, now)
    for journey in cfg.journeys:
        results[journey.name] = run_journey(con, cfg, journey, now)
    if removed:
        results["(removed journeys)"] = {"exited": removed}
    return results


# --- the re-check before sending ---------------------------------------------------------------

_RECHECK = r"""
SELECT m.message_id, m.channel, e.status, e.exit_reason,
       seg.patient_id IS NOT NULL AS in_segment,
       coalesce(el.email, sl.mobile_e164) AS address,
       p.first_name, p.preferred_first_name, p.last_name
FROM state.messages m
LEFT JOIN state.journey_enrolments e
    ON e.enrolment_id = TRY_CAST(regexp_extract(m.send_key, ':e(\d+):s\d+$', 1) AS BIGINT)
LEFT JOIN (SELECT DISTINCT patient_id FROM state.audience_members WHERE audience = $audience) seg
    ON seg.patient_id = m.patient_id
LEFT JOIN marts.email_marketing_list el
    ON m.channel = 'email' AND el.patient_id = m.patient_id AND el.status = 'subscribed'
LEFT JOIN marts.sms_marketing_list sl
    ON m.channel = 'sms' AND sl.patient_id = m.patient_id AND sl.status = 'subscribed'
LEFT JOIN marts.patients p ON p.patient_id = m.patient_id
WHERE m.source_kind = $kind AND m.source_name = $name AND m.status = 'planned'
"""


class MarketingPreparer:
    """Dispatch's ``prepare`` for every row: journey and campaign rows are re-checked here,
    trigger rows by ``triggers`` (the planner's ``Preparer``). The tick's dispatch passes
    ``prepare_marketing(con, cfg, triggers=planning.Preparer(con, cfg))``.

    Per journey or campaign, all its planned messages are decided in one query the first time
    one of them is asked about: the enrolment ended or the exit rule holds now (a message held
    back by the cap or quiet hours may outlive the step that queued it) -> cancelled; a campaign
    cancelled -> cancelled; left the campaign's segment since the freeze, or off the channel's
    marketing list now -> skipped. Dispatch then checks suppressions and renders.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, triggers: Prepare):
        self.con = con
        self.triggers = triggers
        self.journeys = {j.name: j for j in cfg.journeys}
        self.clinic = clinic_details(cfg)
        self._decisions: dict[tuple[str, str], dict[int, Ready | Skip]] = {}

    def __call__(self, row: LedgerRow) -> Ready | Skip:
        if row.source_kind == "trigger":
            return self.triggers(row)
        source = (row.source_kind, row.source_name)
        if row.message_id not in self._decisions.get(source, {}):
            self._decisions[source] = self._decide(*source)
        return self._decisions[source].get(
            row.message_id, Skip("no longer planned when it came to be sent")
        )

    def _decide(self, kind: str, name: str) -> dict[int, Ready | Skip]:
        if kind == "journey":
            journey = self.journeys.get(name)
            segment = journey and journey.exit.leaves_segment and journey.entry.enters_segment
            cancelled = journey is None
            gone = "journey removed from the configuration"
        else:
            found = self.con.execute(
                "SELECT segment, cancelled_at IS NOT NULL FROM state.campaigns WHERE campaign = ?",
                [name],
            ).fetchone()
            segment, cancelled = found if found else (None, True)
            gone = "campaign cancelled"
        rows = self.con.execute(
            _RECHECK, {"kind": kind, "name": name, "audience": f"segments.{segment}"}
        ).fetchall()
        decisions: dict[int, Ready | Skip] = {}
        for message_id, channel, status, exit_reason, in_segment, address, *name in rows:
            if cancelled:
                decision = Skip(gone, cancel=True)
            elif status == "exited":
                decision = Skip(f"journey ended before this step went: {exit_reason}", cancel=True)
            elif segment and not in_segment and kind == "journey":
                decision = Skip(
                    f"journey ended before this step went: left the segment {segment}",
                    cancel=True,
                )
            elif segment and not in_segment:
                decision = Skip(f"left the segment {segment} after the audience was frozen")
            elif address is None:
                decision = Skip(f"not on the {channel} marketing list")
            else:
                decision = Ready(
                    to=address,
                    context=build_context(
                        clinic=self.clinic,
                        first_name=name[0] or "there",
                        preferred_first_name=name[1],
                        last_name=name[2],
                    ),  # fmt: skip
                )
            decisions[message_id] = decision
        return decisions


def prepare_marketing(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, *, triggers: Prepare
) -> Prepare:
    """The ``prepare`` the tick's dispatch uses: see :class:`MarketingPreparer`."""
    return MarketingPreparer(con, cfg, triggers)
