"""The planning flow: triggers -> planned messages in the ledger; one step of the tick (after the
models build, before dispatch), and runnable alone.

Thin wiring around ``tasks.triggers.plan``: the task takes the open connection (``cache_policy=NONE``)
and returns counts per trigger, never a patient.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.artifacts import Artifact, StepOutput, artifact_key, call
from tasks import tick
from tasks.config import ClinicConfig, load_clinic
from tasks.triggers import plan as planning
from tasks.warehouse import data_out_of_errors, open_db


@task(cache_policy=NONE)
@data_out_of_errors()
def plan_triggers(con, config: ClinicConfig, now: datetime, held: dict | None = None) -> dict:
    """``held``: tasks.tick.held_sources, when the tick has read it already (the same build)."""
    held = tick.of_kind(tick.held_sources(con, config) if held is None else held, "trigger")
    result = planning.plan(con, config, now, held=held)
    for name, counts in sorted(result.counts.items()):
        get_run_logger().info("trigger %s: %s", name, dict(counts))
    for name, why in sorted(held.items()):
        get_run_logger().warning("trigger %s held: %s", name, why)
    return result.as_dict()


def plan_clinic(
    clinic: str, now: datetime | None = None, *, as_tasks: bool = True, held: dict | None = None
) -> StepOutput:
    """Plan the clinic's trigger messages and re-check those planned: the flow below and the
    tick's plan task (``as_tasks=False``: no task of its own inside it; ``held``: the sources
    the tick's breaker check found waiting, read once a tick) both run this."""
    config = load_clinic(clinic)
    now = now or datetime.now(UTC)
    with open_db(config.database_path) as con:
        result = call(plan_triggers, as_tasks)(con, config, now, held)
    artifact = Artifact(
        key=artifact_key("plan", config.clinic),
        table=[{"trigger": name, **counts} for name, counts in result["triggers"].items()]
        or [{"trigger": "(none)", "planned": 0}],
        description=f"Trigger messages planned, moved, cancelled and skipped for {config.clinic}",
    )
    return StepOutput(result, [artifact], int(as_tasks))


@flow(name="plan-messages", flow_run_name="plan-{clinic}")
def plan_messages(clinic: str = "demo", now: datetime | None = None) -> dict:
    """Plan the clinic's trigger messages and re-check those planned. ``now``: replays and tests."""
    with data_out_of_errors():
        return plan_clinic(clinic, now).publish()
