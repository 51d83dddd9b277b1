"""The sandbox served over real HTTP: uvicorn on 127.0.0.1 in a daemon thread.

``SandboxServer`` is a context manager for tests and benchmarks; ``rate_limit`` and ``faults`` can
be swapped while it runs. With ``auto_advance_speed`` the clinic's clock follows real time
multiplied by that speed (the demo), advancing about once a second.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import uvicorn

from sandbox.cliniko.app import ClinikoApp
from sandbox.cliniko.clinic import SandboxClinic


@dataclass(frozen=True)
class RateLimit:
    """Cliniko's limit: ``per_window`` requests per key per fixed window (200 per 60 s).

    Compress time for tests and benchmarks with a shorter window (e.g. 200 per 6 s)."""

    per_window: int = 200
    window_seconds: float = 60.0


@dataclass(frozen=True)
class Faults:
    """Shares of requests answered badly: 5xx, slow, dropped connection, 200 with garbage."""

    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 1.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int = 0


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


class SandboxServer:
    """Serve ``clinic`` as the Cliniko API at ``base_url`` until the context exits."""

    def __init__(
        self,
        clinic: SandboxClinic,
        rate_limit: RateLimit | None = RateLimit(),
        faults: Faults | None = None,
        shard: str | None = None,
        port: int = 0,
        auto_advance_speed: float | None = None,
    ) -> None:
        self.clinic = clinic
        self.shard = shard or clinic.shard
        self.rate_limit = rate_limit
        self._faults = faults or Faults()
        self.fault_rng = random.Random(self._faults.seed)
        self.stats = Stats()
        self.auto_advance_speed = auto_advance_speed
        self._port = port
        self._uvicorn: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.base_url = ""

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults | None) -> None:
        self._faults = faults or Faults()
        self.fault_rng = random.Random(self._faults.seed)

    def reset_stats(self) -> None:
        self.stats = Stats()

    def start(self) -> SandboxServer:
        config = uvicorn.Config(
            ClinikoApp(self),
            host="127.0.0.1",
            port=self._port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
        )
        self._uvicorn = uvicorn.Server(config)
        serving = threading.Thread(target=self._uvicorn.run, name="cliniko-sandbox", daemon=True)
        serving.start()
        self._threads.append(serving)
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not serving.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Cliniko sandbox did not start (is the port in use?)")
            time.sleep(0.01)
        port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        if self.auto_advance_speed:
            ticking = threading.Thread(target=self._tick, name="cliniko-sandbox-clock", daemon=True)
            ticking.start()
            self._threads.append(ticking)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def admin_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/_sandbox"

    def _tick(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            self.clinic.advance(timedelta(seconds=(now - last) * (self.auto_advance_speed or 0)))
            last = now
