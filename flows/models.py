"""The model build flow: sql/ -> staging, marts and segments in the clinic's DuckDB.

Run alone, each model is its own Prefect task, waiting on the models its SQL reads, so a run
shows the DAG; in the tick the whole build is one task (flows/tick.py), each model timed.
The build itself is ``tasks.models.runner.build``, the same function the CLI calls: one
transaction; a failing model or data test keeps its last good table and those of the models
reading it, the rest commits, and what was held is recorded for the planner (the flow then
fails, naming the file), whoever started the build.
Tasks return counts only; the artifact holds row counts and audience sizes, never patient data.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.artifacts import Artifact, StepOutput, artifact_key
from tasks.config import load_clinic
from tasks.models import runner as models
from tasks.warehouse import data_out_of_errors, open_db


@task(cache_policy=NONE)
@data_out_of_errors()
def build_model(run: models.ModelBuild, relation: str) -> int | None:
    """Materialise one model; its row count (None for a view)."""
    return run.run_model(run.project.model(relation))


@task(cache_policy=NONE)
@data_out_of_errors()
def run_data_tests(run: models.ModelBuild) -> int:
    """Every sql/tests/*.sql must return no rows."""
    return run.run_tests()


@task(cache_policy=NONE)
@data_out_of_errors()
def record_membership_and_commit(run: models.ModelBuild) -> dict[str, dict[str, int]]:
    """Who joined and left each list and segment; then the new models become visible at once."""
    return run.finish().audiences


class AsTasks(models.Steps):
    """The build's steps as Prefect tasks; ``models.build`` runs them in order and records any
    failure, as it does for the CLI."""

    def model(self, run: models.ModelBuild, model: models.Model, upstream: list) -> object:
        state = build_model.with_options(task_run_name=model.relation)(
            run, model.relation, wait_for=upstream, return_state=True
        )
        if not state.is_completed():
            raise state.result(raise_on_failure=False)  # type: ignore[misc]  # a failed state's result is its exception
        return state

    def tests(self, run: models.ModelBuild) -> None:
        run_data_tests(run)

    def finish(self, run: models.ModelBuild) -> None:
        record_membership_and_commit(run)


class Timed(models.Steps):
    """The build's steps as plain calls (inside the tick, where the build is one task), each
    model's seconds kept for the artifact."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def model(self, run: models.ModelBuild, model: models.Model, upstream: list) -> object:
        started = time.perf_counter()
        try:
            return super().model(run, model, upstream)
        finally:
            self.seconds[model.relation] = time.perf_counter() - started


def build_clinic(clinic: str, full_refresh: bool = False, *, as_tasks: bool = True) -> StepOutput:
    """Build, test and record membership for every model of ``clinic`` in one commit (a failing
    model and its readers keep their last good tables). The
    flow below runs each model as a task (the DAG in the UI); the tick's models task runs this
    with ``as_tasks=False``: one task, each model timed in the artifact."""
    config = load_clinic(clinic)
    logger = get_run_logger()
    steps = AsTasks() if as_tasks else Timed()
    with open_db(config.database_path) as con:
        result = models.build(
            con,
            models.ListSettings.from_config(config),
            full_refresh=full_refresh,
            steps=steps,
        )
    audiences = result.audiences
    logger.info(
        "Built %d models (%d data tests passed) for %s",
        len(result.rows),
        result.tests_passed,
        config.clinic,
    )
    seconds = getattr(steps, "seconds", {})
    # the tick's summary shows the audiences already: there, rows and seconds per model only
    table = [
        {"name": name, "rows": counts["size"], "joined": counts["joined"], "left": counts["left"]}
        for name, counts in sorted(audiences.items())
        if as_tasks
    ] + [
        {"name": relation, "rows": rows, "joined": None, "left": None}
        if as_tasks
        else {"name": relation, "rows": rows, "seconds": round(seconds.get(relation, 0.0), 2)}
        for relation, rows in result.rows.items()
    ]
    artifact = Artifact(
        key=artifact_key("models", config.clinic),
        table=table,
        description=f"Model build {result.build_id}: audience sizes with who joined and left, "
        "then rows per model (counts only)."
        if as_tasks
        else f"Model build {result.build_id}: rows and seconds per model (counts only).",
    )
    counts = {
        "build_id": result.build_id,
        "models": len(result.rows),
        "tests_passed": result.tests_passed,
        "audiences": audiences,
    }
    return StepOutput(counts, [artifact], (len(result.rows) + 2) * as_tasks)


@flow(name="build-models", flow_run_name="models-{clinic}")
def build_models(clinic: str = "demo", full_refresh: bool = False) -> dict:
    """Build, test and record membership for every model of ``clinic`` (``build_clinic``)."""
    with data_out_of_errors():
        return build_clinic(clinic, full_refresh).publish()
