"""Planning benchmark (issue 4 §6): one planning tick on the 100,000-patient / 2,000,000-appointment
clinic of bench/models.py (same raw-table generator, same models), target <= 2 s per tick.

Triggers: the demo clinic's three (welcome on the admin tag, 24-hour SMS reminder excluding the
Admin Only category, marketing recall six weeks after an attended consultation unless rebooked),
plus a cancellation follow-up (not rebooked since) and a first-appointment message, so every kind
of query the planner builds is in the tick. Measured:

- first tick: go-live recorded, the next two days planned (thousands of rows inserted)
- steady tick: nothing changed since; every planned row re-checked
- tick after a 5-minute change set (bench/models.py: cancellations, new bookings, edits)
- prepare: dispatch's re-check + template context for every due message

``python -m bench planning``; BENCH_PATIENTS / BENCH_APPOINTMENTS shrink it for a quick run;
BENCH_DB=<a copy of a database bench.models generated and built> skips generating it. The
figures, each with its target, go to bench/results/planning.jsonl (bench/_results.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench import models as models_bench
from bench._results import figure, load_average, record

TARGET_SECONDS = 2.0
TRIGGERS = [
    {"name": "welcome-insurance", "enabled": True, "event": "appointment_booked",
     "timing": "5 minutes after", "channel": "email", "template": "welcome",
     "purpose": "transactional", "filters": {"appointment_types": ["Admin - Insurance Patient"]}},
    {"name": "sms-reminder-24h", "enabled": True, "event": "before_appointment",
     "timing": "24 hours before", "grace": "2 hours", "channel": "sms",
     "template": "reminder-24h", "purpose": "transactional",
     "exclude": {"categories": ["Admin Only"]}},
    {"name": "recall", "enabled": True, "event": "after_appointment", "timing": "6 weeks after",
     "channel": "email", "template": "recall", "purpose": "marketing",
     "filters": {"appointment_types": ["Type 1"], "no_future_appointment": True}},
    {"name": "sorry-we-missed-you", "enabled": True, "event": "cancelled",
     "timing": "2 hours after", "channel": "email", "template": "welcome",
     "purpose": "transactional", "filters": {"not_rebooked_since_cancelling": True}},
    {"name": "first-visit", "enabled": True, "event": "first_appointment",
     "timing": "2 days before", "channel": "email", "template": "welcome",
     "purpose": "transactional", "exclude": {"categories": ["Admin Only"]}},
]  # fmt: skip


def _tick(db: Path, config, now) -> tuple[float, dict]:
    from tasks.triggers import plan as planning
    from tasks.warehouse import open_db

    with open_db(db) as con:
        con.execute("SET enable_progress_bar = false")
        started = time.perf_counter()
        result = planning.plan(con, config, now)
        return time.perf_counter() - started, dict(result.totals)


def _prepare(db: Path, config, now) -> tuple[float, int]:
    from tasks.messages import ledger
    from tasks.triggers.prepare import Preparer
    from tasks.warehouse import open_db

    with open_db(db) as con:
        started = time.perf_counter()
        preparer = Preparer(con, config, clock=lambda: now)
        due = ledger.due(con, now, limit=1_000_000)
        for row in due:
            preparer(row)
        return time.perf_counter() - started, len(due)


def _line(figures: dict, name: str, label: str, seconds: float, detail: str) -> None:
    ok = seconds <= TARGET_SECONDS
    print(
        f"{label:<34} {seconds:6.2f} s   (target <= {TARGET_SECONDS:.0f} s, "
        f"{'ok' if ok else 'OVER TARGET'})   {detail}"
    )
    figures[name] = figure(round(seconds, 3), f"<= {TARGET_SECONDS:g} s", ok=ok)


def main() -> None:
    from tasks.config import ClinicConfig

    config = ClinicConfig(clinic="bench", name="Bench Physio", triggers=TRIGGERS)
    now = models_bench.NOW
    load_at_start = load_average()
    figures: dict = {
        "patients": models_bench.PATIENTS,
        "appointments": models_bench.APPOINTMENTS,
        "triggers": len(TRIGGERS),
    }
    with tempfile.TemporaryDirectory(prefix="relay-bench-planning-") as tmp:
        db = Path(os.environ.get("BENCH_DB", Path(tmp) / "bench.duckdb"))
        print(
            f"generating {models_bench.PATIENTS:,} patients and "
            f"{models_bench.APPOINTMENTS:,} appointments, building the models ...",
            flush=True,
        )
        if db.exists():  # BENCH_DB: a copy of a generated, built clinic (saves minutes)
            print(f"  reusing {db}")
        else:
            models_bench._child("generate", db)
            full = models_bench._child("full", db)
            print(
                f"  models built in {full['seconds']:.1f}s; {full['appointments']:,} appointments"
            )

        seconds, counts = _tick(db, config, now)
        _line(figures, "first_tick_seconds", "first tick (go-live, plan 2 days)", seconds,
              str(counts))  # fmt: skip
        figures["first_tick_planned"] = counts
        seconds, counts = _tick(db, config, now + timedelta(minutes=1))
        _line(figures, "steady_tick_seconds", "steady tick (re-check only)", seconds,
              str(counts or "no changes"))  # fmt: skip
        change = models_bench._child("change", db)
        seconds, counts = _tick(db, config, now + timedelta(minutes=5))
        _line(figures, "tick_after_change_seconds", "tick after a 5-minute change set", seconds,
              f"{counts or 'no changes'} (incremental build {change['seconds']:.1f}s)")  # fmt: skip
        seconds, due = _prepare(db, config, now + timedelta(hours=3))
        _line(figures, "prepare_seconds", "prepare every due message", seconds,
              f"{due:,} messages due 3 hours later")  # fmt: skip
        figures["prepared_messages"] = due
    record("planning", figures, load_at_start=load_at_start)


if __name__ == "__main__":
    main()
