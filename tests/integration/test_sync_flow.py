"""The real Prefect flow, once (ephemeral server, ~10 s): it syncs, records the run, and publishes
a summary and a progress artifact that carry counts and no personal data."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime

import pytest

from tasks.cliniko.resources import RESOURCES
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def sandbox_clinic(tmp_path, monkeypatch, *, seed: int, patients: int):
    """A clinic.yaml in ``tmp_path`` (its database beside it, clinic.duckdb) whose Cliniko is a
    sandbox clinic served here: (config path, database path, sandbox clinic, server), the
    credentials set."""
    from sandbox.cliniko import SandboxClinic, SandboxServer

    config, db = tmp_path / "clinic.yaml", tmp_path / "clinic.duckdb"
    config.write_text(
        f"clinic: flowtest\nname: Flow test\ndatabase: {db}\ncliniko:\n  account: env\n",
        encoding="utf-8",
    )
    clinic = SandboxClinic.generate(
        seed=seed, patients=patients, start=datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    )
    with SandboxServer(clinic, rate_limit=None) as server:
        monkeypatch.setenv("CLINIKO_API_KEY", clinic.api_key)
        monkeypatch.setenv("CLINIKO_BASE_URL", server.base_url)
        monkeypatch.setenv("CLINIKO_CONTACT", "tests@example.com")
        monkeypatch.setenv("CLINIKO_REQUESTS_PER_MINUTE", "100000")
        yield config, db, clinic, server


def test_the_flow_syncs_and_its_artifacts_carry_no_personal_data(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.sync import SyncProgress, cliniko_sync

    # A small clinic: its backfill reads more than 100 rows, an idle sync only the few in the
    # overlap window (a real clinic's backfill is far above SyncProgress.MIN_ROWS).
    monkeypatch.setattr(SyncProgress, "MIN_ROWS", 100)

    with sandbox_clinic(tmp_path, monkeypatch, seed=3, patients=60) as (config, db, clinic, server):
        state = cliniko_sync(clinic=str(config), return_state=True)
        patients = clinic.snapshot("patients", server.base_url).values()
        idle = cliniko_sync(clinic=str(config), return_state=True)  # nothing changed since

    assert state.is_completed()
    counts = state.result()
    assert counts["patients"]["new"] == len(patients)
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.patients").fetchone()[0] == len(patients)
        # the patients' mobile numbers read as they were written, in the clinic's country
        memo = con.execute("SELECT DISTINCT country FROM state.phone_numbers").fetchall()
        assert memo == [("AU",)]
        runs = con.execute("SELECT kind, status FROM state.sync_runs ORDER BY started_at")
        assert runs.fetchall() == [
            # The first run reads every row from no watermark; a reconciliation waits for
            # reconcile_every_hours after it (a first run cut short goes on from its watermarks).
            ("incremental", "completed"),
            ("incremental", "completed"),
        ]

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
        idle_artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[idle.state_details.flow_run_id])
            )
        )
        tasks = {
            kind: sorted(
                t.name
                for t in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[run.state_details.flow_run_id])
                    )
                )
            )
            for kind, run in (("first", state), ("idle", idle))
        }
    # An idle sync reads little: its summary, no progress artifact, one task for every resource.
    assert idle.is_completed() and [a.type for a in idle_artifacts] == ["markdown"]
    assert len(tasks["idle"]) == 2 and tasks["idle"][0].startswith("check_access")
    assert tasks["idle"][1] == "sync-all-resources"
    # The first sync (a backfill: more than MIN_ROWS) shows each resource as its own task.
    assert f"sync-{RESOURCES[0].name}" in tasks["first"] and len(tasks["first"]) == 1 + len(
        RESOURCES
    )
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) >= {"markdown", "progress"}
    assert by_type["progress"].data == 100.0
    summary = by_type["markdown"].data
    assert "| patients |" in summary and "| individual_appointments |" in summary

    personal = set()
    for p in patients:
        personal |= {p["first_name"], p["last_name"], p["email"]}
        personal |= {phone["number"] for phone in p["patient_phone_numbers"] or []}
    words = set(re.split(r"[^\w@.+-]+", summary))
    assert not (words & {value for value in personal if value}), "personal data in the artifact"


def test_a_duckdb_error_quoting_a_patients_number_reaches_prefect_without_it(tmp_path, monkeypatch):
    """A DuckDB error about data raised in the sync (here: the writer's phone reading, made to
    cast a patient's number as a date) fails the flow with its kind and without the number: not
    in the task's or the flow's state message, not in their logs (with the traceback)."""
    import time

    import orjson
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from flows.sync import cliniko_sync
    from tasks.models import functions

    read: list[str] = []

    def cast_a_number(con, country, source, params=None):
        payloads = [orjson.loads(p) for p in params["payloads"]]
        numbers = [n["number"] for p in payloads for n in p["patient_phone_numbers"] or []]
        read.append(numbers[0])
        con.execute("SELECT ?::DATE", [numbers[0]])  # DuckDB quotes what it could not read

    monkeypatch.setattr(functions, "read_new_mobiles", cast_a_number)
    with sandbox_clinic(tmp_path, monkeypatch, seed=5, patients=20) as (config, db, _, _):
        state = cliniko_sync(clinic=str(config), return_state=True)

    assert state.is_failed() and read
    number = read[0]
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        for _ in range(50):  # the logs reach the server in the background
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any("Conversion Error" in log.message for log in logs):
                break
            time.sleep(0.2)
        flow_message = client.read_flow_run(flow_run_id).state.message
    messages = [flow_message] + [t.state.message or "" for t in task_runs]
    messages += [log.message for log in logs]
    assert any("Conversion Error: invalid date field format" in m for m in messages), messages
    assert any("Conversion Error" in log.message for log in logs)  # the traceback, logged
    assert not [m for m in messages if number in m or number.replace(" ", "") in m]
    with open_db(db, read_only=True) as con:
        (error,) = con.execute("SELECT error FROM state.sync_runs").fetchone()
    assert error.startswith("ConversionException: ") and number not in error
