"""``python -m sandbox.cliniko``: serve a generated clinic until interrupted.

When ready it prints one JSON line on stdout (``base_url``, ``api_key``, ``admin_url``, row
counts), so a benchmark can run the sandbox in its own process and read where to connect.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from sandbox.cliniko.server import SandboxServer


def _at_least(low: float, kind: type = int, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` from ``low`` (to ``high``), else a usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low}" + (f" to {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: {bound}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cliniko", description=__doc__)
    parser.add_argument("--port", type=_at_least(0, high=65535), default=0, help="0: a free port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--patients", type=_at_least(0), default=500)
    parser.add_argument("--appointments-per-patient", type=_at_least(0, float), default=15.0)
    parser.add_argument(
        "--start", help="clock start, ISO UTC (default: as of 00:00 UTC today, clock at now)"
    )
    parser.add_argument("--shard", default="au1")
    parser.add_argument(
        "--rate-limit",
        type=_at_least(0),
        default=200,
        help="requests per window per key, 429 past it (Cliniko: 200 a minute); 0: no limit",
    )
    parser.add_argument("--window-seconds", type=_at_least(0.001, float), default=60.0)
    parser.add_argument(
        "--speed",
        type=_at_least(0, float),
        default=None,
        help="advance the clock at speed x real time",
    )
    return parser.parse_args(argv)


def serve(
    announce: Callable[[SandboxServer], None],
    *,
    port: int = 0,
    seed: int = 1,
    patients: int = 500,
    appointments_per_patient: float = 15.0,
    start: datetime | None = None,
    shard: str = "au1",
    rate_limit: int | None = 200,
    window_seconds: float = 60.0,
    speed: float | None = None,
) -> None:
    """Generate a clinic, serve it, call ``announce(server)`` once ready, run until Ctrl-C."""
    from sandbox.cliniko import RateLimit, SandboxClinic, SandboxServer

    clinic = SandboxClinic.generate(
        seed=seed,
        patients=patients,
        start=start.astimezone(UTC) if start else None,  # None: the same clinic all day
        appointments_per_patient=appointments_per_patient,
        shard=shard,
    )
    limit = RateLimit(rate_limit, window_seconds) if rate_limit else None  # 0/None: no limit
    with SandboxServer(clinic, rate_limit=limit, port=port, auto_advance_speed=speed) as server:
        announce(server)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _announce_json(server: SandboxServer) -> None:
    ready = {
        "base_url": server.base_url,
        "api_key": server.clinic.api_key,
        "admin_url": server.admin_url,
        "rows": {name: len(table) for name, table in server.clinic.tables.items()},
    }
    sys.stdout.write(orjson.dumps(ready).decode() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serve(
        _announce_json,
        port=args.port,
        seed=args.seed,
        patients=args.patients,
        appointments_per_patient=args.appointments_per_patient,
        start=datetime.fromisoformat(args.start) if args.start else None,
        shard=args.shard,
        rate_limit=args.rate_limit,
        window_seconds=args.window_seconds,
        speed=args.speed,
    )


if __name__ == "__main__":
    main()
