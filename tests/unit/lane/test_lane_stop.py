"""The lane's stop signal (flows/lane.py ``Watch``): a lane whose starter is gone stops at its
next look, without asking the server (which may be gone too)."""

from __future__ import annotations

import os

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
