"""Run every benchmark module in this folder (each has a ``main()``), or the ones named."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench
import relay  # noqa: F401  (offline Prefect defaults)


def main(argv: list[str]) -> int:
    available = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )
    chosen = argv or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    for name in chosen:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"=== bench.{name} done in {time.perf_counter() - started:.1f}s ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
