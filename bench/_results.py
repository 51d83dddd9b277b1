"""One home for benchmark figures on disk: ``record("models", {...})`` appends one JSON line to
``bench/results/models.jsonl`` with the machine, its cores, the load average at the time, the
date and the commit, so a quoted figure can be traced to the run (and the load) it came from.

``python -m bench`` skips this module (its name starts with "_"); every benchmark calls ``record`` once
per run with its figures, each next to its target where it has one: ``figure(0.99, ">= 0.97",
ok=True)`` is ``{"value": 0.99, "target": ">= 0.97", "ok": true}``.

Each line also carries ``reference_seconds``: a fixed piece of DuckDB work (``REFERENCE_SQL``,
one thread, the best of three) timed as the line is written. Machines of the same kind differ in
speed, and so does one machine from hour to hour, not only with its load (docs/scaling.md,
"Measured", has an example): a figure is read beside it.

``RELAY_BENCH_RESULTS`` names another folder for the lines (a run under load that is not meant to
be committed, a test); read at each call, so it can be set after the import.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where the lines go: ``RELAY_BENCH_RESULTS`` when set, else ``bench/results``."""
    chosen = os.environ.get("RELAY_BENCH_RESULTS")
    return Path(chosen) if chosen else RESULTS


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=RESULTS.parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# Hashing and grouping ten million numbers on one thread: ~0.2 s on this project's 2-core machine.
REFERENCE_SQL = (
    "SELECT count(*), sum(n) FROM (SELECT hash(i) % 100003 AS k, count(*) AS n "
    "FROM range(10000000) t(i) GROUP BY k)"
)


def reference_seconds() -> float:
    """How long REFERENCE_SQL takes now (the best of three runs, one thread)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            con.execute(REFERENCE_SQL).fetchall()
            best = min(best, time.perf_counter() - started)
    finally:
        con.close()
    return round(best, 3)


def figure(value: Any, target: str | None = None, *, ok: bool | None = None) -> dict[str, Any]:
    """A figure next to its target (``"<= 2 s"``) and whether it met it: the one shape of a
    targeted figure in every results file."""
    return {"value": value, "target": target, "ok": ok}


def record(
    benchmark: str, figures: dict[str, Any], *, load_at_start: list[float] | None = None
) -> dict:
    """Append one line to <results>/<benchmark>.jsonl and return it. ``load_at_start``: the
    load average when the measurement began (the line also carries the load at the end)."""
    line = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "benchmark": benchmark,
        "machine": socket.gethostname(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit(),
        "load_average_at_start": load_at_start,
        "load_average": load_average(),
        "reference_seconds": reference_seconds(),
        **figures,
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{benchmark}.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"   figures appended to {folder / f'{benchmark}.jsonl'}")
    return line
