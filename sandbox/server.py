"""Serve a Starlette app over real HTTP on 127.0.0.1 from a background thread, and inject faults.

Used by the provider sandboxes (and usable by any other): tests, the demo and benchmarks start one
in-process and point the real client library at ``server.url``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response


class ThreadedServer:
    """``with ThreadedServer(app) as server: ... server.url``; the port is picked by the OS."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and without
        # it every small reply waits ~40 ms for a delayed ACK
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> ThreadedServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"sandbox server on {self.url} failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Fault:
    """What the next ``times`` matching requests get.

    kind: ``5xx`` (a non-JSON 503 page), ``500`` (a non-JSON 500 page, the request not
    processed: Postmark's "in most cases the message is lost"), ``429`` (rate limited), ``401`` (credentials refused,
    as after a rotation), ``slow`` (wait ``delay``
    seconds, then process), ``slow_reply`` (process, then wait ``delay`` before answering: the
    provider has acted while the client still waits), ``timeout_after_receipt`` (the same with a
    delay longer than the client's timeout: the client gives up although the provider acted),
    ``500_after_receipt`` (process, then answer a 500: the provider acted, and said it failed;
    Twilio documents this for its 20500, "a timeout in the API": a retried SMS can go twice).
    """

    kind: str
    times: int = 1
    delay: float = 0.0
    path_prefix: str = "/"


class Faults:
    """A queue of faults to inject; thread-safe, since tests add them while the server runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, kind: str, times: int = 1, delay: float = 0.0, path_prefix: str = "/") -> None:
        if kind not in (
            "5xx",
            "500",
            "429",
            "401",
            "slow",
            "slow_reply",
            "timeout_after_receipt",
            "500_after_receipt",
        ):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, times, delay, path_prefix))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None


async def before(
    fault: Fault | None, rate_limited: JSONResponse, unauthorised: JSONResponse
) -> Response | None:
    """Apply a fault that acts before the request is processed; None means carry on."""
    if fault is None:
        return None
    if fault.kind == "401":
        return unauthorised
    if fault.kind == "5xx":
        return PlainTextResponse("Service Unavailable", status_code=503)
    if fault.kind == "500":
        return PlainTextResponse("Internal Server Error", status_code=500)
    if fault.kind == "429":
        return rate_limited
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay)
    return None


async def guard(
    request: Request,
    requests: list[tuple[str, str]],
    faults: Faults,
    *,
    authorised: bool,
    rate_limited: JSONResponse,
    unauthorised: JSONResponse,
) -> tuple[Fault | None, Response | None]:
    """What every provider sandbox does first: record the request, take the fault injected for
    its path, and refuse it (with the provider's own error bodies) for a fault or bad credentials.
    Returns the fault (for ``after``) and the early answer, None to carry on."""
    requests.append((request.method, request.url.path))
    fault = faults.take(request.url.path)
    early = await before(fault, rate_limited, unauthorised)
    if early is None and not authorised:
        early = unauthorised
    return fault, early


async def after(fault: Fault | None) -> None:
    if fault is not None and fault.kind in ("slow_reply", "timeout_after_receipt"):
        await asyncio.sleep(fault.delay)
