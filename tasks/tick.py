"""The tick's own rules: when is a tick too late to bother, when is the data too old to act on, and
what one tick did, in counts.

A tick (flows/tick.py) runs the step flows in order. Three things are decided here rather than in
a step: the circuit breaker (no planning or sending from data a failed or stale sync left behind:
a cancelled appointment we have not seen yet must not get its reminder), what a model that did
not build holds (:func:`held_sources`: each trigger, journey and campaign reading a model the
latest build left as it was; the rest go on), and the summary, read from the clinic's database
after the steps, so it does not depend on what each step returns.
Everything here is counts and reasons: the summary is published in the Prefect UI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from tasks.config import Campaign, ClinicConfig, Journey
from tasks.marketing import campaigns, journeys
from tasks.messages import ledger
from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.ledger import LedgerRow
from tasks.models.holds import holds
from tasks.models.project import tables_read
from tasks.triggers import names
from tasks.triggers.definition import Trigger
from tasks.triggers.query import candidate_query
from tasks.warehouse import one

# Step outcomes, as the summary shows them.
COMPLETED, FAILED, HELD = "completed", "failed", "held"


@dataclass
class Step:
    """What became of one step of a tick; ``reason`` says why it failed or did not run."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Freshness:
    """When the data was last known to match Cliniko: the start of the last completed sync."""

    as_of: datetime | None
    now: datetime

    @property
    def age(self) -> timedelta | None:
        return None if self.as_of is None else self.now - self.as_of

    def describe(self) -> str:
        age = self.age
        if age is None:  # no as_of
            return "never synced"
        minutes = age.total_seconds() / 60
        return f"as of {self.as_of:%Y-%m-%d %H:%M:%S} UTC ({minutes:.1f} min old)"


def build_recorded(con: duckdb.DuckDBPyConnection, since: datetime) -> bool:
    """Whether a model build finished since ``since`` and recorded what it held: a failed build
    step without such a record (a crash, a lost connection) leaves nothing to go by."""
    return bool(
        one(
            con,
            "SELECT count(*) FROM state.model_builds WHERE started_at >= ? AND status = 'succeeded'",
            [since],
        )[0]
    )


def freshness(con: duckdb.DuckDBPyConnection, now: datetime) -> Freshness:
    """As of the start of the last completed sync of every resource: the fast lane's partial
    syncs (a few resources, kind 'partial') say nothing of the others' age."""
    as_of = one(
        con,
        "SELECT max(started_at) FROM state.sync_runs "
        "WHERE status = 'completed' AND kind IS DISTINCT FROM 'partial'",
    )[0]
    return Freshness(as_of, now)


def breaker(sync: Step, fresh: Freshness, stale_after_minutes: int) -> str | None:
    """Why planning and sending must wait this tick, or None when they may go ahead."""
    reasons = []
    if sync.status != COMPLETED:
        reasons.append(f"the sync {sync.status}")
    if fresh.age is None:
        reasons.append("the clinic has never been synced")
    elif fresh.age > timedelta(minutes=stale_after_minutes):
        reasons.append(
            f"the data is {fresh.age.total_seconds() / 60:.0f} minutes old "
            f"(sync.stale_after_minutes is {stale_after_minutes})"
        )
    return "; ".join(reasons) or None


def hold_to_alert(reason: str | None, sync: Step, models: Step) -> str | None:
    """The hold the tick's relay.sync.stale event (its "sending held" alert) tells, or None.
    A tick whose sync or model build failed fails, and "a run failed or crashed" tells it once:
    what failed, why and what to do, and what the breaker held (``failure``); the event, sent
    too, made a second alert about the same failure. So it tells only a hold in a tick that goes
    on: data older than ``sync.stale_after_minutes`` though the sync completed."""
    return None if FAILED in (sync.status, models.status) else reason


def _journey_reads(journey: Journey) -> set[str]:
    segments = {journey.entry.enters_segment, journey.entry.exits_segment}
    segments |= {getattr(step, "segment", None) for step in journey.steps}
    lists = {c for c in (*journey.channels, journey.entry.joins_list) if c is not None}
    return {f"segments.{s}" for s in segments if s} | {MARKETING_LISTS[c].table for c in lists}


def reads(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig) -> dict[tuple[str, str], set[str]]:
    """(source kind, name) -> the models it reads: a trigger's from its own query (the tables
    the SQL names, read as the runner reads a model's), a journey's and a campaign's from their
    segments and the marketing lists they send on (a confirmed campaign's as confirmed); all of
    them read marts.patients."""
    found = {("trigger", t.name): _trigger_reads(con, t) for t in cfg.triggers}
    found |= {("journey", j.name): _journey_reads(j) for j in cfg.journeys}
    found |= {("campaign", c.name): _campaign_reads(con, c) for c in cfg.campaigns}
    return {source: tables | {"marts.patients"} for source, tables in found.items()}


def _trigger_reads(con: duckdb.DuckDBPyConnection, trigger: Trigger) -> set[str]:
    return set(tables_read(con, f"trigger {trigger.name}", candidate_query(trigger, "window")[0]))


def _campaign_reads(con: duckdb.DuckDBPyConnection, configured: Campaign) -> set[str]:
    """A campaign reads the segment and list it sends from: as its operator confirmed them
    (campaigns.confirmed), whatever clinic.yaml says since; as clinic.yaml says before that. A
    confirmation this version cannot honour falls back to clinic.yaml here: freeze_due says why."""
    try:
        record = campaigns.confirmed(con, configured)
    except campaigns.CampaignError:
        record = None
    sent = record[0] if record else configured
    return {f"segments.{sent.segment}", MARKETING_LISTS[sent.channel].table}


def held_sources(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig) -> dict[tuple[str, str], str]:
    """(source kind, name) -> why it waits this tick: it reads a model the latest build did not
    rebuild (or no build is usable at all), a trigger's name matches nothing in Cliniko, or a
    journey's entry.date_field is not a DATE column. Sources missing here go on."""
    state = holds(con)
    found = {source: state.why(tables) for source, tables in reads(con, cfg).items()}
    # a trigger whose name matches nothing in Cliniko (tasks/triggers/names.py) waits too
    for name, why in names.unmatched(con, cfg.triggers).items():
        found[("trigger", name)] = "; ".join(filter(None, [found.get(("trigger", name)), why]))
    # so does a journey whose date entry names no DATE column (the others and campaigns go on)
    for name, why in journeys.date_field_problems(con, cfg).items():
        found[("journey", name)] = "; ".join(filter(None, [found.get(("journey", name)), why]))
    return {source: why for source, why in found.items() if why}


def trigger_held(con: duckdb.DuckDBPyConnection, trigger: Trigger) -> str | None:
    """Why the next tick would hold ``trigger`` if it were on (as :func:`held_sources` does an
    enabled one): ``relay preview trigger``, which shows any trigger as if switched on."""
    why = [
        holds(con).why(_trigger_reads(con, trigger) | {"marts.patients"}),
        names.unmatched(con, [trigger], enabled_only=False).get(trigger.name),
    ]
    return "; ".join(w for w in why if w) or None


def warnings(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig) -> list[str]:
    """What the summary and its alert warn of, every tick until it is put right: a trigger held
    because a name matches nothing in Cliniko, a journey held because its entry.date_field is
    not a DATE column, and names that drifted in Cliniko since they were recorded (the trigger
    goes on with its ids; tasks/triggers/names.py)."""
    held = [
        f"trigger '{name}' held: {why}" for name, why in names.unmatched(con, cfg.triggers).items()
    ] + [
        f"journey '{name}' held: {why}"
        for name, why in journeys.date_field_problems(con, cfg).items()
    ]
    return (
        held
        + names.unmatched_tags(con, cfg.written_tag_categories())
        + names.drift(con, cfg.triggers, cfg.tag_categories)
    )


def of_kind(held: dict[tuple[str, str], str], kind: str) -> dict[str, str]:
    """The ``kind`` sources (trigger, journey, campaign) of :func:`held_sources`: name -> why."""
    return {name: why for (k, name), why in held.items() if k == kind}


# How long dispatch leaves a held source's due message before looking again: about a tick.
HOLD_RETRY = timedelta(minutes=1)


def hold_rows(
    con: duckdb.DuckDBPyConnection,
    rows: list[LedgerRow],
    now: datetime,
    held: dict[tuple[str, str], str],
) -> list[LedgerRow]:
    """Dispatch's first gate: due messages of a held source stay planned (deferred a little,
    with the reason) instead of going out from tables the latest build did not rebuild."""
    waiting = [r for r in rows if (r.source_kind, r.source_name) in held]
    if waiting:
        ledger.defer(
            con,
            [r.message_id for r in waiting],
            [now + HOLD_RETRY] * len(waiting),
            [f"held: {held[(r.source_kind, r.source_name)]}"[:500] for r in waiting],
            now,
        )
    return [r for r in rows if (r.source_kind, r.source_name) not in held]


def too_late(
    expected_start: datetime | None, now: datetime, auto_scheduled: bool, max_lateness: timedelta
) -> str | None:
    """Whether a scheduled tick starts long after its time (the worker was down, or ticks queued
    behind a slow one). Such a tick gives way to a newer one already due (flows/tick.py), as each
    tick catches up on everything since the last: running the backlog would only delay the
    fresh one. Runs a person asked for always run."""
    if not auto_scheduled or expected_start is None:
        return None
    late = now - expected_start
    if late <= max_lateness:
        return None
    return (
        f"this scheduled tick starts {late.total_seconds() / 60:.0f} minutes late "
        f"(more than {max_lateness.total_seconds() / 60:.0f})"
    )


@dataclass
class Summary:
    """Counts of one tick, for the artifact and the flow's result. No personal data."""

    clinic: str
    started_at: datetime
    steps: list[Step] = field(default_factory=list)
    held: str | None = None
    held_sources: dict[str, str] = field(default_factory=dict)  # "kind name" -> why it waits
    warnings: list[str] = field(default_factory=list)  # names that drifted in Cliniko
    freshness: str = ""
    rows_synced: dict[str, int] = field(default_factory=dict)
    model_build: dict = field(default_factory=dict)
    audiences: dict[str, dict[str, int]] = field(default_factory=dict)
    messages: dict[str, dict[str, int]] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status == FAILED]


def clip(text: str, limit: int) -> str:
    """``text`` whole when it fits in ``limit`` characters, else cut between words and marked
    " …": a reason cut mid-word reads as another word ("the account's reg")."""
    if len(text) <= limit:
        return text
    return text[: limit - 2].rsplit(" ", 1)[0] + " …"


def failure(s: Summary) -> str:
    """What a tick with a failed step fails with, which the "a run failed or crashed" alert
    shows: each failed step and why (its advice whole: a bad key's is about 300 characters),
    then what the breaker held, or else what it held of the rest."""
    return (
        f"{s.clinic}: "
        + "; ".join(f"{step.name} failed ({clip(step.reason, 600)})" for step in s.failed)
        + (f". Planning and sending held: {s.held}" if s.held else "")
        + "".join(
            f". Held: {name} ({clip(why, 200)})"
            for name, why in s.held_sources.items()
            if not s.held  # the breaker holds everything already
        )
    )


def rows_synced(sync_result: dict[str, dict] | None) -> dict[str, int]:
    """Per resource, rows new + updated + removed in this tick's sync."""
    if not sync_result:
        return {}
    return {
        name: c.get("new", 0) + c.get("updated", 0) + c.get("removed", 0)
        for name, c in sync_result.items()
    }


def collect(con: duckdb.DuckDBPyConnection, summary: Summary) -> Summary:
    """Fill the summary from what the steps left in the database since the tick started."""
    since = summary.started_at
    build = con.execute(
        "SELECT build_id, status, failed_file, summary FROM state.model_builds "
        "WHERE started_at >= ? ORDER BY started_at DESC LIMIT 1",
        [since],
    ).fetchone()
    if build:
        build_id, status, failed_file, detail = build
        detail = json.loads(detail) if isinstance(detail, str) else (detail or {})
        summary.model_build = {
            "status": status,
            "models": len(detail.get("rows") or {}),
            "tests_passed": detail.get("tests_passed", 0),
            "failed_file": failed_file,
        }
        changes = dict.fromkeys(
            (r[0] for r in con.execute("SELECT audience FROM state.audiences").fetchall()), None
        )
        for audience, joined, left in con.execute(
            "SELECT audience, count(*) FILTER (WHERE event = 'joined' AND NOT initial), "
            "count(*) FILTER (WHERE event = 'left') FROM state.membership_events "
            "WHERE build_id = ? GROUP BY audience",
            [build_id],
        ).fetchall():
            changes[audience] = (joined, left)
        sizes = dict(
            con.execute(
                "SELECT audience, count(*) FROM state.audience_members GROUP BY audience"
            ).fetchall()
        )
        summary.audiences = {
            a: {"size": sizes.get(a, 0), "joined": (c or (0, 0))[0], "left": (c or (0, 0))[1]}
            for a, c in sorted(changes.items())
        }
    moments = {
        "planned": "planned_at",
        "sent": "sent_at",
        "skipped": "skipped_at",
        "cancelled": "cancelled_at",
        "failed": "failed_at",
        "unknown": "unknown_at",
    }
    for outcome, column in moments.items():
        reason = (
            "'-'" if outcome in ("planned", "sent") else "coalesce(error_code, status_reason, '-')"
        )
        rows = con.execute(
            f"SELECT {reason}, count(*) FROM state.messages WHERE {column} >= ? GROUP BY 1 ORDER BY 1",
            [since],
        ).fetchall()
        if rows:
            summary.messages[outcome] = dict(rows)
    summary.backlog = dict(
        con.execute(
            "SELECT status, count(*) FROM state.messages "
            "WHERE status IN ('planned', 'sending', 'unknown') GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    return summary


def moved(s: Summary, pulled: object) -> bool:
    """Whether this tick moved anything the feedback report tables count (tasks/reports.py:
    messages by their latest move, list joins and leaves, suppressions and deliveries, which
    the feedback step's counts hold): if not, the tables published last still hold. A failed
    or held feedback step (no counts) counts as moved: the tables are rebuilt rather than
    trusted."""
    joined_or_left = any(a["joined"] or a["left"] for a in s.audiences.values())
    return (
        bool(s.messages) or joined_or_left or not isinstance(pulled, dict) or any(pulled.values())
    )


def markdown(s: Summary) -> str:
    """The tick's artifact: steps, freshness, the breaker, then counts."""
    lines = [
        f"# Tick: {s.clinic}",
        "",
        f"Started {s.started_at:%Y-%m-%d %H:%M:%S} UTC. Data {s.freshness}.",
    ]
    if s.held:
        lines += ["", f"**Planning and sending held:** {s.held}."]
    if s.held_sources and not s.held:
        lines += ["", "**Held** (everything else went on):"]
        lines += [f"- {source}: {why}" for source, why in sorted(s.held_sources.items())]
    if s.warnings:
        lines += [
            "",
            "**Warnings** (names in clinic.yaml that match nothing or changed in Cliniko):",
        ]
        lines += [f"- {warning}" for warning in s.warnings]
    lines += ["", "| step | outcome | seconds | why |", "|---|---|---:|---|"]
    for step in s.steps:
        why = clip(step.reason.replace("|", "/").replace("\n", " "), 500)
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {why} |")
    if s.rows_synced:
        changed = ", ".join(f"{k} {v}" for k, v in s.rows_synced.items() if v) or "no changes"
        lines += ["", f"**Rows synced:** {sum(s.rows_synced.values())} ({changed})."]
    if s.model_build:
        b = s.model_build
        where = f"; failed in {b['failed_file']}" if b.get("failed_file") else ""
        lines += [
            "",
            f"**Models:** {b['status']}, {b['models']} built, "
            f"{b['tests_passed']} data tests passed{where}.",
        ]
    if s.audiences:
        lines += ["", "| list / segment | size | joined | left |", "|---|---:|---:|---:|"]
        for name, a in s.audiences.items():
            lines.append(f"| {name} | {a['size']} | {a['joined']} | {a['left']} |")
    lines += ["", "| messages | reason | count |", "|---|---|---:|"]
    if not s.messages:
        lines.append("| none this tick | | 0 |")
    for outcome, reasons in s.messages.items():
        for reason, n in reasons.items():
            lines.append(f"| {outcome} | {reason} | {n} |")
    if s.backlog:
        lines += [
            "",
            "Waiting in the ledger: " + ", ".join(f"{n} {k}" for k, n in s.backlog.items()) + ".",
        ]
    return "\n".join(lines)
