"""kill -9 during journey steps and a campaign send, rerun: no step repeated or skipped.

A hand-made clinic is built into a real DuckDB file: 60 new patients entered the "new" segment
after the new-patient journey went live, and a campaign to the 90-179-day recall band (60 more)
is confirmed for a few minutes later. Then a subprocess (this file, run as a script) plays the
clinic's ticks over 12 days of clock: journeys, due campaigns, dispatch through the sandbox
Postmark over real HTTP. The test kills it with SIGKILL at random moments and starts it again
until it finishes; a run resumes from the last tick it finished and re-runs the one it was in.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEW, RECALL = 60, 60
JOURNEY = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [
        {"send": "email", "template": "new-patient-welcome"},
        {"wait": "3 days"},
        {"only_if": "still_in_segment"},
        {"send": "email", "template": "new-patient-tips"},
        {"wait": "7 days"},
        {"send": "email", "template": "new-patient-checkin"},
    ],
}
CAMPAIGN = {"name": "recall", "segment": "recall_90_179", "channel": "email",
            "template": "recall-checkin", "per_minute": 20}  # fmt: skip
# the ticks the worker plays: two 5 minutes apart, then twice a day for 12 days
TICKS = [timedelta(minutes=5), timedelta(minutes=10)] + [
    timedelta(minutes=10, hours=12 * i) for i in range(1, 25)
]


def _helper():
    spec = importlib.util.spec_from_file_location(
        "journey_clinic", ROOT / "tests" / "unit" / "marketing" / "journey_clinic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config():
    from tasks.config import ClinicConfig

    return ClinicConfig(clinic="crash", name="Crash Physio", journeys=[JOURNEY],
                        campaigns=[{**CAMPAIGN}])  # fmt: skip


def worker(db: str, postmark_url: str, progress: str) -> None:
    """Play the ticks from the first one not yet finished, as the scheduler would."""
    sys.path.insert(0, str(ROOT))
    from tasks.marketing import campaigns, journeys
    from tasks.messages.dispatch import Unsubscribe, dispatch
    from tasks.messages.gate import Gate
    from tasks.messages.prepare import by_source_kind
    from tasks.messages.templates import Templates
    from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
    from tasks.warehouse import open_db

    journey_clinic = _helper()
    no_triggers = journey_clinic.no_triggers
    cfg = config()
    done = Path(progress)
    first = int(done.read_text()) if done.exists() else 0
    print("ready", flush=True)  # imports done: the kill window starts here, whatever the speed
    for index in range(first, len(TICKS)):
        now = journey_clinic.START + TICKS[index]
        with open_db(db) as con:
            journeys.run_journeys(con, cfg, now)
            campaigns.freeze_due(con, cfg, now)
            email = PostmarkProvider(
                PostmarkSettings("sandbox-postmark-token", "Crash <hi@crash.example>",
                                 base_url=postmark_url)
            )  # fmt: skip
            email.batch_size = 7  # many small claims: more moments for the kill to land
            dispatch(
                con, providers={"email": email},
                prepare=by_source_kind({"trigger": no_triggers,
                                        "journey": journeys.Preparer(con, cfg),
                                        "campaign": campaigns.Preparer(con, cfg)}),
                templates=Templates(),
                unsubscribe=Unsubscribe("crash", "http://127.0.0.1:8765/u", b"crash-key"),
                clock=lambda now=now: now, settle=timedelta(0), gate=Gate.from_config(cfg),
            )  # fmt: skip
        # atomically: a kill mid-write must not leave the harness an empty file to trip on
        partial = done.with_suffix(".partial")
        partial.write_text(str(index + 1))
        os.replace(partial, done)


def setup_clinic(db: Path) -> None:
    """Go-live, then the entries, then the confirmed campaign: all before the first kill."""
    import duckdb

    from tasks.marketing import campaigns, journeys
    from tasks.warehouse import ensure_schema

    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    ensure_schema(con)
    clinic = _helper().Clinic(con)
    for p in range(NEW + 1, NEW + RECALL + 1):
        clinic.patient(p)
        clinic.visit(p, days_ago=100)
    clinic.build()
    journeys.run_journeys(con, config(), clinic.now)  # the journey goes live
    for p in range(1, NEW + 1):
        clinic.patient(p)
        clinic.visit(p, days_ago=0.2)
    clinic.advance(minutes=4)
    clinic.build()  # the new patients join "new": entry events after go-live
    cfg = config().model_copy(
        update={"campaigns": [config().campaigns[0].model_copy(
            update={"send_at": clinic.now + timedelta(minutes=6)})]}
    )  # fmt: skip
    campaigns.confirm(con, cfg, "recall", clinic.now)
    con.close()


@pytest.fixture
def postmark():
    from sandbox.postmark import PostmarkSandbox

    sandbox = PostmarkSandbox()
    sandbox.faults.add("slow_reply", times=10**6, delay=0.2)  # slower than the kill window
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


def spawn(db: Path, postmark, progress: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(db), postmark.url, str(progress)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_during_journey_steps_and_a_campaign_send_then_rerun(tmp_path, postmark):
    db, progress = tmp_path / "clinic.duckdb", tmp_path / "ticks-done"
    setup_clinic(db)
    rng = random.Random(int(os.environ.get("RELAY_CRASH_SEED", "9")))
    kills = 0
    while kills < 12:
        proc = spawn(db, postmark, progress)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-3000:]
        try:
            # each kill lands inside the ticks, not in Python's start-up, so a fast machine
            # still gets killed mid-send as often as a slow one
            proc.wait(timeout=rng.uniform(0.2, 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        break
    proc = spawn(db, postmark, progress)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert progress.read_text() == str(len(TICKS))
    assert kills >= 3, "the worker finished before it could be killed enough: slow it down"

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    # every enrolment went through every step exactly once (the key makes twice impossible;
    # all six present means none was skipped)
    steps = con.execute(
        "SELECT enrolment_id, list(step ORDER BY step), any_value(status) "
        "FROM state.journey_steps JOIN state.journey_enrolments USING (enrolment_id) GROUP BY 1"
    ).fetchall()
    assert len(steps) == NEW
    assert all(s == [0, 1, 2, 3, 4, 5] and status == "completed" for _, s, status in steps)
    statuses = dict(
        con.execute("SELECT status, count(*) FROM state.messages GROUP BY 1").fetchall()
    )
    assert statuses == {"sent": NEW * 3 + RECALL}
    keys = [r[0] for r in con.execute("SELECT send_key FROM state.messages").fetchall()]
    con.close()
    # Postmark got each message once: nothing repeated, nothing lost
    received = postmark.send_key_counts()
    assert max(received.values()) == 1
    assert set(received) == set(keys)
    per_journey_patient = Counter(k.split(":")[2] for k in keys if k.startswith("journey:"))
    assert set(per_journey_patient.values()) == {3}
    print(f"kills={kills}")


if __name__ == "__main__":
    worker(*sys.argv[1:])
