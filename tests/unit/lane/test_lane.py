"""The fast lane's logic (tasks/lane.py) without Prefect: a sandbox Cliniko over real HTTP whose
clock is now, a DuckDB file in a temp folder, the local outbox. A booking made in the sandbox is
welcomed by the lane; the full pass after it (the tick's own code) does not send it again; an
idle poll is one request per watched resource and writes nothing; the budget counts the tick's
requests; the lane stops when told and fails saying which step failed."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime

import pytest
import yaml

from tasks import lane, tick
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.config import load_clinic
from tasks.due import send_due
from tasks.models import runner as models
from tasks.providers.outbox import OutboxProvider, list_messages
from tasks.triggers import plan as planning
from tasks.warehouse import open_db

WELCOME = {
    "name": "welcome",
    "enabled": True,
    "event": "appointment_booked",
    "timing": "immediately",
    "channel": "email",
    "template": "welcome",
    "purpose": "transactional",
}


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.cliniko import SandboxClinic, SandboxServer

    clinic = SandboxClinic.generate(seed=16, patients=150, start=datetime.now(UTC))
    with SandboxServer(clinic, rate_limit=None) as server:  # no clock: only our bookings
        yield server


def write_config(root):
    folder = root / "clinics" / "lane"
    folder.mkdir(parents=True)
    settings = {
        "clinic": "lane",
        "name": "Lane Physio",
        "database": str(root / "lane.duckdb"),
        # a fresh database's first sync uses many requests: room for the lane beside it
        "fast_lane": {"enabled": True, "every_seconds": 1, "requests_per_minute": 200},
        "triggers": [WELCOME],
    }
    (folder / "clinic.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return load_clinic(folder / "clinic.yaml")


@pytest.fixture(scope="module")
def synced(sandbox, tmp_path_factory):
    """The sandbox clinic synced and its models built once for the module (the slow part of
    each test's set-up); each test starts from a copy of that database file."""
    template = write_config(tmp_path_factory.mktemp("template"))
    with client_of(sandbox) as client, open_db(template.database_path) as con:
        extract.run_sync(con, client)
        models.build(con, models.ListSettings.from_config(template))
    return template.database_path


@pytest.fixture
def config(tmp_path, synced):
    config = write_config(tmp_path)
    shutil.copyfile(synced, config.database_path)  # closed above: one file, no WAL
    return config


def client_of(sandbox) -> ClinikoClient:
    retry = Retry(attempts=2, initial_seconds=0.01, max_seconds=0.05)
    return ClinikoClient(sandbox.clinic.api_key, "t@example.com", sandbox.base_url, retry=retry)


def outbox(tmp_path) -> OutboxProvider:
    return OutboxProvider(tmp_path / "outbox", email_from="Lane <l@lane.example>", sms_from="L")


def full_tick(con, client, config, providers) -> dict:
    """The tick's steps in order, as plain functions (what the lane must not undo)."""
    extract.run_sync(con, client)
    models.build(con, models.ListSettings.from_config(config))
    held = tick.held_sources(con, config)
    planning.plan(con, config, datetime.now(UTC), held=tick.of_kind(held, "trigger"))
    return send_due(con, config, providers, lambda: datetime.now(UTC), held).counts


def book(sandbox, n: int) -> list[int]:
    """``n`` appointments booked in the sandbox now, as the front desk would."""
    from sandbox.cliniko.clinic import _Changes

    clinic = sandbox.clinic
    table = clinic.tables["individual_appointments"]
    with clinic.lock:
        before = set(table.rows)
        changes = _Changes(clinic)
        for _ in range(n):
            changes.bookings(int(time.time()))
        return sorted(set(table.rows) - before)


def welcomed(tmp_path) -> list[int]:
    """Appointment ids the outbox holds a welcome for."""
    return sorted(int(m["send_key"].rsplit(":", 1)[1]) for m in list_messages(tmp_path / "outbox"))


def test_a_booking_is_welcomed_by_the_lane_and_the_next_tick_does_not_send_it_again(
    sandbox, config, tmp_path
):
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        full_tick(con, client, config, providers)  # the trigger goes live; history is not sent
        assert welcomed(tmp_path) == []
        time.sleep(1.1)  # bookings from the second after go-live
        booked = book(sandbox, 8)
        lines: list[str] = []

        def sent_one() -> str | None:
            return "a welcome went" if welcomed(tmp_path) else None

        counts = lane.run_lane(
            con, client, config, providers,
            until=time.monotonic() + 60, should_stop=sent_one, log=lines.append,
        )  # fmt: skip
        by_lane = welcomed(tmp_path)
        assert by_lane and set(by_lane) <= set(booked), "the lane welcomed the new bookings"
        assert counts.stopped == "a welcome went" and counts.found >= 1
        assert counts.sent == len(by_lane)
        assert any("changed;" in line for line in lines), lines
        assert "polls" in lines[-1] and "stopped: a welcome went" in lines[-1]
        assert all("@" not in line for line in lines), "counts only, no addresses"

        again = full_tick(con, client, config, providers)
        assert welcomed(tmp_path) == sorted(set(welcomed(tmp_path)))  # one file per send key
        assert set(by_lane) <= set(welcomed(tmp_path))
        keys = [m["send_key"] for m in list_messages(tmp_path / "outbox")]
        rows = con.execute(
            "SELECT send_key, status FROM state.messages WHERE send_key IN (SELECT unnest(?))",
            [keys],
        ).fetchall()
        assert sorted(rows) == sorted((k, "sent") for k in keys)  # each key once, sent once
        assert len(keys) == counts.sent + again.get("sent", 0)


def test_what_else_must_be_recorded_is_recorded_before_the_catch_up_sends(
    sandbox, config, tmp_path
):
    """flows/lane.py records the unsubscribe clicks a Prefect server holds as events there,
    so a click is in before the lane's dispatch decides whom marketing may reach."""
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        full_tick(con, client, config, providers)
        time.sleep(1.1)
        booked = book(sandbox, 6)  # some patients have no email on file
        seen: list[list[int]] = []

        def before_send(given) -> None:
            assert given is con
            seen.append(welcomed(tmp_path))

        pages: dict = {}
        watched = lane.watched(con)
        assert lane.poll(con, client, watched, pages)
        synced = lane.to_sync(con, watched, pages)
        done = lane.catch_up(con, client, config, providers, synced, pages, before_send)
        assert done["sent"] >= 1 and set(welcomed(tmp_path)) <= set(booked)
        assert seen == [[]], "called once, before the catch-up's first message went"


def written(con) -> list:
    """What a sync writes: watermarks, run records, raw rows."""
    return [
        con.execute("SELECT count(*), max(updated_at) FROM state.sync_watermarks").fetchone(),
        con.execute("SELECT count(*) FROM state.sync_runs").fetchone(),
        con.execute("SELECT count(*), max(synced_at) FROM raw.individual_appointments").fetchone(),
        con.execute("SELECT count(*), max(synced_at) FROM raw.patients").fetchone(),
    ]


def test_an_idle_poll_is_one_request_per_watched_resource_and_writes_nothing(
    sandbox, config, tmp_path
):
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        full_tick(con, client, config, providers)
        state = written(con)
        watched = lane.watched(con)
        before = sandbox.stats.requests
        assert lane.poll(con, client, watched) == {}
        assert sandbox.stats.requests - before == sum(len(r.paths) for r in watched)
        assert {r.name for r in watched} >= {"patients", "individual_appointments"}
        assert written(con) == state
        # a booking in the very second of the watermark is still seen
        booked = book(sandbox, 1)
        assert lane.poll(con, client, watched).get("individual_appointments") == len(booked)


def test_a_bookings_catch_up_asks_cliniko_nothing_beyond_the_poll(sandbox, config, tmp_path):
    """The catch-up reads on from the poll's pages: a booking costs its poll and nothing more
    (re-asking every synced resource's first page, 4+ requests a booking, starved the lane's
    budget when bookings came every few seconds); a class place also syncs its class."""
    from sandbox.cliniko.clinic import _Changes

    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        full_tick(con, client, config, providers)
        watched = lane.watched(con)
        assert "attendees" in {r.name for r in watched}, "the clinic runs classes"
        time.sleep(1.1)
        booked = book(sandbox, 1)
        pages: dict = {}
        changed = lane.poll(con, client, watched, pages)
        assert changed.get("individual_appointments") == 1
        synced = lane.to_sync(con, watched, pages)
        assert "group_appointments" not in {r.name for r in synced}, "no class place booked"
        before = sandbox.stats.requests
        lane.catch_up(con, client, config, providers, synced, pages)
        assert sandbox.stats.requests == before, "no request beyond the poll"
        held = con.execute(
            "SELECT count(*) FROM raw.individual_appointments WHERE id = ?", booked
        ).fetchone()
        assert held == (1,), "the polled page was written"
        assert lane.poll(con, client, watched) == {}, "and its watermark moved: nothing new"

        with sandbox.clinic.lock:
            assert _Changes(sandbox.clinic).class_bookings(int(time.time())) == 1
        pages = {}
        assert lane.poll(con, client, watched, pages).get("attendees") == 1
        synced = lane.to_sync(con, watched, pages)
        assert "group_appointments" in {r.name for r in synced}, "a class place: its class too"


def test_the_budget_holds_when_threads_ask_at_once():
    """The sync asks for its first pages from threads (tasks/cliniko/sync.py, Sync.open): the
    budget's check and its taking are one step, or threads that all saw room would all go. (A
    slow clock widens the gap between them, as a loaded machine does.)"""
    import threading

    class Full(Exception):
        pass

    def slow_clock() -> float:
        time.sleep(0.002)
        return 1000.0

    def sleep(_seconds: float) -> None:
        raise Full  # a thread told to wait: the window is full for it

    budget = lane.Budget(5, clock=slow_clock, sleep=sleep)
    went: list[int] = []

    def ask(n: int) -> None:
        try:
            budget.acquire()
            went.append(n)
        except Full:
            pass

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(went) == 5


def test_the_budget_counts_the_ticks_requests_and_never_passes_its_limit_in_a_minute():
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = lane.Budget(20, clock=lambda: now[0], sleep=sleep)
    budget.add(13, at=990.0)  # the tick's sync, ten seconds ago
    times = []
    for _ in range(30):
        budget.acquire()
        times.append(now[0])
        now[0] += 0.5
    assert slept, "the 8th request waited for the tick's requests to leave the window"
    moments = [990.0] * 13 + times
    for start in moments:
        assert sum(1 for t in moments if start <= t < start + 60) <= 20


def test_the_interval_follows_from_the_budget_unless_given():
    assert lane.interval(50, 2) < lane.interval(50, 3) <= 10
    assert lane.interval(50, 2, every_seconds=7) == 7
    assert lane.interval(15, 2) == 60  # no room beside a tick: once a minute
    idle = 60 / lane.interval(50, 3) * 3 + lane.TICK_REQUESTS
    assert idle <= 50, "idle polls and a tick's requests fit in the budget"


def test_the_lane_stops_when_the_next_tick_is_due_or_when_told(sandbox, config, tmp_path):
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        extract.run_sync(con, client)  # the copy catches up with the module's earlier bookings
        due = lane.run_lane(con, client, config, providers, until=time.monotonic())
        assert (due.polls, due.stopped) == (0, "the next tick is due")
        told = lane.run_lane(
            con, client, config, providers,
            until=time.monotonic() + 60, should_stop=lambda: "the run was cancelled",
        )  # fmt: skip
        assert (told.polls, told.stopped) == (0, "the run was cancelled")


def test_a_failure_stops_the_lane_naming_the_step(sandbox, config, tmp_path):
    from sandbox.cliniko.controls import Faults

    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        extract.run_sync(con, client)
        sandbox.faults = Faults(error_rate=1.0)
        try:
            with pytest.raises(lane.LaneFailed, match="fast lane: poll failed") as failed:
                lane.run_lane(con, client, config, providers, until=time.monotonic() + 30)
            assert "Cliniko" in str(failed.value)
        finally:
            sandbox.faults = None


def test_a_failure_about_data_names_the_step_without_the_value(
    sandbox, config, tmp_path, monkeypatch
):
    """LaneFailed reaches Prefect (the lane's task): a DuckDB error about data it wraps (here the
    build, made to read a phone number as a date) says its kind, not the value, in its message
    and in the traceback it chains."""
    import traceback

    def build(con, settings):
        con.execute("SELECT ?::DATE", ["0412 345 678"])

    monkeypatch.setattr(lane.models, "build", build)
    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        with pytest.raises(lane.LaneFailed, match=r"models failed \(Conversion Error") as failed:
            lane.catch_up(con, client, config, providers, ())
    shown = "".join(traceback.format_exception(failed.value))
    assert "invalid date field format" in shown and "0412" not in shown


def test_a_class_place_read_again_in_the_watermarks_second_brings_no_class_list(
    sandbox, config, tmp_path
):
    """A poll reads its watermark's second again: a class place the last sync wrote in that
    second, unchanged, made the catch-up ask for the class list too (a request more a booking;
    the catch-up test above failed on it when the tick's last second held a class place)."""
    from sandbox.cliniko.store import dump, fmt_ts

    providers = {"email": outbox(tmp_path), "sms": outbox(tmp_path)}
    with client_of(sandbox) as client, open_db(config.database_path) as con:
        full_tick(con, client, config, providers)
        watched = lane.watched(con)
        time.sleep(1.1)
        clinic, table = sandbox.clinic, sandbox.clinic.tables["attendees"]
        with clinic.lock:  # the front desk edits a class place: it is the newest attendee
            classes = clinic.tables["group_appointments"].rows
            place = next(
                i
                for i in table.rows
                if int(table.record(i)["booking"]["links"]["self"].rsplit("/", 1)[-1]) in classes
            )
            rec = table.record(place)
            rec["updated_at"] = fmt_ts(int(time.time()))
            table.put(rec, body=dump(rec))
        pages: dict = {}
        assert lane.poll(con, client, watched, pages).get("attendees") == 1
        synced = lane.to_sync(con, watched, pages)
        assert "group_appointments" in {r.name for r in synced}, "a changed class place"
        lane.catch_up(con, client, config, providers, synced, pages)
        pages = {}
        assert lane.poll(con, client, watched, pages) == {}, "the same second, read again"
        synced = lane.to_sync(con, watched, pages)
        assert "group_appointments" not in {r.name for r in synced}, "unchanged: no class list"
