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
