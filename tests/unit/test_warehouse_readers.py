"""A reader asks, the fast lane's hold steps aside (tasks/warehouse.py: ``readers_waiting``,
``step_aside``), with real processes: a reader's marker is seen only while its process lives;
the hold takes the database back only when the readers are done (or says why it could not
before its ``until``); a waiting open is told what holds the database."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from tasks import dblock, warehouse


def _read_for(path, seconds, opened, wait_seconds=60.0):
    """A reader in its own process: opens read-only (asking, when it has to wait), reads,
    and keeps the database ``seconds``."""
    with warehouse.open_db(path, read_only=True, wait_seconds=wait_seconds) as con:
        con.execute("SELECT count(*) FROM raw.patients").fetchone()
        opened.set()
        time.sleep(seconds)


def _leave_a_marker(path):
    """A reader killed while it waited: its marker stays behind, nobody locks it any more."""
    dblock.ask(path)
    os._exit(0)


@pytest.fixture
def spawn():
    ctx = multiprocessing.get_context("spawn")
    started = []

    def start(target, *args):
        process = ctx.Process(target=target, args=args)
        process.start()
        started.append(process)
        return process

    yield ctx, start
    for process in started:
        if process.is_alive():
            process.terminate()
        process.join(30)


def test_a_marker_of_a_reader_that_is_gone_is_not_waited_for(tmp_path, spawn):
    ctx, start = spawn
    db = tmp_path / "c.duckdb"
    with warehouse.open_db(db):
        pass
    start(_leave_a_marker, db).join(60)
    left = list((tmp_path / "c.duckdb.readers").iterdir())
    assert len(left) == 1 and left[0].name.split("-")[0].isdigit()  # <pid>-<uuid>
    assert not warehouse.readers_waiting(db)
    assert list((tmp_path / "c.duckdb.readers").iterdir()) == []  # the stale one went


def test_a_held_database_lets_an_asking_reader_in_and_is_taken_back_after_it(tmp_path, spawn):
    ctx, start = spawn
    db = tmp_path / "c.duckdb"
    assert not warehouse.readers_waiting(db)  # no folder yet: nothing to ask about
    with warehouse.hold(db):
        warehouse.describe_hold(db, warehouse.FAST_LANE)
        opened = ctx.Event()
        reader = start(_read_for, db, 3.0, opened)
        deadline = time.monotonic() + 60
        while not warehouse.readers_waiting(db):  # it found the database held: it asks
            assert time.monotonic() < deadline and reader.is_alive()
            time.sleep(0.05)
        assert not opened.is_set()
        began = time.monotonic()
        assert warehouse.step_aside(db, until=time.monotonic() + 60) is None
        took = time.monotonic() - began
        assert opened.is_set(), "the reader got in while the hold stepped aside"
        assert took >= 2.5, f"taken back after {took:.1f} s, while the reader still read"
        assert not warehouse.readers_waiting(db)
        with warehouse.open_db(db) as con:  # held again: a cursor of the reopened connection
            con.execute("CREATE TABLE state.after_readers AS SELECT 1 AS x")
        reader.join(30)
        assert reader.exitcode == 0
    with warehouse.open_db(db, read_only=True) as con:
        assert con.execute("SELECT x FROM state.after_readers").fetchall() == [(1,)]


def test_the_hold_stays_seen_while_stepped_aside_and_gives_up_at_its_until(tmp_path, spawn):
    """A reader keeping the database past the cap: the hold waits on the lock, no longer than
    its ``until``, says why it could not take it back, and ends cleanly; in_use sees the hold
    (a live tick) throughout, so nothing takes it for a run that is gone."""
    ctx, start = spawn
    db = tmp_path / "c.duckdb"
    with warehouse.hold(db):
        opened = ctx.Event()
        start(_read_for, db, 8.0, opened)
        deadline = time.monotonic() + 60
        while not warehouse.readers_waiting(db):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        began = time.monotonic()
        why = warehouse.step_aside(db, until=time.monotonic() + 4, cap=1.0)
        took = time.monotonic() - began
        assert opened.is_set()
        assert why is not None and "next tick was due" in why
        assert 3.5 <= took < 10, took
        assert warehouse.in_use(db)
        with pytest.raises(RuntimeError, match="stepped aside"):
            with warehouse.open_db(db):
                pass
    with pytest.raises(warehouse.DatabaseBusy):  # the reader still reads
        with warehouse.hold(db, wait_seconds=0.3):
            pass
    with warehouse.hold(db, wait_seconds=60):  # the next tick opens as usual once it is done
        pass


def _busy(db, wait=0.3) -> str:
    code = (
        "from tasks import warehouse\n"
        f"with warehouse.open_db({str(db)!r}, read_only=True, wait_seconds={wait}): pass"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    return done.stderr.strip().splitlines()[-1]


def test_a_reader_that_waits_in_vain_is_told_what_holds_the_database(tmp_path):
    db = tmp_path / "c.duckdb"
    with warehouse.hold(db):
        said = _busy(db)
        assert f"in use by a tick (pid {os.getpid()}) (waited 0s), running its steps" in said
        warehouse.describe_hold(db, warehouse.FAST_LANE)
        said = _busy(db)
        assert "in use by a tick's fast lane" in said and "between its polls" in said
        assert "wait for it to finish" not in said
    assert not (tmp_path / "c.duckdb.lock").read_bytes()  # let go: no note left behind
    with warehouse.open_db(db, read_only=True):
        pass
