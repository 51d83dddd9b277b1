"""What can be turned while the sandbox runs (its rate limit, injected faults) and what it counts.

Shared by the server (``server.py``), which holds them, and the HTTP app (``app.py``), which obeys
and records them and lets the admin endpoints swap them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields


def _number(name: str, value: object, low: float, high: float = math.inf) -> None:
    """Refuse what no request could be answered under (the admin answers 400 with the message)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        limits = f"from {low:g} to {high:g}" if high != math.inf else f"of {low:g} or more"
        raise ValueError(f"{name} must be a number {limits}, not {value!r}")


@dataclass(frozen=True)
class RateLimit:
    """Cliniko's limit: ``per_window`` requests per key per fixed window (200 per 60 s).

    Compress time for tests and benchmarks with a shorter window (e.g. 200 per 6 s)."""

    per_window: int = 200
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.per_window, bool) or not isinstance(self.per_window, int):
            raise ValueError(f"per_window must be a whole number, not {self.per_window!r}")
        _number("per_window", self.per_window, 1)  # no limit at all is None (JSON null)
        _number("window_seconds", self.window_seconds, 0.001, 1e9)


@dataclass(frozen=True)
class Faults:
    """Shares of requests answered badly: 5xx, slow, dropped connection, 200 with garbage."""

    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 1.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_rate"):
                _number(f.name, getattr(self, f.name), 0.0, 1.0)
        _number("slow_seconds", self.slow_seconds, 0.0, 3600.0)
        _number("seed", self.seed, -math.inf)


@dataclass
class Stats:
    """What the server answered. ``log`` holds (monotonic time, path, status) per request;
    status 0 means the connection was dropped without an answer."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_path: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    log: list[tuple[float, str, int]] = field(default_factory=list)

    def record(self, path: str, status: int) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if status == 429:
            self.rate_limited += 1
        self.log.append((time.monotonic(), path, status))

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_path": dict(sorted(self.by_path.items())),
            "rate_limited": self.rate_limited,
            "log": [[round(t, 6), p, s] for t, p, s in self.log],
        }
