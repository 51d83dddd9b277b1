"""The analyst's loop, as a person at a terminal sees it: the real ``relay`` command in a
subprocess, from a fresh state and with broken input. Each problem ends in one or a few clear
lines and a non-zero exit: no traceback, no Prefect log chatter, no ``nanobind: leaked`` lines.

Scenarios that change sql/ or clinics/ run a copy of the project (its code finds sql/ and
clinics/ beside itself), so the repository's files are never touched while other tests run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.paths import PROJECT_ROOT
from tasks.warehouse import open_db

COPIED = ("relay", "tasks", "flows", "blocks", "sandbox", "sql", "clinics", "templates")


def relay(*args: str, cwd: Path = PROJECT_ROOT, env: dict | None = None, timeout: float = 300):
    out = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return out.returncode, lines


def assert_clean(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    assert "nanobind" not in text and "leaked" not in text, text
    assert " | ERROR " not in text and " | WARNING " not in text, text  # Prefect's console


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code, SQL models, clinics and templates."""
    root = tmp_path / "project"
    for name in COPIED:
        shutil.copytree(
            PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


@pytest.mark.parametrize(
    "command",
    [
        ["preview", "trigger", "sms-reminder-24h"],
        ["render", "sms-reminder-24h", "--patient", "1"],
        ["ledger", "waiting"],
        ["sql", "SELECT 1"],
        ["patients", "find", "hopper"],
        ["models", "build"],
        ["campaign", "preview", "recall-90-179"],
        ["campaign", "cancel", "recall-90-179"],
        ["campaign", "send", "recall-90-179", "--confirm"],
        ["test-send", "welcome-insurance", "--to", "staff@clinic.example"],
        ["feedback"],
        ["ledger", "resolve", "trigger:x:1:2", "--sent"],
    ],
)
def test_no_database_yet_says_what_to_run_first(data_dir, command):
    code, lines = relay(*command)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: No database yet"), lines
    assert "relay sync --clinic" in lines[0]
    assert not (data_dir / "demo.duckdb").exists()  # a read made no empty database


def test_the_sql_prompt_without_a_database_says_what_to_run_first(data_dir):
    """It printed the prompt's banner naming a file that is not there, then the same error for
    every statement typed, and exited 0."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "sql"],
        input="SELECT 1;\nSELECT 2;\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "100"},
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: No database yet"), lines
    assert not (data_dir / "demo.duckdb").exists()


@pytest.fixture
def built(project, data_dir) -> Path:
    """A database the models were built into once (empty data: the shape is what matters)."""
    with open_db(data_dir / "demo.duckdb"):
        pass
    code, lines = relay("models", "build", cwd=project)
    assert code == 0, lines
    return project


def test_a_segment_without_patient_id_says_exactly_that(built):
    (built / "sql" / "segments" / "no_id.sql").write_text(
        "SELECT patient_id AS pid FROM marts.patients\n"
    )
    for command in (["preview", "segment", "no_id"], ["models", "build"]):
        code, lines = relay(*command, cwd=built)
        assert code == 2, lines
        assert_clean(lines)
        assert lines[0] == (
            "error: sql/segments/no_id.sql: the model must return a column named patient_id "
            "(one row per patient in the segment)"
        ), lines


def test_a_segment_keyed_by_email_says_so_without_an_address(built):
    """It crashed `relay preview segment` with a traceback, and the build failed as a whole in
    tasks/models/membership.py."""
    (built / "sql" / "segments" / "by_email.sql").write_text(
        "SELECT email_normalised AS patient_id FROM marts.patients\n"
    )
    for command in (["preview", "segment", "by_email"], ["models", "build"]):
        code, lines = relay(*command, cwd=built)
        assert code == 2, lines
        assert_clean(lines)
        assert lines[0] == (
            "error: sql/segments/by_email.sql: patient_id is VARCHAR; a segment's patient_id is "
            "a patient's id (marts.patients.patient_id, a BIGINT)"
        ), lines
        assert not any("@" in line for line in lines), lines


def test_a_broken_model_keeps_duckdbs_message_framed_with_the_file(built):
    (built / "sql" / "segments" / "typo.sql").write_text("SELEC patient_id FROM marts.patients\n")
    code, lines = relay("models", "build", cwd=built)
    assert code == 2
    assert_clean(lines)
    assert lines[0].startswith("error: sql/segments/typo.sql: Parser Error: syntax error"), lines
    assert len(lines) <= 6, lines


def test_a_provider_feedback_cannot_reach_is_said_once_without_traceback(built):
    """`relay feedback` with Postmark unreachable: each feed's warning, Prefect's traceback of the
    flow, the command's own traceback and 40-odd `nanobind: leaked` lines. Now the one error
    naming each feed that could not be read, and what the feeds that could be read recorded."""
    config = built / "clinics" / "demo" / "clinic.yaml"
    text = config.read_text(encoding="utf-8").replace("  email: outbox ", "  email: env ", 1)
    config.write_text(text, encoding="utf-8")
    env = {
        "POSTMARK_SERVER_TOKEN": "not-a-token",
        "POSTMARK_FROM": "hello@demo-physio.example",
        "POSTMARK_BASE_URL": "http://127.0.0.1:9",
    }
    code, lines = relay("feedback", cwd=built, env=env)
    assert code == 2, lines
    assert_clean(lines)
    assert lines[-1].startswith(
        "error: demo: Postmark bounces of stream 'outbound' could not be read (ConnectionError)"
    ), lines
    assert "Postmark clicks of stream 'broadcast' could not be read" in lines[-1], lines
    assert len(lines) == 1, lines  # what the feeds read recorded would come first: none here


def test_a_bad_clinic_yaml_ends_in_a_few_lines_also_from_a_flow(project, data_dir):
    config = project / "clinics" / "demo" / "clinic.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        "\n".join(
            "time_zone: Mars/Olympus" if line.startswith("time_zone:") else line
            for line in text.splitlines()
        ),
        encoding="utf-8",
    )
    for command in (["sql", "SELECT 1"], ["sync"]):  # sync runs the cliniko-sync flow
        code, lines = relay(*command, cwd=project)
        assert code == 2, lines
        assert_clean(lines)
        assert lines[0].endswith("clinic.yaml: invalid configuration:"), lines
        assert "Mars/Olympus" in lines[1] and len(lines) == 2, lines


def test_an_error_inside_a_flow_leaves_no_traceback_or_leaked_lines(data_dir):
    # the campaign flow opens the database and refuses inside the connection (never built)
    with open_db(data_dir / "demo.duckdb"):
        pass
    code, lines = relay("campaign", "send", "recall-90-179", "--confirm")
    assert code == 2
    assert_clean(lines)
    assert lines == ["error: The models have never been built. Run `relay models build`."]


def test_a_refusal_inside_a_flows_task_is_one_line(data_dir):
    """A wrong key fails the sync's first task (check_access): the error is said once, without
    the task's "Finished in state Failed" log line or the DuckDB connection its frames held."""
    from sandbox.cliniko import SandboxClinic, SandboxServer

    clinic = SandboxClinic.generate(seed=7, patients=20)
    with SandboxServer(clinic, rate_limit=None) as server:
        code, lines = relay(
            "sync",
            env={
                "CLINIKO_API_KEY": "not-the-key-au1",
                "CLINIKO_BASE_URL": server.base_url,
                "CLINIKO_CONTACT": "it@clinic.com.au",
            },
        )
    assert code == 2
    assert_clean(lines)
    assert len(lines) == 1 and lines[0].startswith("error: Cliniko rejected the API key (401)")


def test_a_prefect_server_that_does_not_answer_is_one_line(data_dir):
    code, lines = relay("sync", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: No Prefect server answers at http://127.0.0.1:9/api")
    assert "relay serve" in lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["clinic", "home", "demo"],
        ["clinic", "move", "demo", "--to", "b"],
        ["deploy", "--demo"],
        ["alerts", "create", "--webhook-url", "http://127.0.0.1:9/hook"],
    ],
    ids=["clinic-home", "clinic-move", "deploy", "alerts"],
)
@pytest.mark.parametrize("named_in", ["environment", "profile"])
def test_an_operators_command_whose_server_does_not_answer_is_one_line(
    data_dir, tmp_path, command, named_in
):
    """An operator's commands that need the server (a clinic's home, deployments, alerts) ended
    in an httpx traceback of 60-odd lines ending 'Connection refused'. The server may be named
    in Prefect's profile (`prefect config set PREFECT_API_URL=...`) as Prefect reads it: `relay
    deploy` and `relay alerts create` said "set PREFECT_API_URL" then, as if none were set."""
    env = {"RELAY_MACHINE": "here"}
    if named_in == "environment":
        env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    else:
        home = tmp_path / "prefect-home"
        home.mkdir()
        (home / "profiles.toml").write_text(
            'active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
        )
        env["PREFECT_HOME"] = str(home)
    code, lines = relay(*command, env=env)
    assert code == 2
    assert lines[:-1] in ([], ["this machine: here"]), lines  # `clinic home` says it first
    assert lines[-1].startswith("error: No Prefect server answers at http://127.0.0.1:9/api")


def test_a_backup_to_a_folder_it_cannot_make_is_one_line(data_dir):
    """docs/scaling.md, Backups: "any error ... fails the command, saying so": one line naming
    the folder and the reason, not 52 lines of FileNotFoundError."""
    with open_db(data_dir / "demo.duckdb"):
        pass
    code, lines = relay("clinic", "backup", "demo", "--to", "/proc/bk")
    assert_clean(lines)
    assert code != 0 and len(lines) == 1, lines
    assert "could not be written to /proc/bk: No such file or directory" in lines[0], lines


def test_a_sandbox_on_a_port_in_use_is_one_line(data_dir):
    """8765 is also `relay serve`'s unsubscribe endpoint: `relay sandbox` beside it said so
    with uvicorn's error and a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = relay("sandbox", "--port", str(port), "--patients", "20", timeout=120)
    assert code == 2
    assert_clean(lines)
    assert len(lines) == 1 and lines[0].startswith(f"error: Port {port} on 127.0.0.1 is in use")
    assert "--port 0" in lines[0]


@pytest.mark.parametrize(
    "option", [["--speed", "-1"], ["--patients", "-5"], ["--rate-limit", "-1"], ["--port", "70000"]]
)
@pytest.mark.parametrize("command", [["relay", "sandbox"], ["sandbox.cliniko"]])
def test_a_sandbox_told_a_value_out_of_range_says_which_and_serves_nothing(command, option):
    """--speed -1 served with the clock thread dead of a traceback (the clinic never changed),
    --patients -5 an empty clinic and --rate-limit -1 a 429 for every request."""
    port = [] if option[0] == "--port" else ["--port", "0"]
    out = subprocess.run(
        [sys.executable, "-m", *command, *port, *option],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "sandbox: http" not in out.stdout.lower()
    assert option[0] in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--clinic", "nowhere", "--channel", "email", "pat@example.com"], "No clinic config"),
        (["--clinic", "demo", "--channel", "email", "pat@example"], "not a valid email address"),
        (["--clinic", "demo", "--channel", "sms", "0411 111 111"], "E.164"),
        (["--clinic", "demo", "--channel", "fax", "pat@example.com"], "email or sms"),
    ],
)
def test_an_opt_in_refused_is_one_line_and_records_nothing(data_dir, args, says):
    code, lines = relay("patients", "opt-in", *args, "--evidence", "phoned 9 March")
    assert code == 2 and len(lines) == 1 and says in lines[0], lines
    assert_clean(lines)
    assert "pat@example" not in lines[0] and "0411" not in lines[0]
    assert not (data_dir / "demo.duckdb").exists()


def test_the_list_sizes_by_limit_are_after_the_clinics_size_cap(built):
    """`relay models build` printed each limit's size before the cap: '24* 364' on a list
    capped at 250 (an owner reading it thought 364 would get their email)."""
    yaml = built / "clinics" / "demo" / "clinic.yaml"
    yaml.write_text(yaml.read_text().replace("size_cap: null ", "size_cap: 250  "))
    code, lines = relay("models", "build", cwd=built)
    assert code == 0, lines
    (sizes,) = [line for line in lines if "size under each active-patient limit" in line]
    assert sizes.endswith("(* = clinic.yaml; at most 250, its size_cap)"), sizes
