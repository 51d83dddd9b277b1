"""The real build-models flow, once (ephemeral Prefect server): a task per model that waits on the
models its SQL reads, so the run shows the DAG; a counts-only artifact; the build recorded."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest

from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.models import runner as models
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration


def test_the_flow_builds_a_task_per_model_in_dependency_order_with_counts_only(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.models import build_models
    from sandbox.cliniko import SandboxClinic, SandboxServer

    db = tmp_path / "flowtest.duckdb"
    config = tmp_path / "clinic.yaml"
    config.write_text(f"clinic: flowtest\nname: Flow test\ndatabase: {db}\n", encoding="utf-8")
    clinic = SandboxClinic.generate(
        seed=5, patients=80, start=datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    )
    with SandboxServer(clinic, rate_limit=None) as server, open_db(db) as con:
        with ClinikoClient(
            clinic.api_key, "t@example.com", server.base_url, pace=None, retry=Retry()
        ) as client:
            extract.run_sync(con, client)
        patients = clinic.snapshot("patients", server.base_url).values()
        project = models.discover(con)

    state = build_models(clinic=str(config), return_state=True)

    assert state.is_completed()
    result = state.result()
    assert result["models"] == len(project.models)
    with open_db(db, read_only=True) as con:
        assert models.latest_build(con)["status"] == "succeeded"

    flow_run_id = state.state_details.flow_run_id
    expected = {m.relation for m in project.models}
    with get_client(sync_client=True) as client:
        # Task run records reach the API asynchronously: read until every model's is there.
        for _ in range(60):
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
            by_name = {t.name: t for t in task_runs}
            if expected <= set(by_name):
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert expected <= set(by_name)

    # each model waits on the task runs of the models it reads: the edges of the DAG
    def waits_on(relation: str) -> set[str]:
        return {str(i.id) for i in by_name[relation].task_inputs.get("wait_for", [])}

    assert waits_on("marts.patient_rows") == {
        str(by_name["staging.patients"].id),
        str(by_name["marts.appointments"].id),
        str(by_name["marts.patient_visits"].id),
    }
    assert waits_on("marts.patients") == {str(by_name["marts.patient_rows"].id)}

    table = json.dumps([a.data for a in artifacts])
    assert "email_marketing_list" in table
    personal = set()
    for p in patients:
        personal |= {p["first_name"], p["last_name"], p["email"]}
    words = set(re.split(r"[^\w@.+-]+", table))
    assert not (words & {value for value in personal if value}), "personal data in the artifact"


def test_the_flow_records_a_broken_data_test_file_as_a_failed_build(tmp_path, monkeypatch):
    """The flow runs the same build as `relay models build` (tasks.models.runner.build): a data
    test that cannot run fails the run, rolls back and is recorded, as it is without Prefect."""
    from flows.models import build_models
    from tasks.models import project

    sql_dir = tmp_path / "sql"
    for name, sql in {
        "staging/people.sql": "select id as patient_id from raw.patients",
        "tests/people_broken.sql": "select patient_id from staging.people where no_such_col",
    }.items():
        (sql_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (sql_dir / name).write_text(sql, encoding="utf-8")
    monkeypatch.setattr(project, "SQL_DIR", sql_dir)
    db = tmp_path / "flowtest.duckdb"
    config = tmp_path / "clinic.yaml"
    config.write_text(f"clinic: flowtest\nname: Flow test\ndatabase: {db}\n", encoding="utf-8")

    state = build_models(clinic=str(config), return_state=True)

    assert state.is_failed()
    assert "sql/tests/people_broken.sql" in str(state.result(raise_on_failure=False))
    with open_db(db, read_only=True) as con:
        latest = models.latest_build(con)
        # A test that cannot run holds nothing but itself: the models build, the file is named.
        assert (latest["status"], latest["failed_file"], latest["held"]) == (
            "succeeded",
            "sql/tests/people_broken.sql",
            {},
        )
        assert (
            con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'staging'"
            ).fetchone()[0]
            == 1
        )
