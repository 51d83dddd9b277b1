"""The feedback flow: bounces, provider suppressions, STOP/START replies, SMS delivery statuses
and unsubscribe clicks into state.suppressions, Postmark's opens and clicks into
state.email_engagement (``engagement_feeds``, counts only), then the report tables as artifacts. One step
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
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client

from blocks.resolve import providers_for
from flows.artifacts import Artifact, StepOutput, artifact_key, call
from tasks import feedback, feedback_events, reports
from tasks.config import ClinicConfig, load_clinic
from tasks.errors import SAID_IN_THE_ERROR, UserFacingError
from tasks.warehouse import data_out_of_errors, open_db

# How many days of history the per-tick report artifacts show.
ARTIFACT_DAYS = 14


class FeedbackFailed(UserFacingError, RuntimeError):
    """One or more feeds could not be read this time (the message says which, and why; an
    operator checks the provider or the network); ``output``: what the step did all the same
    (counts and report tables)."""

    def __init__(self, message: str, output: StepOutput | None = None) -> None:
        super().__init__(message)
        self.output = output


@task(cache_policy=NONE)
@data_out_of_errors()
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
                    # paths of /events/filter and its next pages, not one of the typed routes
                    post=lambda path, body: client.request("POST", path, json=body).json(),  # type: ignore[arg-type]
                    get=lambda url: client.request("GET", url).json(),  # type: ignore[arg-type]
                )
            )  # fmt: skip
    except feedback.FeedbackUnavailable as exc:
        return dict(counts), str(exc)
    return dict(counts), None


@task(cache_policy=NONE, task_run_name="pull-{feed.name}")
@data_out_of_errors()
def pull_feed(con, feed: feedback.Feed) -> dict[str, int]:
    return dict(feed.pull(con, datetime.now(UTC)))


@task(cache_policy=NONE)
@data_out_of_errors()
def report_artifacts(con, config: ClinicConfig, pulled: dict[str, int]) -> list[Artifact]:
    """What this pull recorded, then the report tables of the last ``ARTIFACT_DAYS`` days.
    Counts only: source names, days, statuses and numbers, never a person."""
    report = reports.build_report(
        con, config.clinic, config.time_zone, ARTIFACT_DAYS, datetime.now(UTC)
    )
    tables = [
        ("messages", reports.message_rows(report), "messages per day per trigger/journey/campaign"),
        ("deliveries", reports.delivery_rows(report),
         "SMS delivered vs sent per trigger/journey/campaign"),
        ("lists", reports.list_rows(report), "list and segment joins and leaves per day"),
        ("suppressions", reports.suppression_rows(report), "suppressions and opt-ins per day"),
    ]  # fmt: skip
    return [
        Artifact(
            key=artifact_key(name, config.clinic),
            table=rows or [{"none": f"nothing in the last {ARTIFACT_DAYS} days"}],
            description=f"{config.clinic}: {what} (last {ARTIFACT_DAYS} days)",
        )
        for name, rows, what in tables
    ]


def feedback_clinic(clinic: str, *, as_tasks: bool = True, with_reports: bool = True) -> StepOutput:
    """Pull what came back from the providers and the unsubscribe link, and the report tables
    (``with_reports``). The flow below and the tick's feedback task (``as_tasks=False``) both run
    this. A feed that could not be read raises FeedbackFailed at the end, with what was done."""
    config = load_clinic(clinic)
    logger = get_run_logger()
    providers = providers_for(config)
    pulled: Counter = Counter()
    problems: list[str] = []
    feeds: list[feedback.Feed] = []
    try:
        with open_db(config.database_path, create=False) as con:
            clicks, unavailable = call(record_unsubscribe_clicks, as_tasks)(con, config)
            pulled.update(clicks)
            if unavailable:
                problems.append(unavailable)
                logger.warning("%s", unavailable, extra=SAID_IN_THE_ERROR)
            limit = config.marketing_list.soft_bounce_limit
            feeds = [f for p in providers.values() for f in p.feedback_feeds(limit)]
            # opens and clicks (tasks/engagement.py): only Postmark reports them
            feeds += [f for p in providers.values()
                      for f in getattr(p, "engagement_feeds", list)()]  # fmt: skip
            for feed in feeds:
                try:
                    pulled.update(call(pull_feed, as_tasks)(con, feed))
                except feedback.FeedbackUnavailable as exc:
                    problems.append(str(exc))
                    logger.warning("%s", exc, extra=SAID_IN_THE_ERROR)
            artifacts = [
                Artifact(
                    key=artifact_key("feedback", config.clinic),
                    table=[{"feed item": k, "count": n} for k, n in sorted(pulled.items())]
                    or [{"none": f"nothing in the last {ARTIFACT_DAYS} days"}],
                    description=f"{config.clinic}: what this pull recorded",
                )
            ]
            if with_reports:
                artifacts += call(report_artifacts, as_tasks)(con, config, dict(pulled))
    finally:
        for provider in providers.values():
            provider.close()
    logger.info("feedback for %s: %s", config.clinic, dict(pulled) or "nothing new")
    made = (1 + len(feeds) + with_reports) * as_tasks
    output = StepOutput(dict(pulled), artifacts, made)
    if problems:
        raise FeedbackFailed(f"{config.clinic}: " + " ".join(problems), output)
    return output


@flow(name="feedback", flow_run_name="feedback-{clinic}")
def pull_feedback(clinic: str = "demo") -> dict[str, int]:
    """Pull what came back from the providers and the unsubscribe link; publish the reports."""
    with data_out_of_errors():
        try:
            return feedback_clinic(clinic).publish()
        except FeedbackFailed as failed:
            if failed.output:
                failed.output.publish()  # what could be read still shows
            raise
