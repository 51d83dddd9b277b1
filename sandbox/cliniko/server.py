"""The sandbox served over real HTTP: uvicorn on 127.0.0.1 in a daemon thread.

``SandboxServer`` is a context manager for tests and benchmarks; ``rate_limit`` and ``faults`` can
be swapped while it runs. With ``auto_advance_speed`` the clinic's clock follows real time
multiplied by that speed (the demo), advancing about once a second.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import uvicorn

from sandbox.cliniko.app import ClinikoApp
from sandbox.cliniko.clinic import SandboxClinic
from sandbox.cliniko.controls import Faults, RateLimit, Stats


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
