"""`relay models build|test` and `relay preview segment` on a small clinic database file."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from relay.cli import app
from tasks.warehouse import open_db

API = "https://api.au1.cliniko.com/v1"


def make_clinic(tmp_path):
    db = tmp_path / "cli.duckdb"
    soon = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open_db(db) as con:
        for pid in (1, 2):
            patient = {"id": str(pid), "first_name": f"Ann{pid}", "email": f"ann{pid}@example.com",
                       "created_at": recent}  # fmt: skip
            con.execute(
                "INSERT INTO raw.patients VALUES (?, NULL, ?, now(), NULL)",
                [pid, json.dumps(patient)],
            )
        booking = {"id": "10", "starts_at": soon,
                   "patient": {"links": {"self": f"{API}/patients/1"}}}  # fmt: skip
        con.execute(
            "INSERT INTO raw.individual_appointments (id, updated_at, payload, synced_at, removed_at) VALUES (10, NULL, ?, now(), NULL)",
            [json.dumps(booking)],
        )
    config = tmp_path / "clinic.yaml"
    config.write_text(f"clinic: cli\nname: CLI\ndatabase: {db}\n", encoding="utf-8")
    return str(config)


def test_build_then_test_then_preview_a_segment(tmp_path):
    clinic = make_clinic(tmp_path)
    runner = CliRunner()

    built = runner.invoke(app, ["models", "build", "--clinic", clinic])
    assert built.exit_code == 0, built.output
    assert "data tests passed" in built.output
    assert "Email marketing list: subscribed 2" in built.output
    assert "segments.upcoming_appointment" in built.output

    tested = runner.invoke(app, ["models", "test", "--clinic", clinic])
    assert tested.exit_code == 0 and "ok   sql/tests/" in tested.output

    preview = runner.invoke(app, ["preview", "segment", "upcoming_appointment", "--clinic", clinic])
    assert preview.exit_code == 0, preview.output
    assert "segments.upcoming_appointment: 1 patients" in preview.output
    assert "0 would join, 0 would leave" in preview.output
    assert "ann1@example.com" in preview.output  # the sample: this terminal only


def test_previewing_an_unknown_segment_lists_the_segments(tmp_path):
    clinic = make_clinic(tmp_path)
    runner = CliRunner()
    runner.invoke(app, ["models", "build", "--clinic", clinic])
    missing = runner.invoke(app, ["preview", "segment", "loyl", "--clinic", clinic])
    assert missing.exit_code != 0
    assert "No segment 'loyl'" in str(missing.exception) and "loyal" in str(missing.exception)


def test_a_segment_named_by_its_file_is_previewed_and_a_negative_sample_is_refused(tmp_path):
    """`--sample -1` ended in a DuckDB traceback; the file as a terminal completes it
    (`sql/segments/loyal.sql`) or as the build names it (`Loyal`) was "No segment ...
    (sql/segments/sql/segments/loyal.sql.sql)"."""
    clinic = make_clinic(tmp_path)
    runner = CliRunner()
    runner.invoke(app, ["models", "build", "--clinic", clinic])
    for name in (
        "sql/segments/upcoming_appointment.sql",
        "Upcoming_Appointment",
        "sql/segments/upcoming_appointment",  # was "(sql/segments/sql/segments/...)"
        "segments/upcoming_appointment",
    ):
        shown = runner.invoke(app, ["preview", "segment", name, "--clinic", clinic])
        assert shown.exit_code == 0, shown.output
        assert "segments.upcoming_appointment: 1 patients" in shown.output
    negative = ["preview", "segment", "upcoming_appointment", "--sample", "-1", "--clinic", clinic]
    refused = runner.invoke(app, negative)
    assert refused.exit_code == 2 and refused.exception is not None
    assert "--sample" in refused.output and "Traceback" not in refused.output


def _built_with_own_sql(tmp_path, monkeypatch):
    """A clinic built once, then the project's sql/ copied for the test to edit: (clinic, a
    CliRunner, the copy)."""
    from tasks.models import project

    clinic = make_clinic(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["models", "build", "--clinic", clinic]).exit_code == 0
    sql = tmp_path / "sql"
    shutil.copytree(project.SQL_DIR, sql)
    monkeypatch.setattr(project, "SQL_DIR", sql)
    return clinic, runner, sql


def test_after_a_failed_build_preview_and_test_still_work_on_the_last_good_tables(
    tmp_path, monkeypatch
):
    clinic, runner, sql = _built_with_own_sql(tmp_path, monkeypatch)
    (sql / "marts" / "patients.sql").write_text("select patinet_id from marts.patient_rows")

    built = runner.invoke(app, ["models", "build", "--clinic", clinic])
    assert built.exit_code != 0 and "sql/marts/patients.sql" in str(built.exception)
    assert "segments.upcoming_appointment" in str(built.exception)  # held with what it reads

    tested = runner.invoke(app, ["models", "test", "--clinic", clinic])
    assert tested.exit_code == 0 and "ok   sql/tests/" in tested.output, tested.output
    preview = runner.invoke(app, ["preview", "segment", "upcoming_appointment", "--clinic", clinic])
    assert preview.exit_code == 0, preview.output
    assert "segments.upcoming_appointment: 1 patients" in preview.output
    assert "compared with the last good tables: marts.patients not rebuilt" in preview.output


def test_previewing_a_segment_that_reads_a_model_not_built_yet_says_to_build_first(
    tmp_path, monkeypatch
):
    """An analyst adds a mart and a segment reading it, then previews before building: it was
    DuckDB's 'Table with name heavy does not exist! Did you mean "recall_candidates"?', about a
    table whose file they had just saved, and the preview's own CREATE TABLE wrapper."""
    clinic, runner, sql = _built_with_own_sql(tmp_path, monkeypatch)
    (sql / "marts" / "heavy.sql").write_text("select patient_id from marts.patients")
    (sql / "segments" / "heavy_users.sql").write_text("select patient_id from marts.heavy\n")

    preview = runner.invoke(app, ["preview", "segment", "heavy_users", "--clinic", clinic])
    assert preview.exit_code != 0, preview.output
    said = str(preview.exception)
    assert "sql/segments/heavy_users.sql" in said and "marts.heavy" in said, said
    assert "sql/marts/heavy.sql" in said and "relay models build" in said, said
    assert "recall_candidates" not in said and "relay_preview" not in said, said

    assert runner.invoke(app, ["models", "build", "--clinic", clinic]).exit_code == 0
    shown = runner.invoke(app, ["preview", "segment", "heavy_users", "--clinic", clinic])
    assert shown.exit_code == 0 and "segments.heavy_users: 2 patients" in shown.output


@pytest.mark.parametrize(
    "command",
    [
        ["preview", "trigger", "sms-reminder-24h", "--days", "-3"],
        ["preview", "trigger", "sms-reminder-24h", "--limit", "-1"],
        ["sql", "--limit", "0", "select 1"],
        ["patients", "find", "Jo", "--limit", "0"],
        ["outbox", "--limit", "-2"],
    ],
)
def test_a_count_below_its_least_is_refused_as_an_option(command):
    """`relay preview trigger x --days -3` printed "next -3 days: 0 messages" as if all were
    well; a count below what means anything is refused naming the option, before any work."""
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2, refused.output
    option = next(word for word in command if word.startswith("--"))
    assert f"Invalid value for '{option}'" in refused.output
