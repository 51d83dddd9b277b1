"""The model build flow: sql/ -> staging, marts and segments in the clinic's DuckDB.

Each model is its own Prefect task, waiting on the models its SQL reads, so a run shows the DAG.
The build itself is ``tasks.models.runner.build``, the same function the CLI calls: one
transaction; a failing model or data test keeps its last good table and those of the models
reading it, the rest commits, and what was held is recorded for the planner (the flow then
fails, naming the file), whoever started the build.
Tasks return counts only; the artifact holds row counts and audience sizes, never patient data.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from flows.artifacts import artifact_key
from tasks.config import load_clinic
from tasks.models import runner as models
from tasks.warehouse import open_db


@task(cache_policy=NONE)
def build_model(run: models.ModelBuild, relation: str) -> int | None:
    """Materialise one model; its row count (None for a view)."""
    return run.run_model(run.project.model(relation))


@task(cache_policy=NONE)
def run_data_tests(run: models.ModelBuild) -> int:
    """Every sql/tests/*.sql must return no rows."""
    return run.run_tests()


@task(cache_policy=NONE)
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


@flow(name="build-models", flow_run_name="models-{clinic}")
def build_models(clinic: str = "demo", full_refresh: bool = False) -> dict:
    """Build, test and record membership for every model of ``clinic``, all or nothing."""
    config = load_clinic(clinic)
    logger = get_run_logger()
    with open_db(config.database_path) as con:
        result = models.build(
            con,
            models.ListSettings.from_config(config),
            full_refresh=full_refresh,
            steps=AsTasks(),
        )
    audiences = result.audiences
    logger.info(
        "Built %d models (%d data tests passed) for %s",
        len(result.rows),
        result.tests_passed,
        config.clinic,
    )
    create_table_artifact(
        key=artifact_key("models", config.clinic),
        table=[
            {
                "name": name,
                "rows": counts["size"],
                "joined": counts["joined"],
                "left": counts["left"],
            }
            for name, counts in sorted(audiences.items())
        ]
        + [
            {"name": relation, "rows": rows, "joined": None, "left": None}
            for relation, rows in result.rows.items()
        ],
        description=f"Model build {result.build_id}: audience sizes with who joined and left, "
        "then rows per model (counts only).",
    )
    return {
        "build_id": result.build_id,
        "models": len(result.rows),
        "tests_passed": result.tests_passed,
        "audiences": audiences,
    }
