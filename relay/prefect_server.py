"""``prefect server start`` with Python's cycle collector on a thread of its own.

Why: a Prefect server on SQLite (the default) can wedge under load, every write answered
`database is locked` for minutes or for good, until it is restarted. Seen in `bench tick` on a
slow 2-core machine: 25 minutes and counting, the ticks of every clinic stopped. A `gdb` stack
of the server shows how (docs/scaling.md, "Automations cost a SQLite server" had seen the same
stalls end after a minute or two):

1. A write that fails with `database is locked` leaves its sqlite3 cursor marked "in use"
   (``sqlite3_reset`` returns the step's error, so CPython keeps the mark) and in a reference
   cycle (the exception's traceback). Only the cycle collector frees it.
2. The collector runs on whichever thread allocates when a threshold is crossed: in the server,
   the event loop's. Freeing that cursor resets its statement, which waits for its connection's
   mutex.
3. That connection (aiosqlite gives each its own thread) is meanwhile waiting, mutex held, for
   SQLite's write lock (``busy_timeout``, 60 s in Prefect), and the transaction holding the write
   lock needs the event loop to go on and commit. Nothing moves until the wait times out: it
   fails, leaving another such cursor, and the next collection blocks the loop again.

Here the collector is switched off and a thread of this module collects instead (the same
thresholds, checked ten times a second): a collection that waits for a connection then blocks
only itself, the loop commits, the waiting write goes through and the collection ends.
(A collection still holds the interpreter while it runs; ``main`` keeps full ones short.)
``tests/unit/relay/test_prefect_server.py`` shows both halves on plain SQLite.
Harmless on PostgreSQL (no such mutex). ``relay prefect-server`` (an operator's server) and
``relay.serve.prefect_server`` (``relay serve``, the tests, the benchmarks) start the server
through ``python -m relay.prefect_server server start ...``.

The same process also counts a run's silence from the server's own start, not from before a
restart (``relay/heartbeat_watch.py``): a restart used to mark every run it outlived Lost.
"""

from __future__ import annotations

import gc
import sys
import threading
from dataclasses import dataclass, field


@dataclass
class Collector:
    """The thread collecting in place of the automatic collector; ``stop()`` gives the
    collection back to Python (tests)."""

    every: float = 0.1
    started: int = 0  # collections begun
    collections: int = 0  # and ended
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Collector:
        gc.disable()
        self._thread = threading.Thread(target=self._run, name="relay-gc", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        gc.enable()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            first, second, third = gc.get_threshold()
            young, middle, old = gc.get_count()
            if young > first:  # Python's thresholds (not its rule on the oldest one's growth: main)
                self.started += 1
                gc.collect(2 if middle > second and old > third else 1 if middle > second else 0)
                self.collections += 1


def main() -> None:
    """``python -m relay.prefect_server ARGS``: the ``prefect ARGS`` command, collector moved.

    What the imports made (about 280,000 objects: modules, classes, the ORM) lives as long as
    the process, so it is frozen first (``gc.freeze``, as Python's documentation suggests for
    servers): a full collection then reads what the server made since, in well under a
    millisecond instead of ~160 ms holding the loop (Python's own collector avoids most full
    collections by a rule on the oldest generation's growth that Python does not expose)."""
    from prefect.cli import app
    from prefect.server.api import server  # noqa: F401  (its imports, before the freeze)

    from relay import heartbeat_watch

    heartbeat_watch.install()  # a restart does not count against the runs it did not hear
    gc.collect()
    gc.freeze()
    Collector().start()

    sys.argv = ["prefect", *sys.argv[1:]]
    sys.exit(app())


if __name__ == "__main__":
    main()
