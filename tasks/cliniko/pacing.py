"""Pacing under Cliniko's rate limit: the process-wide limiter of each API key.

Cliniko allows 200 requests per minute per *user*, in fixed windows whose edges the client cannot
see; over it, 429 with ``X-RateLimit-Reset``. ``tasks.cliniko.client`` asks ``limiter_for`` for
its key's limiter and takes a slot (and an in-flight permit) for every request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256


@dataclass(frozen=True)
class Pace:
    """The server's allowance: ``requests`` per fixed window of ``per_seconds``."""

    requests: float = 200
    per_seconds: float = 60.0


class RateLimiter:
    """The pace shared by every client of one API key in this process.

    Hand-written rather than a library because what matters is specific to Cliniko's fixed window
    of ``requests`` per ``per_seconds``, whose edges the client cannot see. Two rules, both needed:

    - a sliding log: no ``per_seconds`` interval ever holds more than ``budget`` slots, the
      allowance less a ``HEADROOM`` of 1% (at least one). A server window then sees at most the
      budget plus the one request still on its way when it began (one reader per sync), so no
      alignment of its edges can meet a 429, however the requests bunch;
    - a smoothing bucket (GCRA) spacing slots ``per_seconds / budget`` apart, with a burst of
      ``BURST_SHARE`` of the allowance: a caller that fell behind (a slow page, a long commit)
      catches up at once, as far as the log allows, instead of losing those slots for good, and
      a tick's few requests (one per path) never wait.

    Requests may overlap (the sync asks for every path's first page at once): at most
    ``in_flight`` of a key's requests are on their way at any moment (``permits``, held from the
    slot until the answer), and ``in_flight`` is the headroom, so a server window sees at most the
    budget plus the requests already on their way when it began: the allowance, never more.

    Steady state is one slot every ``per_seconds / budget``: 99% of the allowance (the token
    bucket this replaced refilled at 95%, and that was the backfill's measured rate). After a 429
    nobody asks before the server's window resets (``hold_until``), which generic limiters
    (pyrate-limiter, aiolimiter, limits) have no notion of. Blocking and thread-safe: a caller
    reserves its slot under the lock and sleeps outside it, so callers queue in arrival order.
    """

    HEADROOM = 0.01
    BURST_SHARE = 0.25

    def __init__(
        self,
        pace: Pace,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pace = pace
        allowance = math.floor(pace.requests)
        self.budget = max(1, allowance - max(1, round(self.HEADROOM * allowance)))
        self.in_flight = max(1, allowance - self.budget)  # the headroom: requests on their way
        self.permits = threading.BoundedSemaphore(self.in_flight)
        self.interval = pace.per_seconds / self.budget  # seconds between slots, steady state
        self._tolerance = (max(1, int(self.BURST_SHARE * allowance)) - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=self.budget)  # the last ``budget`` slots
        self._due = clock()  # GCRA's theoretical arrival time
        self._hold = -math.inf

    def acquire(self) -> float:
        """Wait for a request slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._due - self._tolerance, self._hold)
            if self._recent:  # in arrival order; a full log: a whole window after its oldest
                slot = max(slot, self._recent[-1])
            if len(self._recent) == self.budget:
                slot = max(slot, self._recent[0] + self.pace.per_seconds)
            self._recent.append(slot)
            self._due = max(self._due, slot) + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def hold_until(self, monotonic_deadline: float) -> None:
        """After a 429: no slot for anyone before the server's window resets, then no burst."""
        with self._lock:
            if monotonic_deadline > self._hold:
                self._hold = monotonic_deadline
                self._due = max(self._due, monotonic_deadline + self._tolerance)


_limiters: dict[tuple[str, Pace], RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(api_key: str, pace: Pace) -> RateLimiter:
    """The process-wide limiter of a key (keyed on a digest, so the key itself is not kept here)."""
    ident = (sha256(api_key.encode()).hexdigest(), pace)
    with _limiters_lock:
        if ident not in _limiters:
            _limiters[ident] = RateLimiter(pace)
        return _limiters[ident]
