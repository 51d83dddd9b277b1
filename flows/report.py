"""The owner's weekly report: rendered from the clinic's database, emailed to the owner's address
(clinic.yaml ``report.to``) through the transactional email provider, published as a Prefect
artifact (``relay-report-<clinic>``, linked from each tick's summary). Once per clinic and week.

A weekly deployment runs it (``relay serve`` for the demo; ``relay deploy`` for each clinic, on
``report.weekday`` at ``report.at`` in the clinic's time zone, ``ReportSettings.cron``).

The clinic's database has one writer at a time, and a tick holds it from its first step to its
summary. The report does not join the tick's deployment slot: it reads a snapshot between ticks,
taking its turn at the database's lock (tasks/warehouse.py) for the second it needs to read and
to record ``sending``, waiting (up to ``WAIT_SECONDS``) while a tick runs, and holding nothing
while it talks to the mail provider. A tick that starts meanwhile waits that second, as it would
for another tick.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.resolve import providers_for
from flows.artifacts import artifact_key
from tasks import owner_report as weekly
from tasks.config import ConfigError, load_clinic
from tasks.errors import UserFacingError
from tasks.messages.addresses import address_problem
from tasks.providers.common import Outcome, ProviderUnavailable
from tasks.warehouse import data_out_of_errors, open_db

# A tick can run for minutes (a first sync, a big build): the weekly report waits for it.
WAIT_SECONDS = 30 * 60


class ReportNotSent(UserFacingError):
    """The week's report did not go this run; the message says why and what happens next."""


def report_key(clinic: str) -> str:
    return artifact_key("relay", "report", clinic)


def summary_line(latest: dict | None, clinic: str) -> str:
    """The tick summary's line about the newest owner report, with a link to its artifact."""
    if latest is None:
        return ""
    key = report_key(clinic)
    status = latest["status"]
    if latest["sent_at"]:
        status = f"sent {latest['sent_at']:%Y-%m-%d %H:%M} UTC"
    return (
        f"\n\n**Owner's report:** week {latest['week_start']} to {latest['week_end']}, "
        f"{status}: [{key}](/artifacts/key/{key})."
    )


@flow(name="owner-report", flow_run_name="report-{clinic}", retries=2, retry_delay_seconds=300)
def owner_report(clinic: str = "demo", resend: bool = False, now: datetime | None = None) -> dict:
    """Email this week's report to the clinic's owner, once. ``resend``: after checking the
    provider, send again a report recorded failed or unknown. ``now`` fixes the clock."""
    with data_out_of_errors():
        config = load_clinic(clinic)
        if config.report is None:
            raise ConfigError(
                f"{config.source}: no report: section, so there is no owner to send to. Add "
                'report: {to: owner@your-clinic.example, weekday: monday, at: "08:00"}.'
            )
        if problem := address_problem("email", config.report.to):
            raise ConfigError(f"{config.source}: report.to: {problem.replace('on file ', '')}")
        logger = get_run_logger()
        now = now or datetime.now(UTC)
        week = weekly.week_for(config.clinic, config.report, config.time_zone, now)
        done = {"clinic": config.clinic, "week": week.start.isoformat()}
        provider = providers_for(config)["email"]
        try:
            with open_db(config.database_path, wait_seconds=WAIT_SECONDS, create=False) as con:
                status = weekly.settle(con, week, provider, now, resend=resend)
                if status == "sent":
                    logger.info("The report of the week of %s is already sent.", week.start)
                    return {**done, "status": status, "sent_now": False}
                if status is not None:
                    earlier = (weekly.current(con, week) or {}).get("status_reason")
                    raise ReportNotSent(
                        _why_not(config.clinic, week, status, earlier or "an earlier run")
                    )
                composed = weekly.compose(con, config, week, now)
                message = weekly.outgoing(week, config.report.to, composed.email)
                weekly.claim(con, week, provider.name, message.content_hash, now)
            # Nothing held while the provider is asked. Anything but an outcome or
            # ProviderUnavailable leaves the claim `sending`: the next run asks the provider.
            try:
                (outcome,) = provider.send([message])
            except ProviderUnavailable:
                _record(config, week, Outcome("retry"))
                raise
            status = _record(config, week, outcome)
        finally:
            provider.close()
        create_markdown_artifact(
            composed.markdown,
            key=report_key(config.clinic),
            description=f"{config.clinic}: the owner's weekly report (counts only)",
        )
        if status != "sent":
            raise ReportNotSent(
                _why_not(config.clinic, week, status, outcome.reason or outcome.kind)
            )
        logger.info("Sent the report of the week of %s to the owner through %s.", week.start,
                    provider.name)  # fmt: skip
        return {**done, "status": status, "sent_now": True}


def _record(config, week, outcome: Outcome) -> str:
    with open_db(config.database_path, wait_seconds=WAIT_SECONDS) as con:
        return weekly.record(con, week, outcome, datetime.now(UTC))


def _why_not(clinic: str, week, status: str, why: str) -> str:
    """Why the week's report did not go, and what happens next; no address in it."""
    next_step = {
        "planned": "it certainly did not go; the next run (a retry) sends it.",
        "sending": "too early to know whether the provider has it; the next run asks again.",
        "failed": "check the owner's address and the provider's activity, then run again "
        "with resend=true.",
        "unknown": "it may have gone: check the provider's activity for send key "
        f"{week.send_key}, and run again with resend=true only if it did not.",
    }.get(status, "")
    return f"{clinic}: the report of the week of {week.start} is {status} ({why}): {next_step}"
