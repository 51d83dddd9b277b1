"""The owner's weekly report on a real Prefect server: its deployment scheduled from clinic.yaml
in clinic time, the flow emailing the owner through the outbox once per week, and its artifact."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.prefect

REPORT = """report:
  to: owner@owned.example
  weekday: tuesday
  at: "07:30"
"""


def _owned_clinic(tmp_path, monkeypatch):
    """Clinic 'owned' (its clinic.yaml with REPORT) in this test's folders: its database path."""
    clinics, db = tmp_path / "clinics", tmp_path / "owned.duckdb"
    (clinics / "owned").mkdir(parents=True)
    (clinics / "owned" / "clinic.yaml").write_text(
        f"clinic: owned\nname: Owned Physio\ndatabase: {db}\n{REPORT}", encoding="utf-8"
    )
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(clinics))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    return db


def test_the_weekly_report_emails_the_owner_once_and_publishes_its_artifact(
    prefect_server, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.report import owner_report
    from relay.serve import report_deployment
    from tasks.providers.outbox import list_messages, outbox_dir
    from tasks.warehouse import open_db
    from tests.unit.test_bookings_won import message
    from tests.unit.triggers.test_plan import DAY, NOW, Clinic

    db = _owned_clinic(tmp_path, monkeypatch)
    with open_db(db) as con:  # a hand-made clinic: two patients, a welcome in the week reported
        clinic = Clinic(con)
        clinic.patient(1)
        clinic.patient(2)
        message(con, "trigger", "welcome", 1, NOW - 7 * DAY)
        clinic.build(NOW)

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        deployment_id = report_deployment("owned").apply()
        first = owner_report("owned", now=NOW, return_state=True)
        second = owner_report("owned", now=NOW, return_state=True)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(deployment_id)
            run = client.read_flow_run(first.state_details.flow_run_id)
            (artifact,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["relay-report-owned"]))
            )

    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (
        "30 7 * * 2",
        "Australia/Melbourne",
    )
    assert (deployment.parameters, deployment.entrypoint) == (
        {"clinic": "owned"},
        "flows/report.py:owner_report",
    )
    assert run.name == "report-owned" and first.is_completed() and second.is_completed()
    assert first.result()["sent_now"] and not second.result()["sent_now"]
    (sent,) = list_messages(outbox_dir("owned"))
    assert (sent["to"], sent["source"]) == ("owner@owned.example", "owner-report")
    page = (outbox_dir("owned") / f"{sent['stem']}.html").read_text(encoding="utf-8")
    assert "<svg" in page and "Bookings won" in page
    assert "# Owned Physio: your week in messages" in artifact.data
    assert "| trigger:welcome | 1 |" in artifact.data
    for personal in ("Pat1", "Tester", "patient1@", "owner@owned"):
        assert personal not in artifact.data


def test_a_report_before_the_first_sync_says_what_to_run_and_makes_no_database(
    prefect_server, tmp_path, monkeypatch
):
    """Run from the UI before the clinic's first tick: the one line of every "no database yet"
    path, and no empty database left behind (nor a report of nothing emailed to the owner)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.report import owner_report
    from tasks.providers.outbox import list_messages, outbox_dir
    from tasks.warehouse import NoDatabase

    db = _owned_clinic(tmp_path, monkeypatch)
    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        with pytest.raises(NoDatabase, match="No database yet"):
            owner_report.with_options(retries=0)("owned")  # the deployment's retry: 5 min on
    assert not db.exists()
    assert not list_messages(outbox_dir("owned"))
