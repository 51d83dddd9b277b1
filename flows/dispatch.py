"""The dispatch flow: due messages out through the outbox, Postmark or Twilio, each at most once;
one step of the tick (after planning and journeys), and runnable alone.

Unsubscribe clicks not yet recorded (the endpoint's inbox, and the ``relay.unsubscribe`` events
of a Prefect server) are recorded first: the feedback step comes after dispatch in the tick, and
an unsubscribe stops marketing at once. Planned trigger messages are re-checked next, in the same
database session, so what goes out matches the models as they are now; then
``tasks.messages.dispatch`` claims, sends and records. Each
row is re-checked by its own planner (trigger, journey or campaign: tasks/messages/prepare.py routes
it). Counts only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from blocks.resolve import providers_for
from flows.artifacts import Artifact, StepOutput, artifact_key, call
from flows.feedback import record_unsubscribe_clicks
from tasks import due, tick
from tasks.config import ClinicConfig, load_clinic
from tasks.triggers import plan as planning
from tasks.warehouse import data_out_of_errors, open_db


@task(cache_policy=NONE)
@data_out_of_errors()
def recheck_planned(con, config: ClinicConfig, now: datetime, held: dict) -> dict:
    return planning.recheck(con, config, now, held=tick.of_kind(held, "trigger")).as_dict()


@task(cache_policy=NONE)
@data_out_of_errors()
def send_due(con, config: ClinicConfig, clock: Callable[[], datetime], held: dict) -> dict:
    result = due.send_due(con, config, providers_for(config), clock, held)
    logger = get_run_logger()
    logger.info("dispatch: %s", dict(result.counts) or "nothing due")
    for problem in result.problems:
        logger.warning("dispatch: %s", problem)
    if result.stopped:  # no later run gets past it alone: the "sending stopped" alert matches it
        emit_event(
            event="relay.dispatch.stopped",
            resource={"prefect.resource.id": f"relay.clinic.{config.clinic}"},
            payload={"clinic": config.clinic, "why": "\n".join(result.stopped)[:4000]},
        )
    return result.as_dict()


def dispatch_clinic(
    clinic: str,
    now: datetime | None = None,
    *,
    as_tasks: bool = True,
    held: dict | None = None,
    recheck: bool = True,
) -> StepOutput:
    """Re-check the planned messages, then send every due one: the flow below and the tick's
    dispatch task (``as_tasks=False``: no tasks of its own inside it; ``held``: the sources the
    tick's breaker check found waiting, read once a tick) both run this.

    ``recheck=False``: the tick's, whose plan step re-checked every planned trigger message
    moments before, against the same build, in the same held database (dispatch runs only after
    a completed plan step). A second re-check there found what the first had found; each due
    message is still decided again as it goes out (tasks/triggers/prepare.py)."""
    config = load_clinic(clinic)

    def clock() -> datetime:
        return now or datetime.now(UTC)

    with open_db(config.database_path) as con:
        # before anything goes: a click the feedback step would record only after this dispatch
        _, unavailable = call(record_unsubscribe_clicks, as_tasks)(con, config)
        if unavailable:  # the feedback step reports it too, and fails the tick
            get_run_logger().warning("dispatch: %s", unavailable)
        held = tick.held_sources(con, config) if held is None else held
        rechecked = (
            call(recheck_planned, as_tasks)(con, config, clock(), held)
            if recheck
            else {"totals": {}}
        )
        sent = call(send_due, as_tasks)(con, config, clock, held)
    artifact = Artifact(
        key=artifact_key("dispatch", config.clinic),
        table=[{"outcome": k, "messages": v} for k, v in sorted(sent["counts"].items())]
        or [{"outcome": "(nothing due)", "messages": 0}],
        description=f"Messages sent, skipped and failed for {config.clinic} (counts only)",
    )
    return StepOutput({"rechecked": rechecked["totals"], **sent}, [artifact], 2 * as_tasks)


@flow(name="dispatch-messages", flow_run_name="dispatch-{clinic}")
def dispatch_messages(clinic: str = "demo", now: datetime | None = None) -> dict:
    """Re-check the planned messages, then send every due one through its channel's provider.
    ``now`` fixes the clock (the demo's sandbox clinic runs ahead of real time; replays)."""
    with data_out_of_errors():
        return dispatch_clinic(clinic, now).publish()
