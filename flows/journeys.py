"""The journeys flow: one step of the tick (after the models build, before dispatch); also runs
alone. It advances every journey in clinic.yaml and freezes the confirmed campaigns whose moment
has come into the ledger; dispatch sends what is due.

Thin wiring around ``tasks.marketing.journeys`` and ``tasks.marketing.campaigns``: the tasks take the open connection
(``cache_policy=NONE``) and return counts per journey or campaign, never a patient.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.artifacts import Artifact, StepOutput, artifact_key, call
from tasks import tick
from tasks.config import ClinicConfig, load_clinic
from tasks.marketing import campaigns, journeys
from tasks.models import runner as models
from tasks.warehouse import data_out_of_errors, open_db


@task(cache_policy=NONE)
@data_out_of_errors()
def advance_journeys(
    con, config: ClinicConfig, now: datetime, held: dict[str, str]
) -> dict[str, dict[str, int]]:
    results = journeys.run_journeys(con, config, now, held=held)
    for name, why in sorted(held.items()):
        get_run_logger().warning("journey %s held: %s", name, why)
    for name, counts in results.items():
        get_run_logger().info("journey %s: %s", name, counts or "nothing due")
    return results


@task(cache_policy=NONE)
@data_out_of_errors()
def freeze_due_campaigns(
    con, config: ClinicConfig, now: datetime, held: dict[str, str]
) -> dict[str, int]:
    queued = campaigns.freeze_due(con, config, now, held=held)
    for name, n in queued.items():
        get_run_logger().info("campaign %s: audience frozen, %d messages queued", name, n)
    return queued


def journeys_clinic(
    clinic: str, now: datetime | None = None, *, as_tasks: bool = True, held: dict | None = None
) -> StepOutput:
    """Advance the clinic's journeys and start its due campaigns: the flow below and the tick's
    journeys task (``as_tasks=False``: no tasks of its own inside it; ``held``: the sources the
    tick's breaker check found waiting, read once a tick) both run this."""
    config = load_clinic(clinic)
    now = now or datetime.now(UTC)
    with open_db(config.database_path) as con:
        models.require_good_build(con)
        held = tick.held_sources(con, config) if held is None else held
        advanced = call(advance_journeys, as_tasks)(con, config, now, tick.of_kind(held, "journey"))
        frozen = call(freeze_due_campaigns, as_tasks)(
            con, config, now, tick.of_kind(held, "campaign")
        )
    artifact = Artifact(
        key=artifact_key("journeys", config.clinic),
        table=[{"journey": name, **counts} for name, counts in advanced.items()]
        + [{"campaign": name, "queued": n} for name, n in frozen.items()]
        or [{"journey": "(none configured)"}],
        description=f"Journeys and campaigns of {config.clinic} this run (counts only)",
    )
    return StepOutput({"journeys": advanced, "campaigns": frozen}, [artifact], 2 * as_tasks)


@flow(name="journeys", flow_run_name="journeys-{clinic}")
def run_journeys(clinic: str = "demo", now: datetime | None = None) -> dict:
    """Advance the clinic's journeys and start its due campaigns. ``now`` is for replays/tests."""
    with data_out_of_errors():
        return journeys_clinic(clinic, now).publish()
