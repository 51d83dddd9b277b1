"""``python -m sandbox.cliniko``: serve a generated clinic until interrupted.

When ready it prints one JSON line on stdout (``base_url``, ``api_key``, ``admin_url``, row
counts), so a benchmark can run the sandbox in its own process and read where to connect.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import orjson


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cliniko", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--appointments-per-patient", type=float, default=15.0)
    parser.add_argument("--start", help="clock start, ISO UTC (default: now)")
    parser.add_argument("--shard", default="au1")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per window per key")
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument(
        "--speed", type=float, default=None, help="advance the clock at speed x real time"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from sandbox.cliniko import RateLimit, SandboxClinic, SandboxServer

    args = parse_args(argv)
    start = (
        datetime.fromisoformat(args.start)
        if args.start
        else datetime.now(UTC).replace(microsecond=0)
    )
    clinic = SandboxClinic.generate(
        seed=args.seed,
        patients=args.patients,
        start=start.astimezone(UTC),
        appointments_per_patient=args.appointments_per_patient,
        shard=args.shard,
    )
    limit = None if args.rate_limit is None else RateLimit(args.rate_limit, args.window_seconds)
    with SandboxServer(
        clinic, rate_limit=limit, port=args.port, auto_advance_speed=args.speed
    ) as server:
        ready = {
            "base_url": server.base_url,
            "api_key": clinic.api_key,
            "admin_url": server.admin_url,
            "rows": {name: len(table) for name, table in clinic.tables.items()},
        }
        sys.stdout.write(orjson.dumps(ready).decode() + "\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
