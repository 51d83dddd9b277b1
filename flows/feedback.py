"""The feedback flow: bounces, provider suppressions, STOP/START replies, SMS delivery statuses
and unsubscribe clicks into state.suppressions, then the report tables as artifacts. One step
of the tick; also runs alone (``relay feedback``).

Thin wiring around ``tasks.feedback``, the providers' own feeds (``feedback_feeds``: the outbox
has none) and ``tasks.reports``. Each feed is a task that takes the open connection
(``cache_policy=NONE``) and returns counts only. A feed that cannot be read records nothing and
leaves its cursor; the others still run, and the flow fails at the end so
the tick (and its alerts) show that feedback is not coming back.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client

from blocks.resolve import providers_for
from flows.artifacts import artifact_key
from tasks import feedback, feedback_events, reports
from tasks.config import ClinicConfig, load_clinic
from tasks.warehouse import open_db

# How many days of history the per-tick report artifacts show.
ARTIFACT_DAYS = 14


class FeedbackFailed(RuntimeError):
    """One or more feeds could not be read this time (the message says which, and why)."""


@task(cache_policy=NONE)
def record_unsubscribe_clicks(con, config: ClinicConfig) -> tuple[dict[str, int], str | None]:
    """The clicks of the endpoint on this machine (its inbox) and of any machine (Prefect
    events, tasks/feedback_events.py), in one task: (counts, why the events could not be read)."""
    now = datetime.now(UTC)
    counts = feedback.drain_unsubscribes(con, feedback.inbox_path(config.database_path), now)
    try:
        with get_client(sync_client=True) as client:
            counts.update(
                feedback_events.pull_unsubscribe_events(
                    con, config.clinic, now,
                    post=lambda path, body: client.request("POST", path, json=body).json(),
                    get=lambda url: client.request("GET", url).json(),
                )
            )  # fmt: skip
    except feedback.FeedbackUnavailable as exc:
        return dict(counts), str(exc)
    return dict(counts), None


@task(cache_policy=NONE, task_run_name="pull-{feed.name}")
def pull_feed(con, feed: feedback.Feed) -> dict[str, int]:
    return dict(feed.pull(con, datetime.now(UTC)))


@task(cache_policy=NONE)
def publish_reports(con, config: ClinicConfig, pulled: dict[str, int]) -> None:
    """Counts only: source names, days, statuses and numbers, never a person."""
    report = reports.build_report(
        con, config.clinic, config.time_zone, ARTIFACT_DAYS, datetime.now(UTC)
    )
    tables = [
        ("feedback", [{"feed item": k, "count": n} for k, n in sorted(pulled.items())],
         "what this pull recorded"),
        ("messages", reports.message_rows(report), "messages per day per trigger/journey/campaign"),
        ("deliveries", reports.delivery_rows(report),
         "SMS delivered vs sent per trigger/journey/campaign"),
        ("lists", reports.list_rows(report), "list and segment joins and leaves per day"),
        ("suppressions", reports.suppression_rows(report), "suppressions and opt-ins per day"),
    ]  # fmt: skip
    for name, rows, what in tables:
        create_table_artifact(
            rows or [{"none": f"nothing in the last {ARTIFACT_DAYS} days"}],
            key=artifact_key(name, config.clinic),
            description=f"{config.clinic}: {what} (last {ARTIFACT_DAYS} days)",
        )


@flow(name="feedback", flow_run_name="feedback-{clinic}")
def pull_feedback(clinic: str = "demo") -> dict[str, int]:
    """Pull what came back from the providers and the unsubscribe link; publish the reports."""
    config = load_clinic(clinic)
    logger = get_run_logger()
    providers = providers_for(config)
    pulled: Counter = Counter()
    problems: list[str] = []
    try:
        with open_db(config.database_path) as con:
            clicks, unavailable = record_unsubscribe_clicks(con, config)
            pulled.update(clicks)
            if unavailable:
                problems.append(unavailable)
                logger.warning("%s", unavailable)
            limit = config.marketing_list.soft_bounce_limit
            feeds = [f for p in providers.values() for f in p.feedback_feeds(limit)]
            for feed in feeds:
                try:
                    pulled.update(pull_feed(con, feed))
                except feedback.FeedbackUnavailable as exc:
                    problems.append(str(exc))
                    logger.warning("%s", exc)
            publish_reports(con, config, dict(pulled))
    finally:
        for provider in providers.values():
            provider.close()
    logger.info("feedback for %s: %s", config.clinic, dict(pulled) or "nothing new")
    if problems:
        raise FeedbackFailed(f"{config.clinic}: " + " ".join(problems))
    return dict(pulled)
