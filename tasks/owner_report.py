"""The clinic owner's weekly report: which week, what it says, and that it goes once.

- **Which week**: the seven clinic-local days before the most recent report day
  (clinic.yaml ``report.weekday``) on or before today, so every run in a week, on whatever day,
  reports the same week under the same key (``report:<clinic>:<first day>``).
- **What it says**: tasks/reports.py's charts and tables for that week (one home for the
  rendering), with bookings won (tasks/bookings_won.py) and engagement (opens and clicks per
  template) on top, and how it is all counted. Counts only: no patient's name, email or phone.
- **Once a week**: the report is not a patient message (not in the ledger) but follows the
  ledger's rule for a send in doubt, in ``state.owner_reports``: ``sending`` is committed just
  before the request; a run that finds it still ``sending`` asks the provider by send key
  (``Provider.reconcile``, as dispatch does): found = sent, certainly never received = sent
  again, otherwise it waits or stays ``unknown`` for a person (``resend``).

Nothing here imports Prefect or blocks: the flow passes the provider in (flows/report.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks import bookings_won, reports
from tasks.config import ClinicConfig
from tasks.messages import stranded
from tasks.messages.ledger import LedgerRow
from tasks.providers.common import SETTLE, Outcome, OutgoingMessage, Provider, RenderedEmail
from tasks.report_settings import WEEKDAYS, ReportSettings
from tasks.warehouse import transaction


@dataclass(frozen=True)
class Week:
    clinic: str
    start: date  # clinic-local, first day reported
    end: date  # last day reported

    @property
    def send_key(self) -> str:
        return f"report:{self.clinic}:{self.start.isoformat()}"

    def label(self) -> str:
        return f"{self.start:%a %d %b} to {self.end:%a %d %b %Y}"


def week_for(clinic: str, settings: ReportSettings, time_zone: str, now: datetime) -> Week:
    """The week a run at ``now`` reports: the seven local days before the most recent
    ``settings.weekday`` on or before today."""
    today = now.astimezone(ZoneInfo(time_zone)).date()
    report_day = today - timedelta(days=(today.weekday() - WEEKDAYS.index(settings.weekday)) % 7)
    return Week(clinic, report_day - timedelta(days=7), report_day - timedelta(days=1))


def local_midnight(day: date, time_zone: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(time_zone)).astimezone(UTC)


def cohort(week: Week, within_days: int, time_zone: str) -> tuple[datetime, datetime]:
    """The messages bookings won counts: those sent in the week that ended ``within_days`` before
    the reported week ended, so each recipient has had the whole window to book by then."""
    shift = timedelta(days=within_days)
    return (
        local_midnight(week.start - shift, time_zone),
        local_midnight(week.end + timedelta(days=1) - shift, time_zone),
    )


# --- the content ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composed:
    email: RenderedEmail
    markdown: str  # the Prefect artifact: counts only
    won: list[bookings_won.Won]


def _sources(config: ClinicConfig) -> list[tuple[str, str]]:
    return (
        [("trigger", t.name) for t in config.triggers if t.enabled]
        + [("journey", j.name) for j in config.journeys]
        + [("campaign", c.name) for c in config.campaigns]
    )


def compose(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    week: Week,
    now: datetime,
) -> Composed:
    """The week's report as an email (HTML with inline charts, and text) and as markdown."""
    settings = config.report
    assert settings is not None
    tz = config.time_zone
    # the week's last day, at noon local: build_report counts the 7 local days up to that day
    week_noon = datetime.combine(week.end, time(12), ZoneInfo(tz))
    report = reports.build_report(con, config.clinic, tz, 7, week_noon, week.start.weekday())
    first, last = cohort(week, settings.booked_within_days, tz)
    won = bookings_won.bookings_won(
        con, first, last, settings.booked_within_days, _sources(config), time_zone=tz
    )
    last_day = (last - timedelta(seconds=1)).astimezone(ZoneInfo(tz)).date()
    cohort_label = f"{first.astimezone(ZoneInfo(tz)):%a %d %b} to {last_day:%a %d %b %Y}"
    tags = ", ".join(config.tag_categories) or "none"
    totals = report.totals_by_source()
    sent = sum(t["sent"] for t in totals.values())
    title = f"{config.name}: your week in messages, {week.label()}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(week.label())} ({html.escape(tz)}); generated "
        f"{now:%Y-%m-%d %H:%M} UTC. {sent} messages sent. {reports.COUNTING}</p>",
        bookings_won.html_section(
            won, cohort_label, settings.booked_within_days, tags, reports.html_table
        ),
        "<h2>What went out this week</h2>",
        *reports.report_sections(report),
        "<h2>About this report</h2>",
        f"<p class='meta'>{html.escape(ABOUT)}</p>",
    ]
    text = _text(title, won, totals, cohort_label, settings.booked_within_days, tags)
    return Composed(
        RenderedEmail(subject=title, html=reports.page(title, sections), text=text),
        _markdown(title, won, totals, cohort_label, settings.booked_within_days, tags),
        won,
    )


ABOUT = (
    "Counts only: this report never names a patient. It is read from your clinic's database "
    "between two runs of the sync (the sync and sending pause for the second it takes; a run "
    "in progress is waited for, never interrupted), and sent once a week: a second run the same "
    "week sends nothing, and if a run stops while sending, the next one asks the mail service "
    "whether it went before sending it again."
)


def _text(title, won, totals, cohort_label, days, tags) -> str:
    lines = [
        title,
        "",
        f"Bookings won (people messaged {cohort_label}, booked within {days} days):",
    ]
    for w in won:
        r = w.as_row()
        base = (
            f"baseline {r['baseline_booked']} of {w.baseline} ({r['baseline_rate']}), "
            f"{r['difference'] or 'no difference to show'}"
            if w.baseline
            else "no baseline"
        )
        lines.append(f"- {w.source}: {w.booked} of {w.recipients} booked "
                     f"({r['booked_rate'] or '-'}); {base}")  # fmt: skip
    if not won:
        lines.append("- no trigger, journey or campaign messaged anyone then")
    lines += ["", "This week, per trigger, journey and campaign:"]
    for (kind, name), t in totals.items():
        lines.append(
            f"- {kind}:{name}: " + ", ".join(f"{t[o]} {o}" for o in reports.OUTCOMES if t[o])
        )
    if not totals:
        lines.append("- no messages")
    how = bookings_won.EXPLANATION.format(days=days, tags=tags)
    lines += ["", f"How bookings won is counted: {how}", "", ABOUT, "",
              "The HTML version of this email has the charts."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _markdown(title, won, totals, cohort_label, days, tags) -> str:
    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "/") for v in values) + " |"

    lines = [
        f"# {title}",
        "",
        f"## Bookings won (people messaged {cohort_label}, within {days} days)",
        "",
    ]
    lines += [cells(bookings_won.HEADER), cells(["---"] * len(bookings_won.HEADER))]
    lines += [cells(row) for row in bookings_won.table_rows(won)] or ["(nobody messaged then)"]
    lines += ["", "## This week", "", cells(["source", *reports.OUTCOMES]),
              cells(["---"] * (1 + len(reports.OUTCOMES)))]  # fmt: skip
    lines += [
        cells([f"{k}:{n}", *(t[o] for o in reports.OUTCOMES)]) for (k, n), t in totals.items()
    ]
    lines += ["", bookings_won.EXPLANATION.format(days=days, tags=tags)]
    return "\n".join(lines)


# --- once a week: state.owner_reports -------------------------------------------------------------


def current(con: duckdb.DuckDBPyConnection, week: Week) -> dict | None:
    row = con.execute(
        "SELECT * FROM state.owner_reports WHERE send_key = ?", [week.send_key]
    ).fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in con.description], row, strict=True))


def latest(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The newest report row (for the tick summary's link), or None."""
    row = con.execute(
        "SELECT week_start, week_end, status, sent_at FROM state.owner_reports "
        "ORDER BY week_start DESC LIMIT 1"
    ).fetchone()
    return (
        None
        if row is None
        else dict(zip(("week_start", "week_end", "status", "sent_at"), row, strict=True))
    )


def _as_ledger_row(row: dict) -> LedgerRow:
    """The report's row as a provider's reconcile reads it: send key, purpose, status, when."""
    return LedgerRow(
        message_id=0, send_key=row["send_key"], source_kind="report", source_name=row["clinic"],
        patient_id=0, appointment_id=None, channel="email", purpose="transactional",
        template="owner-report", due_at=row["sending_at"], expires_at=None, status=row["status"],
        status_reason=row["status_reason"], attempts=row["attempts"], next_attempt_at=None,
        claim_id=None, provider=row["provider"], provider_message_id=row["provider_message_id"],
        error_code=None, to_address=None, content_hash=row["content_hash"],
        sending_at=row["sending_at"], sent_at=row["sent_at"],
    )  # fmt: skip


def settle(
    con: duckdb.DuckDBPyConnection,
    week: Week,
    provider: Provider,
    now: datetime,
    *,
    resend: bool = False,
    settle_after: timedelta = SETTLE,
) -> str | None:
    """Where this week's report stands before sending: None = not sent (go ahead), else its
    status (``sent``, ``failed``, ``unknown``, or ``sending`` while it is too early to tell).
    A row left ``sending`` (or ``unknown``) is asked of the provider first. ``resend``: a person
    checked the provider and wants a failed or unknown report sent again."""
    row = current(con, week)
    if row is None:
        return None
    if stranded.is_stranded(
        row["status"], row["provider"], row["sending_at"], provider.name, now, settle_after
    ):  # only that provider's account can tell now
        why = stranded.reason(row["provider"], provider.name)
        record(con, week, Outcome("unknown", reason=why), now)
        row = current(con, week)
        assert row is not None
    if row["status"] in ("sending", "unknown") and row["provider"] == provider.name:
        (outcome,) = provider.reconcile([_as_ledger_row(row)], now, settle_after)
        # an unknown report only a confirmation changes (as dispatch's unknown messages)
        if (outcome.kind == "sent" or row["status"] == "sending") and record(
            con, week, outcome, now
        ) == "planned":
            return None  # certainly never received: send it again
        row = current(con, week)
        assert row is not None  # still there: record() removes it only on a retry, returned above
    if resend and row["status"] in ("failed", "unknown"):
        _forget(con, week)
        return None
    return row["status"]


def _forget(con: duckdb.DuckDBPyConnection, week: Week) -> None:
    with transaction(con):
        con.execute("DELETE FROM state.owner_reports WHERE send_key = ?", [week.send_key])


def claim(
    con: duckdb.DuckDBPyConnection, week: Week, provider: str, digest: str, now: datetime
) -> None:
    """Commit ``sending`` just before the request (a second claim of the week fails)."""
    with transaction(con):
        con.execute(
            "INSERT INTO state.owner_reports (send_key, clinic, week_start, week_end, status, "
            "provider, content_hash, sending_at, updated_at) VALUES (?, ?, ?, ?, 'sending', ?, "
            "?, ?, ?)",
            [week.send_key, week.clinic, week.start, week.end, provider, digest, now, now],
        )


def record(con: duckdb.DuckDBPyConnection, week: Week, outcome: Outcome, now: datetime) -> str:
    """Write what became of the request; ``retry`` (certainly not taken) removes the claim so
    the next run sends it. Returns the status now (``planned`` for a removed claim)."""
    if outcome.kind == "retry":
        _forget(con, week)
        return "planned"
    if outcome.kind in ("pending", "doubt"):  # the next run asks the provider
        return "sending"
    with transaction(con):
        con.execute(
            "UPDATE state.owner_reports SET status = ?, status_reason = ?, "
            "provider_message_id = coalesce(?, provider_message_id), updated_at = ?, "
            "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE send_key = ?",
            [outcome.kind, outcome.reason, outcome.provider_message_id, now, outcome.kind, now,
             week.send_key],
        )  # fmt: skip
    return outcome.kind


def outgoing(week: Week, to: str, email: RenderedEmail) -> OutgoingMessage:
    """The report as a provider sends it: transactional (the transactional stream), to the
    owner only, keyed by clinic and week (Postmark's Metadata.send_key, the outbox's file)."""
    return OutgoingMessage(
        message_id=0, send_key=week.send_key, channel="email", purpose="transactional",
        tag="owner-report", to=to, content=email,
    )  # fmt: skip
