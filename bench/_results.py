"""One home for benchmark figures on disk: ``record("models", {...})`` appends one JSON line to
``bench/results/models.jsonl`` with the machine, its cores, the load average at the time, the
date and the commit, so a quoted figure can be traced to the run (and the load) it came from.

``python -m bench`` skips this module (its name starts with "_"); every benchmark calls ``record`` once
per run with its figures, each next to its target where it has one.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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


def record(
    benchmark: str, figures: dict[str, Any], *, load_at_start: list[float] | None = None
) -> dict:
    """Append one line to bench/results/<benchmark>.jsonl and return it. ``load_at_start``: the
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
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{benchmark}.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"   figures appended to bench/results/{benchmark}.jsonl")
    return line
