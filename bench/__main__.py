"""Run every benchmark module in this folder (each has a ``main()``), or the ones named. Each
prints its figures next to their targets and appends them as one JSON line to
``bench/results/<name>.jsonl`` (``bench._results.record``); a benchmark that wrote none is named."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench
import relay  # noqa: F401  (offline Prefect defaults)
from bench._results import results_dir


def _sizes() -> dict[str, int]:
    folder = results_dir()
    return {p.name: p.stat().st_size for p in folder.glob("*.jsonl")} if folder.is_dir() else {}


def main(argv: list[str]) -> int:
    available = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )
    chosen = argv or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    silent = []
    for name in chosen:
        print(f"\n=== bench.{name} ===", flush=True)
        before = _sizes()
        started = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"=== bench.{name} done in {time.perf_counter() - started:.1f}s ===", flush=True)
        if not any(size > before.get(file, 0) for file, size in _sizes().items()):
            silent.append(name)
    if silent:
        print(f"\nno figures recorded under {results_dir()} by: {', '.join(silent)}")
    else:
        print(f"\nfigures recorded under {results_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
