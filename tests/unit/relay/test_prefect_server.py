"""relay/prefect_server.py: why the Prefect server runs with the cycle collector on a thread of
its own, on plain SQLite. A cursor left by a failed write, freed by the collector while its
connection waits for the write lock, blocks the thread that frees it until that wait times out:
when that thread is the one that would commit (the server's event loop), the waiting write fails
(here) or the server wedges (there). Freed by the collector's thread instead, it blocks only that
thread, the commit goes through and so does the waiting write."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time

import pytest

from relay.prefect_server import Collector

WAIT_MS = 4000  # the waiting write's busy_timeout (Prefect's is 60 s)


def _left_cursor_and_a_waiting_write(path) -> tuple[sqlite3.Connection, threading.Thread, dict]:
    """Connection ``holder`` holds the write lock; connection ``waiter`` has a cursor whose write
    failed on it, in a reference cycle, and a write of its own waiting for the lock (in a thread,
    as aiosqlite runs each connection). Returns the holder, the waiting thread, its outcome."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (x)")
    setup.commit()
    setup.close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    waiter = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    waiter.execute("PRAGMA busy_timeout = 10")
    cursor = waiter.cursor()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cursor.execute("INSERT INTO t VALUES (2)")
    cycle: list = [cursor]
    cycle.append(cycle)
    del cursor, cycle
    waiter.execute(f"PRAGMA busy_timeout = {WAIT_MS}")
    outcome: dict = {}

    def write() -> None:
        try:
            waiter.execute("INSERT INTO t VALUES (3)")
            outcome["write"] = "done"
        except sqlite3.OperationalError as exc:
            outcome["write"] = str(exc)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.5)  # the write is now waiting for the lock (it takes microseconds to get there)
    return holder, thread, outcome


@pytest.fixture
def collection_by_hand():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_the_collector_on_the_committing_thread_fails_the_waiting_write(
    tmp_path, collection_by_hand
):
    holder, thread, outcome = _left_cursor_and_a_waiting_write(tmp_path / "t.db")
    gc.collect()  # what the server's event loop did: here it waits until the write gives up
    holder.execute("COMMIT")
    thread.join()
    assert outcome["write"] == "database is locked"


def test_the_collectors_own_thread_lets_the_commit_and_the_write_through(
    tmp_path, collection_by_hand
):
    holder, thread, outcome = _left_cursor_and_a_waiting_write(tmp_path / "t.db")
    collector = Collector(every=0.05).start()
    try:
        junk = [[] for _ in range(2 * gc.get_threshold()[0])]  # past the collector's threshold
        while not collector.started and thread.is_alive():
            time.sleep(0.01)
        time.sleep(0.2)  # the collection now waits for the waiting write's connection
        holder.execute("COMMIT")  # and this thread is free to commit
        thread.join()
        del junk
    finally:
        collector.stop()
    assert outcome["write"] == "done"
    assert collector.collections >= 1
    assert gc.isenabled()  # stop() gives collection back to Python
