"""The lane's stop signal (flows/lane.py ``Watch``): a lane whose starter is gone stops at its
next look, without asking the server (which may be gone too)."""

from __future__ import annotations

import os
from pathlib import Path

from flows import lane


def test_the_lane_stops_when_the_process_that_started_its_run_is_gone(monkeypatch):
    watch = lane.Watch(
        "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001"
    )
    assert watch() is None  # its parent alive, and too soon to ask the server
    other = os.getppid() + 1
    monkeypatch.setattr(lane.os, "getppid", lambda: other)  # re-parented
    assert watch() == "the process that started this run is gone"


def test_the_lane_ends_its_run_before_a_runner_can_see_the_next_tick():
    """A Runner or worker proposes a run Pending up to its prefetch (10 s) before it is due;
    finding the lane's run still holding the slot puts it back for 30 s. The lane stops that
    long and more before the next tick."""
    from datetime import timedelta

    from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS, temporary_settings

    assert lane.margin() > timedelta(seconds=10), "a Runner's prefetch and the run's end"
    with temporary_settings({PREFECT_WORKER_PREFETCH_SECONDS: 30}):
        assert lane.margin() > timedelta(seconds=30), "a worker asking further ahead"


def test_the_lane_says_it_is_in_its_lane_and_stops_when_its_worker_is_stopping(
    tmp_path, monkeypatch
):
    """relay worker names a stop file (relay/worker.py): the lane marks `<file>.lane` as it
    starts, and stops at its next look once the worker, stopping, has made the file."""
    stop = tmp_path / "run"
    monkeypatch.setenv(lane.WORKER_STOP, str(stop))
    watch = lane.Watch(
        "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001"
    )
    assert (tmp_path / "run.lane").exists()
    assert watch() is None
    stop.touch()
    assert watch() == "its worker is stopping"


def test_the_lane_stops_when_clinic_yaml_says_something_else_than_its_tick_read(tmp_path):
    """An operator who turns a trigger off (or fixes a sender) in clinic.yaml while the tick's
    run is in its lane: the lane sent by what the tick had read, new bookings' welcomes too,
    until the next tick, up to a tick interval later. It stops at its next look instead (the
    next tick reads the file); saving the file unchanged does not stop it."""
    from tasks.config import load_clinic

    demo = (Path(__file__).parents[3] / "clinics" / "demo" / "clinic.yaml").read_text()
    path = tmp_path / "demo" / "clinic.yaml"
    path.parent.mkdir()
    path.write_text(demo)
    watch = lane.Watch(
        "00000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-000000000001",
        config=load_clinic(path),
    )
    assert watch() is None
    os.utime(path, ns=(0, 0))  # saved again as it was
    assert watch() is None
    turned_off = demo.replace(
        "(once per invoice)\n    enabled: true", "(once per invoice)\n    enabled: false"
    )
    assert turned_off != demo
    path.write_text(turned_off)
    assert watch() == lane.CONFIG_CHANGED


def test_the_lane_stops_when_clinic_yaml_is_broken_or_gone(tmp_path):
    from tasks.config import load_clinic

    path = tmp_path / "demo" / "clinic.yaml"
    path.parent.mkdir()
    path.write_text("clinic: demo\nname: Demo\n")
    config = load_clinic(path)
    watch = lane.Watch("00000000-0000-0000-0000-000000000000", "1", config=config)
    path.write_text("clinic: demo\nname: Demo\nsync: {overlap_minutes: yes}\n")
    assert watch() == lane.CONFIG_CHANGED
    path.unlink()
    again = lane.Watch("00000000-0000-0000-0000-000000000000", "1", config=config)
    assert again() == lane.CONFIG_CHANGED


def test_the_lane_stops_when_the_full_syncs_data_turns_stale(tmp_path):
    """The breaker's rule (tasks/tick.py) while the lane runs: with ticks further apart than
    sync.stale_after_minutes, the lane planned and sent on data the last full sync read longer
    ago than that (its partial syncs read only the watched resources: an invoice deleted since
    still got its thank-you). It stops once the data turns stale; the next tick syncs it."""
    from datetime import UTC, datetime, timedelta

    from tasks.config import load_clinic
    from tasks.warehouse import open_db

    path = tmp_path / "demo" / "clinic.yaml"
    path.parent.mkdir()
    path.write_text(
        f"clinic: demo\nname: Demo\ndatabase: {tmp_path / 'demo.duckdb'}\n"
        "sync: {stale_after_minutes: 20}\n"
    )
    config = load_clinic(path)
    now = datetime.now(UTC)
    with open_db(config.database_path) as con:
        con.execute(
            "INSERT INTO state.sync_runs (run_id, kind, started_at, status) VALUES "
            "('full', 'incremental', ?, 'completed'), ('lane', 'partial', ?, 'completed')",
            [now - timedelta(minutes=25), now],
        )
    stale_at = lane.stale_at(config)
    assert stale_at is not None
    assert abs(stale_at - (now - timedelta(minutes=5))) < timedelta(seconds=1)
    watch = lane.Watch("00000000-0000-0000-0000-000000000000", "1", stale_at=stale_at)
    assert watch() == lane.STALE
    fresh = lane.Watch("00000000-0000-0000-0000-000000000000", "1", stale_at=now + timedelta(1))
    assert fresh() is None
