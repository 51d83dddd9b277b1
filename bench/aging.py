"""The database file over time (docs/scaling.md, "The database file over time"): a clinic of
20,000 patients and 400,000 appointments (bench/models.py's generator) built in full, then
BENCH_AGING_BUILDS (300: 25 hours of 5-minute ticks by the clinic's clock) ticks in a row, each
writing its own change set as the sync writes it (bench/models.py ``write_change_set``: 150
patients edited, 250 appointments cancelled or, every other tick, restored, 100 new bookings;
other rows each tick), building the models and closing the file as a tick does (the close
checkpoints the write-ahead log into the file). ``python -m bench aging``.

Prints, for each 50 builds, the median build and close, the slowest close and how many took
over half a second; the three slowest closes and after which build; the file's size, its free
blocks (which later writes reuse) and the row groups of the individual-appointment tables,
before the first tick and after the last. No target: it shows whether a build slows down as
the history grows, what a tick pays now and then for DuckDB's checkpoint, and how large the
file grows. BENCH_AGING_PATIENTS / BENCH_AGING_APPOINTMENTS: another clinic size.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

PATIENTS = int(os.environ.get("BENCH_AGING_PATIENTS", 20_000))
APPOINTMENTS = int(os.environ.get("BENCH_AGING_APPOINTMENTS", 400_000))
BUILDS = int(os.environ.get("BENCH_AGING_BUILDS", 300))
BLOCK = 50  # builds a median is taken over
SLOW = 0.5  # seconds: a close counted as one that paid for a larger checkpoint
APPOINTMENT_TABLES = (
    "raw.individual_appointments",
    "staging.individual_appointments",
    "marts.appointments",
)


def _prepare(db: Path) -> None:
    """The generated clinic, built in full (bench/models.py's own phases, in their processes)."""
    from bench.models import _child

    env = os.environ | {"BENCH_PATIENTS": str(PATIENTS), "BENCH_APPOINTMENTS": str(APPOINTMENTS)}
    for phase in ("generate", "full"):
        _child(phase, db, env)


def _file(db: Path) -> dict:
    """The file's size, its free share and the appointment tables' row groups (read-only)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        total, free = con.execute(
            "SELECT total_blocks, free_blocks FROM pragma_database_size()"
        ).fetchone()
        groups = {
            table: con.execute(
                f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')"
            ).fetchone()[0]
            for table in APPOINTMENT_TABLES
        }
    finally:
        con.close()
    return {
        "mb": round(db.stat().st_size / 2**20),
        "free_share": round(free / total, 2) if total else 0.0,
        "row_groups": groups,
    }


def main() -> None:
    # A build runs in a tick forked from the worker's warm template, numpy loaded (bench.models).
    import relay._numpy  # noqa: F401
    from bench._results import load_average, record
    from bench.models import NOW, build_db, write_change_set
    from tasks.models import runner as models

    with tempfile.TemporaryDirectory(prefix="relay-bench-aging-") as tmp:
        db = Path(tmp) / "aging.duckdb"
        print(
            f"generating and building {PATIENTS:,} patients and {APPOINTMENTS:,} appointments...",
            flush=True,
        )
        _prepare(db)
        before = _file(db)
        load_at_start = load_average()
        print(
            f"then {BUILDS} ticks of change set + build + close (load {load_at_start[0]:.1f})",
            flush=True,
        )
        builds, closes = [], []
        for tick in range(BUILDS):
            now = NOW + timedelta(minutes=5 * (tick + 1))
            with build_db(db) as con:
                write_change_set(con, now - timedelta(minutes=1), tick, PATIENTS, APPOINTMENTS)
                started = time.perf_counter()
                models.build(con, models.ListSettings(), now=now)
                builds.append(time.perf_counter() - started)
                closing = time.perf_counter()
            closes.append(time.perf_counter() - closing)
            if (tick + 1) % BLOCK == 0 or tick + 1 == BUILDS:
                first = tick - (tick % BLOCK)
                print(
                    f"  builds {first + 1:>3}-{tick + 1:<3} median build "
                    f"{statistics.median(builds[first:]):.2f} s, close "
                    f"{statistics.median(closes[first:]):.2f} s, slowest close "
                    f"{max(closes[first:]):.2f} s ({sum(c > SLOW for c in closes[first:])} over "
                    f"{SLOW} s); {db.stat().st_size / 2**20:,.0f} MB",
                    flush=True,
                )
        after = _file(db)
    slowest = sorted(range(BUILDS), key=lambda i: -closes[i])[:3]
    print(
        "slowest closes: "
        + ", ".join(f"{closes[i]:.2f} s after build {i + 1}" for i in sorted(slowest))
    )
    for name, state in (("before the first tick", before), ("after the last", after)):
        groups = ", ".join(f"{t} {n}" for t, n in state["row_groups"].items())
        print(
            f"file {name}: {state['mb']:,} MB, {state['free_share']:.0%} free blocks; "
            f"row groups: {groups}"
        )
    blocks = [
        {
            "builds": f"{start + 1}-{min(start + BLOCK, BUILDS)}",
            "build_median_seconds": round(statistics.median(builds[start : start + BLOCK]), 2),
            "close_median_seconds": round(statistics.median(closes[start : start + BLOCK]), 2),
            "close_max_seconds": round(max(closes[start : start + BLOCK]), 2),
            "closes_over_slow": sum(c > SLOW for c in closes[start : start + BLOCK]),
        }
        for start in range(0, BUILDS, BLOCK)
    ]
    record(
        "aging",
        {
            "patients": PATIENTS,
            "appointments": APPOINTMENTS,
            "builds": BUILDS,
            "slow_close_seconds": SLOW,
            "blocks": blocks,
            "slowest_closes": [
                {"after_build": i + 1, "seconds": round(closes[i], 2)} for i in sorted(slowest)
            ],
            "file_before": before,
            "file_after": after,
        },
        load_at_start=load_at_start,
    )


if __name__ == "__main__":
    main()
