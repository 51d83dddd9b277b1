"""The tick: one flow run per clinic that runs the whole pipeline, each step one task in the UI.

    sync -> models -> plan -> journeys -> dispatch -> feedback -> summary

Each step is one task of the tick, named after the step (``sync``, ``models``...), running the
same function as the step's own flow (``cliniko-sync``, ``build-models``..., each deployable and
runnable alone): a flow run per step cost the Prefect server more than an idle tick's work
(docs/scaling.md, "What an idle tick costs"). Each step's table goes into the tick's one summary
artifact instead of an artifact of its own.

A failed step stops the steps that depend on it. The circuit breaker (tasks/tick.py) holds
planning, journeys and dispatch when the sync failed, the data is older than the clinic's
``sync.stale_after_minutes`` or the model build failed without recording what it held. A build
that held some models (a broken file) holds only the triggers, journeys and campaigns reading
them (tasks.tick.held_sources, named in the summary and in the failure the alert shows); plan,
journeys and dispatch run for the rest. So does a trigger whose filter names something Cliniko
has not got (tasks/triggers/names.py): that and names renamed in Cliniko since a trigger went live
are warnings in the summary and a relay.clinic.warning event, which an alert matches. The clinic's database stays with this run from the
first step to the summary (tasks.warehouse.hold), so no other run of the clinic slips in between
steps; the deployment's concurrency limit of 1 keeps a second tick queued rather than blocked
on the lock. Before any step, the clinic's home is checked (tasks/home.py): a tick on a machine
that is not the clinic's home, or against a database that is not its current copy, does nothing
and fails saying why (relay.clinic.misrouted).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import MissingResult
from prefect.states import Failed, State

from flows import lane
from flows.artifacts import StepOutput, artifact_key
from flows.dispatch import dispatch_clinic, dispatch_messages
from flows.feedback import feedback_clinic, pull_feedback, report_artifacts
from flows.journeys import journeys_clinic, run_journeys
from flows.lost import crash_lost_runs
from flows.models import build_clinic, build_models
from flows.plan import plan_clinic, plan_messages
from flows.report import summary_line
from flows.settle import settle
from flows.sync import cliniko_sync, sync_clinic
from tasks import home, owner_report, tick
from tasks.config import ClinicConfig, load_clinic
from tasks.tick import COMPLETED, FAILED, HELD, Step, Summary
from tasks.warehouse import data_out_of_errors, hold, open_db

# step -> the function its task runs in the tick, the same one its own flow runs...
STEPS: dict[str, Any] = {
    "sync": sync_clinic,
    "models": build_clinic,
    "plan": plan_clinic,
    "journeys": journeys_clinic,
    "dispatch": dispatch_clinic,
    "feedback": feedback_clinic,
}
# ... and that flow, deployable and runnable on its own (relay sync, relay feedback...).
STEP_FLOWS: dict[str, Any] = {
    "sync": cliniko_sync,
    "models": build_models,
    "plan": plan_messages,
    "journeys": run_journeys,
    "dispatch": dispatch_messages,
    "feedback": pull_feedback,
}


class TickFailed(RuntimeError):
    """A step of the tick failed; ``report`` is the tick's summary (counts and reasons only)."""

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report


def report(state) -> str:
    """The summary of a finished tick run (its return value, or its failure's), for a terminal."""
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, dict):
        return outcome.get("report") or f"Skipped: {outcome.get('skipped')}"
    return getattr(outcome, "report", None) or f"The tick failed: {outcome}"


def _output(state) -> StepOutput | None:
    """A completed step's output (counts and tables), or None when Prefect no longer has it (a
    state handed back without its data: MissingResult). The step did its work; the tick goes
    on without its counts rather than failing."""
    try:
        return state.result()
    except MissingResult:
        get_run_logger().warning("A step completed, but Prefect returned it without its counts.")
        return None


@task(name="step", task_run_name="{step}", cache_policy=NONE)
@data_out_of_errors()
def step_task(step: str, params: dict) -> StepOutput:
    """One step of the tick: the function its own flow runs, with no task or artifact of its
    own inside (its tables go into the tick's summary). Counts only."""
    return STEPS[step](as_tasks=False, **params)


def run_as_task(step: str, params: dict):
    """Run ``step`` as the tick's task named after it; its final state."""
    return step_task(step, params, return_state=True)


def _why(state) -> tuple[str, StepOutput | None]:
    """Why a step failed, as its exception says it ("ClinikoAuthError: ..."), and what it did
    all the same when the exception carries that (feedback: the feeds it could read)."""
    try:
        exc = state.result(raise_on_failure=False)
    except MissingResult:
        exc = None
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}", getattr(exc, "output", None)
    message = state.message or state.name
    return message.removeprefix("Task run encountered an exception").strip(), None


def run_step(
    summary: Summary,
    step: str,
    *,
    needs: tuple[Step, ...] = (),
    breaker: str | None = None,
    tables: list | None = None,
    **params,
) -> tuple[Step, Any]:
    """Run one step as a task of the tick unless a step it needs did not complete or the
    breaker is open. Returns what became of it, and its result (counts) when it completed; its
    tables are added to ``tables`` (the summary's)."""
    blocked = next((s for s in needs if s.status in (FAILED, HELD)), None)
    result, output = None, None
    if blocked:
        outcome = Step(step, HELD, f"{blocked.name} {blocked.status}")
    elif breaker:
        outcome = Step(step, HELD, "circuit breaker")
    else:
        started = time.monotonic()
        state = run_as_task(step, params)
        if state.is_completed():
            output = _output(state)
            outcome = Step(step, COMPLETED, seconds=time.monotonic() - started)
            result = output.result if output else None
        else:
            why, output = _why(state)
            outcome = Step(step, FAILED, why, time.monotonic() - started)
        if output and output.task_runs:  # a big sync's task per resource (flows/settle.py)
            settle(state.state_details.task_run_id)
    if output and tables is not None:
        tables += output.artifacts
    summary.steps.append(outcome)
    if outcome.status != COMPLETED:
        get_run_logger().warning("%s %s: %s", step, outcome.status, outcome.reason)
    return outcome, result


@task(cache_policy=NONE)
@data_out_of_errors()
def check_breaker(
    config: ClinicConfig, sync: Step, models: Step, started_at: datetime
) -> tuple[str, str | None, dict[tuple[str, str], str], list[str]]:
    """How fresh the data is, why planning and sending must wait (None: they may go ahead),
    which triggers, journeys and campaigns wait ("kind name" -> why: a model not rebuilt, a
    name matching nothing in Cliniko), and warnings (names that match nothing or drifted in
    Cliniko). An open breaker in a tick that goes on is an event (relay.sync.stale) that alerts
    match (one whose sync or build failed is told by the run's failure: tasks.tick.hold_to_alert);
    so are warnings (relay.clinic.warning)."""
    with open_db(config.database_path) as con:
        fresh = tick.freshness(con, datetime.now(UTC))
        recorded = tick.build_recorded(con, started_at)
        held = tick.held_sources(con, config)  # the plan, journeys and dispatch steps' too
        warnings = tick.warnings(con, config)
    for warning in warnings:
        get_run_logger().warning("%s: %s", config.clinic, warning)
    if warnings:
        emit_event(
            event="relay.clinic.warning",
            resource={"prefect.resource.id": f"relay.clinic.{config.clinic}"},
            payload={"clinic": config.clinic, "warnings": "\n".join(warnings)[:4000]},
        )
    reason = tick.breaker(sync, fresh, config.sync.stale_after_minutes)
    if models.status == FAILED and not recorded:
        reason = "; ".join(filter(None, [reason, "the model build failed"]))
    if reason:
        get_run_logger().warning("Planning and sending held for %s: %s", config.clinic, reason)
    if told := tick.hold_to_alert(reason, sync, models):  # else the run's failure tells it
        emit_event(
            event="relay.sync.stale",
            resource={"prefect.resource.id": f"relay.clinic.{config.clinic}"},
            payload={"clinic": config.clinic, "reason": told},
        )
    return fresh.describe(), reason, held, warnings


def check_machine(config: ClinicConfig) -> None:
    """Before the tick takes the clinic's database: on a machine that is not the clinic's home
    (or during a move) it stops here, so not even an empty database file is made where the
    clinic does not live (tasks/home.py refuse_elsewhere).

    This and check_home are plain calls in the tick's run, not tasks: each is a read of the
    home record on the Prefect server (and a look at the database), and a task run of its own
    cost the server three events and a row more every tick. A refusal fails the run with its
    reason, in its logs and the relay.clinic.misrouted event."""
    try:
        home.refuse_elsewhere(config.clinic)
    except home.HomeRefused as refused:
        _misrouted(config, refused)
        raise


def check_home(config: ClinicConfig) -> None:
    """First with the database held: is this machine the clinic's home, and this database its
    current copy (tasks/home.py)? If not, nothing is planned or sent: the run fails saying why
    and what to do, and a relay.clinic.misrouted event (clinic and reason, no personal data)
    alerts."""
    try:
        with open_db(config.database_path) as con:
            home.guard(con, config.clinic)
    except home.HomeRefused as refused:
        _misrouted(config, refused)
        raise


def _refused(refused: home.HomeRefused) -> State:
    """A refused tick ends Failed under the name "Refused", with the reason as its message: the
    server's event is then prefect.flow-run.Refused, so the operator hears of it once, from the
    "tick refused: not the clinic's home" alert (relay.clinic.misrouted, with the clinic and what
    to do), not a second time from the generic "a run failed or crashed" one."""
    get_run_logger().error("Refused: %s", refused)
    return Failed(name="Refused", message=str(refused))


def _misrouted(config: ClinicConfig, refused: Exception) -> None:
    emit_event(
        event="relay.clinic.misrouted",
        resource={"prefect.resource.id": f"relay.clinic.{config.clinic}"},
        payload={"clinic": config.clinic, "reason": str(refused)[:4000]},
    )


@task(cache_policy=NONE)
@data_out_of_errors()
def publish_summary(config: ClinicConfig, summary: Summary, tables: list, pulled: object) -> dict:
    """The tick's one artifact: steps, freshness, counts, then each step's table. The feedback
    step's report tables (the last days, each its own artifact) are published again only when
    this tick moved something they count (tasks.tick.moved): an idle tick writes one artifact."""
    with open_db(config.database_path) as con:
        tick.collect(con, summary)
        latest_report = owner_report.latest(con)
        reports = report_artifacts.fn(con, config, {}) if tick.moved(summary, pulled) else []
    for artifact in reports:
        artifact.publish()
    text = tick.markdown(summary) + summary_line(latest_report, config.clinic)
    if tables:
        text += "\n\n## Each step\n\n" + "\n\n".join(t.section() for t in tables)
    create_markdown_artifact(
        text,
        key=artifact_key("tick", config.clinic),
        description=f"Tick of {config.clinic}: steps, data freshness and counts",
    )
    return {**asdict(summary), "report": text}


def late_reason(max_lateness_minutes: float) -> str | None:
    """Why this run should not bother: it is a late scheduled tick and a newer one is already
    due (that one catches up on everything). The newest due tick always runs, so an overloaded
    machine still does one tick per clinic at a time instead of skipping them all."""
    run: Any = FlowRunContext.get().flow_run  # type: ignore[union-attr]  # inside the tick's run
    now = datetime.now(UTC)
    late = tick.too_late(
        run.expected_start_time,
        now,
        bool(run.auto_scheduled),
        timedelta(minutes=max_lateness_minutes),
    )
    if late is None or run.deployment_id is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters

    with get_client(sync_client=True) as client:
        newer = client.read_flow_runs(
            flow_run_filter=filters.FlowRunFilter(
                id=filters.FlowRunFilterId(not_any_=[run.id]),
                deployment_id=filters.FlowRunFilterDeploymentId(any_=[run.deployment_id]),
                expected_start_time=filters.FlowRunFilterExpectedStartTime(
                    after_=run.expected_start_time, before_=now
                ),
                state=filters.FlowRunFilterState(
                    type=filters.FlowRunFilterStateType(any_=["SCHEDULED", "PENDING"])
                ),
            ),
            limit=1,
        )
    return f"{late}; a newer tick is already due" if newer else None


@flow(name="clinic-tick", flow_run_name="tick-{clinic}")
def clinic_tick(clinic: str = "demo", reconcile: bool = False, max_lateness_minutes: float = 10):
    """The clinic's whole pipeline once: sync, models, plan, journeys, dispatch, feedback, summary.

    ``reconcile`` makes the sync list every id (hard deletes); ``max_lateness_minutes``: a
    scheduled tick starting later than this does nothing, as the next one is already due.
    """
    with data_out_of_errors():
        config = load_clinic(clinic)
        if late := late_reason(max_lateness_minutes):
            get_run_logger().info("Skipped: %s", late)
            return {"clinic": config.clinic, "skipped": late}

        run: Any = FlowRunContext.get().flow_run  # type: ignore[union-attr]  # inside the tick's run
        # the slot is this tick's: others of its deployment are gone
        if lost := crash_lost_runs(run):
            get_run_logger().warning("Marked Crashed, their process lost: %s", ", ".join(lost))
        summary = Summary(config.clinic, datetime.now(UTC))
        tables: list = []  # each step's table, for the summary
        try:
            check_machine(config)  # off its home: stop before the database is even made here
        except home.HomeRefused as refused:
            return _refused(refused)
        with hold(config.database_path):
            try:
                check_home(config)  # not the clinic's home, or not its database: nothing else runs
            except home.HomeRefused as refused:
                return _refused(refused)
            sync, synced = run_step(
                summary, "sync", tables=tables, clinic=clinic, reconcile=reconcile
            )
            summary.rows_synced = tick.rows_synced(synced)
            models, _ = run_step(summary, "models", needs=(sync,), tables=tables, clinic=clinic)
            summary.freshness, summary.held, waiting, summary.warnings = check_breaker(
                config, sync, models, summary.started_at
            )
            summary.held_sources = {f"{k} {n}": why for (k, n), why in waiting.items()}
            after: dict[str, Any] = {
                "breaker": summary.held,
                "tables": tables,
                "clinic": clinic,
                "held": waiting,
            }
            plan, _ = run_step(summary, "plan", **after)
            run_step(summary, "journeys", **after)
            # planning re-checked every planned message against this build moments ago
            _, sent = run_step(summary, "dispatch", needs=(plan,), recheck=False, **after)
            # a provider refused the account's settings: nothing waiting goes until they are fixed
            summary.warnings += [
                f"sending stopped: {why}" for why in (sent or {}).get("stopped", [])
            ]
            _, pulled = run_step(
                summary, "feedback", tables=tables, clinic=clinic, with_reports=False
            )
            result = publish_summary(config, summary, tables, pulled)
            # the fast lane: polls for bookings until the next tick is due (flows/lane.py)
            lane.after_tick(config, summary, result)

        if summary.failed:
            raise TickFailed(tick.failure(summary), result["report"])
        _completed(config)
        return result


def _completed(config: ClinicConfig) -> None:
    """The tick did all its work: relay.tick.completed, what the per-clinic "no tick completed"
    alert counts (relay/alerts.py). Not the run's Completed state: the server's automations see
    a run's state events only 15 minutes late when it started within 5 minutes of being
    scheduled (after `relay deploy` or a move; docs/scaling.md, Alerts), and this event is
    seen at once."""
    emit_event(
        event="relay.tick.completed",
        resource={
            "prefect.resource.id": f"relay.clinic.{config.clinic}",
            "prefect.resource.name": config.clinic,
        },
        payload={"clinic": config.clinic},
    )
