"""The fast lane steps aside for readers (issue 15: `relay sql` works while a tick holds the
database), with real processes: a tick's hold running the lane in its own process against the
sandbox Cliniko, and `relay sql`'s query from this one. The query gets in within its wait, the
lane opens the database again and polls on, and still welcomes a booking made after, once; a
stale marker of a reader that is gone does not make the lane step aside."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

from tasks import analyst, dblock, lane, warehouse
from tasks.config import load_clinic
from tasks.providers.outbox import list_messages
from tests.unit.lane import test_lane as _lane
from tests.unit.lane.test_lane import book, client_of, full_tick, outbox, welcomed

# the lane's tests' fixtures: the sandbox clinic, synced once, a copy of its database per test
sandbox, synced, config = _lane.sandbox, _lane.synced, _lane.config


def _tick_with_lane(clinic_yaml, base_url, api_key, root, stop, result):
    """A tick's run after its steps: the hold, and the lane in it as flows/lane.py runs it."""
    from tasks.cliniko.client import ClinikoClient, Retry

    config = load_clinic(Path(clinic_yaml))
    path = config.database_path
    providers = {"email": outbox(Path(root)), "sms": outbox(Path(root))}
    retry = Retry(attempts=2, initial_seconds=0.01, max_seconds=0.05)
    lines: list[str] = []
    with ClinikoClient(api_key, "t@example.com", base_url, retry=retry) as client:
        with warehouse.hold(path):
            counts = lane.run_lane(
                lambda: warehouse.open_db(path), client, config, providers,
                until=time.monotonic() + 240, log=lines.append,
                should_stop=lambda: "told to stop" if os.path.exists(stop) else None,
                hand_over=warehouse.HandOver(path),
            )  # fmt: skip
    Path(result).write_text(json.dumps({"counts": counts.as_dict(), "lines": lines}))


def wait_until(what, check, seconds=90.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.2)


def test_a_query_gets_in_while_the_lane_holds_the_database_and_the_lane_polls_on(
    sandbox, config, tmp_path
):
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, warehouse.open_db(config.database_path) as con:
        full_tick(con, client, config, providers)  # the trigger goes live; history is not sent
    assert welcomed(tmp_path) == []
    db = config.database_path
    stop, result = tmp_path / "stop", tmp_path / "result.json"
    ctx = multiprocessing.get_context("spawn")
    tick = ctx.Process(
        target=_tick_with_lane,
        args=(str(db.parent / "clinics" / "lane" / "clinic.yaml"), sandbox.base_url,
              sandbox.clinic.api_key, str(tmp_path), str(stop), str(result)),
    )  # fmt: skip
    tick.start()
    try:
        wait_until("the tick holds the database", lambda: warehouse.in_use(db))
        time.sleep(3)  # the lane polls (every second)
        began = time.monotonic()
        count = analyst.query(db, "SELECT count(*) FROM raw.patients", wait_seconds=20)
        assert count.rows[0][0] > 0
        assert time.monotonic() - began < 15, "the lane stepped aside between its polls"
        wait_until("the lane holds the database again", lambda: not _readable_at_once(db))

        time.sleep(1.1)  # bookings from the second after go-live
        booked = book(sandbox, 6)
        wait_until("the lane welcomed the bookings", lambda: welcomed(tmp_path))
        again = analyst.query(db, "SELECT count(*) FROM state.messages", wait_seconds=20)
        assert again.rows[0][0] >= 1
        stop.touch()
        tick.join(90)
        assert tick.exitcode == 0
    finally:
        if tick.is_alive():
            tick.terminate()
            tick.join(30)
    done = json.loads(result.read_text())
    counts, lines = done["counts"], done["lines"]
    assert counts["stopped"] == "told to stop" and counts["stepped_aside"] >= 2
    by_lane = welcomed(tmp_path)
    assert by_lane and set(by_lane) <= set(booked)
    assert counts["sent"] == len(by_lane) and counts["found"] >= 1
    assert any("stepped aside for readers" in line for line in lines), lines
    assert all("@" not in line for line in lines), "counts only, no addresses"
    keys = [m["send_key"] for m in list_messages(tmp_path / "outbox")]
    with warehouse.open_db(db, read_only=True) as con:
        rows = con.execute(
            "SELECT send_key, status FROM state.messages WHERE send_key IN (SELECT unnest(?))",
            [keys],
        ).fetchall()
    assert sorted(rows) == sorted((k, "sent") for k in keys)  # each key once, sent once
    assert not list((db.parent / f"{db.name}.readers").iterdir())  # each reader took its marker


def _readable_at_once(db) -> bool:
    try:
        with warehouse.open_db(db, read_only=True, wait_seconds=0):
            return True
    except warehouse.DatabaseBusy:
        return False


def _leave_a_marker(path):
    dblock.ask(Path(path))
    os._exit(0)  # killed as it waited: the marker stays, nobody locks it


def test_a_stale_marker_of_a_reader_that_is_gone_does_not_make_the_lane_step_aside(
    sandbox, config, tmp_path
):
    db = config.database_path
    ctx = multiprocessing.get_context("spawn")
    gone = ctx.Process(target=_leave_a_marker, args=(str(db),))
    gone.start()
    gone.join(60)
    assert len(list((db.parent / f"{db.name}.readers").iterdir())) == 1
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    lines: list[str] = []
    # The lane's own clock, moved only by its waits: four polls, each followed by a moment
    # between polls where a reader would be let in, however long a poll takes on a busy
    # machine (3.5 s of the real clock gave one poll in a CI run: the first one's catch-up)
    now = [time.monotonic()]

    def wait(seconds: float) -> None:
        now[0] += seconds

    with client_of(sandbox) as client, warehouse.hold(db):
        counts = lane.run_lane(
            lambda: warehouse.open_db(db), client, config, providers, until=now[0] + 3.5,
            log=lines.append, hand_over=warehouse.HandOver(db), clock=lambda: now[0], sleep=wait,
        )  # fmt: skip
    assert counts.stepped_aside == 0 and counts.polls >= 2, counts
    assert counts.stopped == "the next tick is due"
    assert not any("stepped aside" in line for line in lines)


def test_a_lane_given_a_connection_never_steps_aside(sandbox, config, tmp_path):
    """The lane's tests (and any caller) may still give it an open connection: it is used as
    is, never closed, and no reader is let in."""
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, warehouse.open_db(config.database_path) as con:
        counts = lane.run_lane(con, client, config, providers, until=time.monotonic() + 1.5)
        assert con.execute("SELECT 1").fetchone() == (1,)  # still open
    assert counts.stepped_aside == 0
