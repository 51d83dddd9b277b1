"""The same seed gives the same clinic: ``relay sandbox --seed N`` run twice (in fresh processes,
with different hash seeds) serves the same rows, and the demo's generator, called at two times of
one day, generates the same clinic with its clock at each time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sandbox.cliniko import SandboxClinic
from sandbox.cliniko import clinic as clinic_module

UA = {"User-Agent": "clinic-relay tests (tests@example.com)", "Accept": "application/json"}
RELAY = Path(sys.executable).with_name("relay")


def _rows(clinic: SandboxClinic) -> dict[str, list]:
    return {
        name: sorted((row_id, str(table.record(row_id))) for row_id in table.rows)
        for name, table in clinic.tables.items()
    }


def _clock_at(monkeypatch, moment: datetime) -> None:
    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return moment.astimezone(tz)

    monkeypatch.setattr(clinic_module, "datetime", Clock)


def test_the_demos_generator_makes_the_same_clinic_at_any_time_of_the_day(monkeypatch):
    morning = datetime(2026, 12, 1, 3, 10, 7, tzinfo=UTC)
    evening = datetime(2026, 12, 1, 19, 45, 31, tzinfo=UTC)
    _clock_at(monkeypatch, morning)
    first = SandboxClinic.generate(seed=4, patients=60)
    _clock_at(monkeypatch, evening)
    second = SandboxClinic.generate(seed=4, patients=60)
    assert _rows(first) == _rows(second)
    assert first.api_key == second.api_key
    # each one's clock is at the moment it was made: the demo syncs and ticks at "now"
    assert (first.now, second.now) == (morning, evening)


def _serve_once(hash_seed: str) -> tuple[str, dict[str, list]]:
    """Start ``relay sandbox --seed 4``, read every patient and appointment, stop it."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [str(RELAY), "sandbox", "--port", "0", "--seed", "4", "--patients", "40"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = {}
        while len(lines) < 2:
            line = process.stdout.readline()
            assert line, "relay sandbox stopped before saying where it serves"
            key, _, value = line.partition(":")
            if key in ("Cliniko sandbox", "API key"):
                lines[key] = value.strip()
        base, api_key = lines["Cliniko sandbox"], lines["API key"]
        client = httpx.Client(auth=(api_key, ""), headers=UA, timeout=30)
        served = {}
        for resource in ("patients", "individual_appointments", "practitioners"):
            rows, page = [], 1
            while True:
                body = client.get(f"{base}/{resource}", params={"page": page, "per_page": 100,
                                  "sort": "id"}).text  # fmt: skip
                rows.append(body.replace(base, "BASE"))
                if '"next"' not in body:
                    break
                page += 1
            served[resource] = rows
        return api_key, served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.skipif(not RELAY.exists(), reason="the relay command is installed by make install")
def test_relay_sandbox_serves_the_same_clinic_for_the_same_seed():
    for _ in range(2):  # a run straddling 00:00 UTC starts a new day's clinic: once more
        day = datetime.now(UTC).date()
        first = _serve_once("1")
        second = _serve_once("2")
        if datetime.now(UTC).date() == day:
            break
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert len(first[1]["patients"]) >= 1 and "first_name" in first[1]["patients"][0]


def _first_sync(monkeypatch, tmp_path, at: datetime, name: str) -> dict[str, list]:
    """The demo's Cliniko made at ``at`` and synced once into a fresh DuckDB file: raw.* rows."""
    from relay.cli.demo import demo_sandbox
    from tasks.cliniko.sync import main as sync
    from tasks.warehouse import open_db

    _clock_at(monkeypatch, at)
    clinic, server = demo_sandbox(seed=4, patients=40, requests_per_minute=100_000)
    db = tmp_path / f"{name}.duckdb"
    with server:
        monkeypatch.setenv("CLINIKO_API_KEY", clinic.api_key)
        monkeypatch.setenv("CLINIKO_BASE_URL", server.base_url)
        monkeypatch.setenv("CLINIKO_CONTACT", "tests@example.com")
        time.sleep(1.5)  # a clock following real time would have moved (and changed rows) by now
        assert sync(["--db", str(db), "--no-rate-limit"]) == 0
    with open_db(db, read_only=True) as con:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'"
        ).fetchall()]  # fmt: skip
        return {  # the links name the server's port, which is any free one
            t: [
                (row_id, payload.replace(server.base_url, "BASE"))
                for row_id, payload in con.execute(
                    f"SELECT id, payload FROM raw.{t} ORDER BY id"
                ).fetchall()
            ]
            for t in tables
        }


def test_the_demos_first_sync_brings_in_the_same_rows_for_the_same_seed(monkeypatch, tmp_path):
    first = _first_sync(monkeypatch, tmp_path, datetime(2026, 12, 1, 2, 0, tzinfo=UTC), "a")
    second = _first_sync(monkeypatch, tmp_path, datetime(2026, 12, 1, 21, 30, tzinfo=UTC), "b")
    assert sum(map(len, first.values())) > 100
    assert first == second
