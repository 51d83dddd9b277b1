"""The journeys and campaign flows in real Prefect (ephemeral server, once), and the campaign
commands: results and artifacts carry counts, never a patient; a campaign is sent once."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOURNEY = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [{"send": "email", "template": "new-patient-welcome"}],
}
CAMPAIGN = {"name": "recall", "segment": "recall_90_179", "channel": "email",
            "template": "recall-checkin"}  # fmt: skip


def _helper():
    spec = importlib.util.spec_from_file_location(
        "journey_clinic", ROOT / "tests" / "unit" / "marketing" / "journey_clinic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clinic_file(tmp_path):
    """A clinic.yaml and its DuckDB file: 3 patients in the recall band, 2 new after go-live."""
    import duckdb

    from tasks.config import load_clinic
    from tasks.marketing import journeys
    from tasks.warehouse import ensure_schema

    db = tmp_path / "flows.duckdb"
    path = tmp_path / "clinic.yaml"
    path.write_text(
        yaml.safe_dump({"clinic": "flows", "name": "Flow Physio", "database": str(db),
                        "journeys": [JOURNEY], "campaigns": [CAMPAIGN]}),
        encoding="utf-8",
    )  # fmt: skip
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    ensure_schema(con)
    clinic = _helper().Clinic(con)
    for p in (1, 2, 3):
        clinic.patient(p)
        clinic.visit(p, days_ago=120)
    clinic.build()
    journeys.run_journeys(con, load_clinic(path), clinic.now)
    for p in (4, 5):
        clinic.patient(p)
        clinic.visit(p, days_ago=0.1)
    clinic.advance(minutes=5)
    clinic.build()
    con.close()
    return path, db, clinic.now


def test_the_flows_queue_journey_steps_and_a_confirmed_campaign_once(clinic_file, capsys):
    from flows.campaign import send_campaign
    from flows.journeys import run_journeys
    from tasks.warehouse import open_db

    path, db, now = clinic_file
    result = run_journeys(clinic=str(path), now=now + timedelta(minutes=1))
    assert result == {"journeys": {"new-patient": {"enrolled": 2, "queued": 2, "completed": 2}},
                      "campaigns": {}}  # fmt: skip

    counted = send_campaign(clinic=str(path), campaign="recall")
    assert counted["confirmed"] is False and counted["preview"]["audience"] == 3
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.campaigns").fetchone()[0] == 0

    sent = send_campaign(clinic=str(path), campaign="recall", confirm=True)
    assert (sent["audience"], sent["queued"]) == (3, 3)
    for shown in (result, counted, sent):
        assert "@example.com" not in str(shown) and "Name" not in str(shown)

    again = send_campaign(clinic=str(path), campaign="recall", confirm=True, return_state=True)
    assert again.is_failed() and "already confirmed" in again.message
    with open_db(db, read_only=True) as con:
        keys = [r[0] for r in con.execute("SELECT send_key FROM state.messages").fetchall()]
    assert sorted(k for k in keys if k.startswith("campaign:")) == [
        "campaign:recall:1:once", "campaign:recall:2:once", "campaign:recall:3:once"
    ]  # fmt: skip


def test_campaign_preview_shows_the_operator_a_sample_and_send_needs_confirm(clinic_file):
    from relay.cli import app
    from tasks.warehouse import open_db

    path, db, _ = clinic_file
    runner = CliRunner()
    shown = runner.invoke(app, ["campaign", "preview", "recall", "--clinic", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "segment     3 patients" in shown.output
    assert "audience    3 messages" in shown.output
    assert "patient1@example.com" in shown.output  # the operator's terminal, nowhere else
    assert "subject     Time for a check-in, Name1?" in shown.output
    refused = runner.invoke(app, ["campaign", "send", "recall", "--clinic", str(path)])
    assert refused.exit_code == 1 and "add --confirm" in refused.output
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.messages").fetchone()[0] == 0


def test_campaign_preview_says_each_tick_sends_what_has_come_due_not_at_most_per_minute(
    clinic_file,
):
    """per_minute spreads the audience's due times; dispatch runs once a tick and sends every
    row that has come due. The preview said "at most 2 a minute" while a tick every 5 minutes
    sent up to 10 in the same second (found by the issue 5 re-check)."""
    from relay.cli import app

    path, _, _ = clinic_file
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    paced = {**CAMPAIGN, "per_minute": 2}
    path.write_text(yaml.safe_dump({**settings, "campaigns": [paced]}), encoding="utf-8")
    shown = CliRunner().invoke(app, ["campaign", "preview", "recall", "--clinic", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "at most 2 a minute" not in shown.output
    assert "audience    3 messages, due 2 a minute from send_at (about 2 min)" in shown.output
    assert "each tick (every 5 min) sends what has come due: up to 10 together" in shown.output


def test_campaign_commands_say_when_the_audience_is_frozen_and_keep_what_was_confirmed(
    clinic_file,
):
    from relay.cli import app
    from tasks.errors import UserFacingError

    path, db, now = clinic_file
    runner = CliRunner()
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    past = {**CAMPAIGN, "send_at": (now - timedelta(days=1)).isoformat()}
    path.write_text(yaml.safe_dump({**settings, "campaigns": [past]}), encoding="utf-8")

    shown = runner.invoke(app, ["campaign", "preview", "recall", "--clinic", str(path)])
    assert shown.exit_code == 0, shown.output
    # not "counted again at send_at (yesterday)": a past send_at freezes it when confirmed
    assert "frozen      not yet: the audience is counted again at confirmation;" in shown.output
    assert "due 100 a minute from the confirmation (send_at has passed)" in shown.output
    assert "has passed, so confirming now sends it at once" in shown.output
    # the command the preview ends with is one that will do it
    assert f"To send it: relay campaign send recall --clinic {path} --confirm --force" in (
        shown.output
    )
    refused = runner.invoke(app, ["campaign", "send", "recall", "--clinic", str(path), "--confirm"])
    assert isinstance(refused.exception, UserFacingError)  # `relay` prints it, exits 2
    assert "has passed" in str(refused.exception) and "--force" in str(refused.exception)
    forced = runner.invoke(
        app, ["campaign", "send", "recall", "--clinic", str(path), "--confirm", "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert "3 messages queued" in forced.output

    edited = {**past, "channel": "sms", "template": "promo-sms"}
    path.write_text(yaml.safe_dump({**settings, "campaigns": [edited]}), encoding="utf-8")
    shown = runner.invoke(app, ["campaign", "preview", "recall", "--clinic", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "Campaign recall: email 'recall-checkin'" in shown.output
    assert "frozen      at " in shown.output
    assert (
        "changed in clinic.yaml since confirmation (not sent): channel: confirmed email, "
        "clinic.yaml now says sms" in shown.output
    )


def test_campaign_commands_give_send_at_in_the_clinics_time_with_the_utc_date(clinic_file):
    """09:00 on 24 December in Melbourne is 22:00 UTC on the 23rd: the confirmation said
    '2026-12-23T22:00:00+00:00', which reads as the day before the owner's choice."""
    from relay.cli import app

    path, _, now = clinic_file
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    later = {**CAMPAIGN, "send_at": f"{now.year + 1}-12-24T09:00:00"}
    path.write_text(yaml.safe_dump({**settings, "campaigns": [later]}), encoding="utf-8")
    when = f"{now.year + 1}-12-24 09:00 Australia/Melbourne ({now.year + 1}-12-23 22:00 UTC)"
    runner = CliRunner()
    shown = runner.invoke(app, ["campaign", "preview", "recall", "--clinic", str(path)])
    assert shown.exit_code == 0, shown.output
    assert f"send at     {when}" in shown.output
    sent = runner.invoke(app, ["campaign", "send", "recall", "--clinic", str(path), "--confirm"])
    assert sent.exit_code == 0, sent.output
    assert f"the audience is frozen and sent from {when}." in sent.output


def test_a_campaign_run_without_confirm_logs_its_counts(clinic_file, caplog, monkeypatch):
    """Run from the Prefect UI (the campaign deployment) without confirm, the campaign flow
    counted the audience and logged only "counted only": the person who ran it to see the size
    saw no number. Its log line now carries the counts (never a patient)."""
    import logging

    from prefect.logging.configuration import setup_logging

    from flows.campaign import send_campaign

    path, _db, _now = clinic_file
    setup_logging()  # Prefect's own set-up first: it replaces the root logger's handlers
    run_logs = logging.getLogger("prefect.flow_runs")
    monkeypatch.setattr(run_logs, "level", logging.INFO)
    monkeypatch.setattr(run_logs, "handlers", [*run_logs.handlers, caplog.handler])
    send_campaign(clinic=str(path), campaign="recall")
    said = [r.getMessage() for r in caplog.records if "recall" in r.getMessage()]
    assert any("audience 3" in line and "segment recall_90_179: 3" in line for line in said), said
    assert any("confirm=true" in line for line in said), said
    assert not any("@example.com" in line or "Name" in line for line in said)
