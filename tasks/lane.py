"""The fast lane: after its full pass the tick stays on, holding the clinic's database, and every
few seconds asks Cliniko only whether a booking came in; when one did, it runs the tick's own
code for it at once (sync of those resources, model build, planning, dispatch), so a welcome
or a late booking's reminder goes while the patient is still at the desk.

    poll (one request per watched resource, nothing written)
      -> changed? sync the booking's resources (tasks.cliniko.sync, kind 'partial')
                  -> tasks.models.runner.build -> tasks.triggers.plan -> tasks.due

A poll asks each watched resource (patients, individual appointments, and attendees when the
clinic runs classes) for the rows updated at or after its sync watermark's second, and compares
them with ``raw.*``: an idle poll finds the rows it already has. A catch-up's sync reads on
from the poll's pages (the first pages a sync from the watermark would read), so a booking costs
no request beyond its poll. Journeys, campaigns and
feedback wait for the next full tick; the send keys are the tick's, so a message the lane sent
is never sent again by a tick (the ledger's UNIQUE key and its ``sending`` rule: a kill
mid-lane leaves what a kill mid-dispatch leaves).

Every Cliniko request of the lane goes through a :class:`Budget`: at most
``fast_lane.requests_per_minute`` in any 60 seconds, counting the tick's own sync requests of
that minute (from ``state.sync_runs``). Plain functions, no Prefect: ``flows/lane.py`` wires it
into the tick (the stop signal, the providers, the logger).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson

from tasks import tick
from tasks.cliniko import resources as _resources
from tasks.cliniko.client import ClinikoClient, Pace, Page
from tasks.cliniko.resources import RESOURCES, Resource
from tasks.cliniko.sync import list_params, run_sync
from tasks.cliniko.writer import parse_records, watermark
from tasks.config import ClinicConfig
from tasks.due import send_due
from tasks.models import runner as models
from tasks.triggers import plan as planning
from tasks.warehouse import HandOver, data_out_of_errors, one

WINDOW = 60.0  # seconds: Cliniko's rate limit is per minute
# What a welcome or a late booking's reminder needs: a booking touches these.
WATCHED = ("patients", "individual_appointments")
CLASSES = ("attendees",)  # watched too when the clinic has group appointments
SYNCED = ("patients", "individual_appointments", "group_appointments", "attendees")
# Requests of one full tick's sync (one per path, when little changed): kept free in the
# budget, with one change's sync, when the interval is derived from it.
TICK_REQUESTS = sum(len(r.paths) for r in RESOURCES)
MIN_EVERY = 2.0


class LaneFailed(RuntimeError):
    """A step of the lane failed; the tick run fails saying why (counts and reasons only)."""


class Budget:
    """At most ``per_minute`` requests in any ``WINDOW`` seconds, as a Cliniko client's limiter
    (``acquire`` before each request; ``hold_until`` after a 429), chained to the client's own
    limiter of the key's rate. ``add`` counts requests made elsewhere (the tick's sync)."""

    def __init__(
        self,
        per_minute: int,
        inner: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_minute, self.inner = per_minute, inner
        # the client reads its window from here after a 429
        self.pace = getattr(inner, "pace", None) or Pace(per_minute, WINDOW)
        self._clock, self._sleep = clock, sleep
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.waited = 0.0

    def add(self, n: int, at: float | None = None) -> None:
        with self._lock:
            moment = self._clock() if at is None else at
            self._times.extend([moment] * n)
            self._times = deque(sorted(self._times))

    def wait_for(self, n: int) -> float:
        """Seconds until ``n`` more requests fit in the window (0: now)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            over = len(self._times) + n - self.per_minute
            if over <= 0 or not self._times:
                return 0.0
            return max(0.0, self._times[min(over, len(self._times)) - 1] + WINDOW - now)

    def acquire(self) -> float:
        waited = 0.0
        while (wait := self._take()) > 0:
            self._sleep(wait)
            waited += wait
        if self.inner is not None:
            waited += self.inner.acquire()
        self.waited += waited
        return waited

    def _take(self) -> float:
        """Take a place in the window now (0.0), or say how long until one is free: the check
        and the taking under one lock, as the sync asks for its first pages from threads."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            over = len(self._times) + 1 - self.per_minute
            if over <= 0 or not self._times:
                self._times.append(now)
                self._times = deque(sorted(self._times))
                return 0.0
            return max(1e-6, self._times[min(over, len(self._times)) - 1] + WINDOW - now)

    def hold_until(self, monotonic_deadline: float) -> None:
        if self.inner is not None:
            self.inner.hold_until(monotonic_deadline)

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - WINDOW:
            self._times.popleft()


def interval(per_minute: int, watched: int, every_seconds: float | None = None) -> float:
    """Seconds between polls: as configured, or what the budget allows idle, leaving room for
    a full tick's requests and one change's sync in the same minute."""
    if every_seconds is not None:
        return every_seconds
    spare = per_minute - TICK_REQUESTS - len(SYNCED)
    if spare < watched:
        return WINDOW  # a tiny budget: one poll a minute
    return max(MIN_EVERY, WINDOW * watched / spare)


def watched(con: duckdb.DuckDBPyConnection) -> tuple[Resource, ...]:
    """The resources a poll asks about: attendees too when the clinic runs classes."""
    classes = one(con, "SELECT count(*) > 0 FROM raw.group_appointments")[0]
    names = WATCHED + (CLASSES if classes else ())
    return tuple(_resources.get(n) for n in names)


def tick_requests(con: duckdb.DuckDBPyConnection, now: datetime) -> list[tuple[float, int]]:
    """(seconds ago, requests) of the syncs that finished in the last minute: the tick's own
    requests count against the lane's budget."""
    found = con.execute(
        "SELECT finished_at, summary FROM state.sync_runs WHERE finished_at > ?",
        [now - timedelta(seconds=WINDOW)],
    ).fetchall()
    out = []
    for finished, summary in found:
        detail = orjson.loads(summary) if isinstance(summary, str | bytes) else (summary or {})
        requests = sum(int(c.get("requests", 0)) for c in detail.values())
        out.append((max(0.0, (now - finished).total_seconds()), requests))
    return out


def poll(
    con: duckdb.DuckDBPyConnection,
    client: ClinikoClient,
    resources: tuple[Resource, ...],
    pages: dict[str, tuple[datetime | None, Page]] | None = None,
) -> dict[str, int]:
    """Rows Cliniko has that ``raw.*`` has not (new, or updated since), per watched resource:
    one request each, from the second of its watermark. Writes nothing. ``pages`` gets each
    path's (cursor, page): the first page a sync from that cursor would read, which the
    catch-up reads on from instead of asking for it again."""
    changed: dict[str, int] = {}
    for resource in resources:
        for path in resource.paths:
            mark = watermark(con, resource.name, path)
            page = client.get_page(path, resource.name, list_params(resource, mark))
            if pages is not None:
                pages[path] = (_floor_second(mark), page)
            batch = parse_records(resource, page.records)
            held = _held(con, resource, [row[0] for row in batch.rows])
            new = sum(1 for id_, updated, _ in batch.rows if held.get(id_) != updated)
            # more than a page since the watermark: at least that many are new to us
            new = max(new, (page.total_entries or 0) - len(page.records))
            if new:
                changed[resource.name] = changed.get(resource.name, 0) + new
    return changed


def _floor_second(moment: datetime | None) -> datetime | None:
    """The cursor a poll asked from: Cliniko's filter takes whole seconds (format_cursor)."""
    return moment.replace(microsecond=0) if moment is not None else None


def to_sync(
    con: duckdb.DuckDBPyConnection,
    polled: tuple[Resource, ...],
    pages: Mapping[str, tuple[datetime | None, Page]],
) -> tuple[Resource, ...]:
    """What a catch-up syncs: the polled resources (from the pages the poll has, no request
    unless there is more than a page), and group appointments only when a new or changed
    attendee is booked into one (a class place: its class's row changed too). An attendee of
    an individual appointment needs nothing more, so a booking costs no request beyond the poll."""
    chosen = list(polled)
    attendees = _resources.get("attendees")
    if attendees in polled and _class_places(con, attendees, pages):
        chosen.append(_resources.get("group_appointments"))
    return tuple(r for r in (_resources.get(n) for n in SYNCED) if r in chosen)


def _class_places(
    con: duckdb.DuckDBPyConnection,
    attendees: Resource,
    pages: Mapping[str, tuple[datetime | None, Page]],
) -> bool:
    """Whether the polled attendees include a new or changed one whose booking is not an
    individual appointment we hold (or one we cannot tell: then yes). A poll reads again the
    second of its watermark: a class place synced then, unchanged, needs nothing."""
    bookings: set[int] = set()
    for path in attendees.paths:
        records = pages[path][1].records if path in pages else ()
        batch = parse_records(attendees, [r for r in records if isinstance(r, dict)])
        kept = _held(con, attendees, [row[0] for row in batch.rows])
        same = {id_ for id_, updated, _ in batch.rows if id_ in kept and kept[id_] == updated}
        for record in records:
            if not isinstance(record, dict):
                return True
            if str(record.get("id", "")).isdigit() and int(record["id"]) in same:
                continue
            link = ((record.get("booking") or {}).get("links") or {}).get("self") or ""
            tail = str(link).rstrip("/").rsplit("/", 1)[-1]
            if not tail.isdigit():
                return True
            bookings.add(int(tail))
    if not bookings:
        return False
    individual = {
        int(record["id"])
        for path in _resources.get("individual_appointments").paths
        for record in (pages[path][1].records if path in pages else ())
        if isinstance(record, dict) and str(record.get("id", "")).isdigit()
    }
    unknown = sorted(bookings - individual)
    if not unknown:
        return False
    held = con.execute(
        "SELECT count(*) FROM raw.individual_appointments WHERE id IN (SELECT unnest(?))",
        [unknown],
    ).fetchone()
    return held is None or held[0] < len(unknown)


def _held(con: duckdb.DuckDBPyConnection, resource: Resource, ids: list[int]) -> dict:
    if not ids:
        return {}
    rows = con.execute(
        f"SELECT id, updated_at FROM {resource.table} WHERE id IN (SELECT unnest(?))", [ids]
    ).fetchall()
    return {id_: updated.astimezone(UTC) if updated else None for id_, updated in rows}


@dataclass
class LaneCounts:
    """What one lane did: counts only (the tick's result and summary show them)."""

    polls: int = 0
    found: int = 0  # polls that found a change
    rows_synced: int = 0
    planned: int = 0
    sent: int = 0
    requests: int = 0
    every_seconds: float = 0.0
    stepped_aside: int = 0  # times it let readers in (relay sql ...) between polls
    stopped: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def catch_up(
    con: duckdb.DuckDBPyConnection,
    client: ClinikoClient,
    config: ClinicConfig,
    providers: Mapping,
    resources: tuple[Resource, ...],
    pages: Mapping[str, tuple[datetime | None, Page]] | None = None,
    before_send: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> dict[str, int]:
    """The tick's steps for a booking: sync ``resources`` (read on from the poll's ``pages``),
    build, plan the triggers, send what is due (the tick's rules: holds, the gate). Counts;
    raises LaneFailed naming the step.

    ``before_send``: what else must be recorded before anything goes (flows/lane.py: the
    unsubscribe clicks a Prefect server holds as events; ``send_due`` records the inbox's)."""
    step = "sync"
    try:
        with data_out_of_errors():  # what LaneFailed says and chains: no value it read
            counts = run_sync(
                con,
                client,
                overlap=timedelta(minutes=config.sync.overlap_minutes),
                resources=resources,
                first_pages=dict(pages or {}),
                country=config.country,
            )
            step = "models"
            models.build(con, models.ListSettings.from_config(config))
            step = "plan"
            held = tick.held_sources(con, config)
            now = datetime.now(UTC)
            plan = planning.plan(con, config, now, held=tick.of_kind(held, "trigger"))
            step = "dispatch"
            planning.recheck(con, config, datetime.now(UTC), held=tick.of_kind(held, "trigger"))
            if before_send is not None:
                before_send(con)
            sent = send_due(con, config, providers, lambda: datetime.now(UTC), held)
    except Exception as exc:  # noqa: BLE001 - any failure stops the lane, named
        raise LaneFailed(f"fast lane: {step} failed ({str(exc)[:500]})") from exc
    return {
        "rows": sum(c.new + c.updated + c.removed for c in counts.values()),
        "planned": plan.totals.get("planned", 0),
        "sent": sent.counts.get("sent", 0),
    }


def run_lane(
    database: duckdb.DuckDBPyConnection
    | Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    client: ClinikoClient,
    config: ClinicConfig,
    providers: Mapping,
    *,
    until: float,
    should_stop: Callable[[], str | None] = lambda: None,
    log: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    hand_over: HandOver | None = None,
    before_send: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> LaneCounts:
    """Poll and catch up until the monotonic moment ``until`` or until ``should_stop`` gives a
    reason; raises LaneFailed at the first failure. The client's limiter becomes the lane's
    :class:`Budget` (the tick's requests of the last minute already in it).

    ``database`` is a connection, or what opens one (a cursor of the tick's hold). With one
    to open, and a ``hand_over``, a reader asking for the database between polls gets it:
    the lane closes its connection, the hold steps aside until the readers are done
    (tasks/warehouse.py ``step_aside``), and the lane opens it again and polls on, or stops
    saying why when it could not have it back before ``until``. ``before_send``: see
    ``catch_up``."""
    settings = config.fast_lane
    budget = Budget(settings.requests_per_minute, client.limiter, clock=clock, sleep=sleep)
    if isinstance(database, duckdb.DuckDBPyConnection):
        given = database
        database = lambda: contextlib.nullcontext(given)  # noqa: E731 - the caller's, kept open
        hand_over = None  # a connection given cannot be closed and opened again
    opened = contextlib.ExitStack()
    inner = client.limiter
    try:
        con = opened.enter_context(database())
        now = clock()
        for ago, n in tick_requests(con, datetime.now(UTC)):
            budget.add(n, at=now - ago)
        client.limiter = budget  # type: ignore[assignment]  # a limiter's interface: acquire, hold_until, pace
        polled = watched(con)
        counts = LaneCounts(every_seconds=interval(settings.requests_per_minute, len(polled),
                                                   settings.every_seconds))  # fmt: skip
        requests_before = client.stats.requests
        next_poll = clock()
        while True:
            if (why := _stop(clock, until, should_stop, budget, len(polled))) is not None:
                counts.stopped = why
                break
            if hand_over is not None and hand_over.asked():  # between polls: nothing half done
                opened.close()  # the lane's cursor first: the hold's connection closes next
                started = clock()
                back = hand_over.step_aside(until)
                counts.stepped_aside += 1
                log(f"fast lane: stepped aside for readers ({clock() - started:.1f} s)")
                if back is not None:
                    counts.stopped = back
                    break
                con = opened.enter_context(database())
                continue
            next_poll = max(next_poll, clock() + budget.wait_for(len(polled)))  # room in the budget
            if clock() < next_poll:
                sleep(min(1.0, next_poll - clock()))
                continue
            next_poll = clock() + counts.every_seconds
            started = clock()
            pages: dict[str, tuple[datetime | None, Page]] = {}
            try:
                with data_out_of_errors():  # what LaneFailed says and chains: no value it read
                    changed = poll(con, client, polled, pages)
                    synced = to_sync(con, polled, pages) if changed else ()
            except Exception as exc:  # noqa: BLE001 - a failed poll stops the lane, named
                raise LaneFailed(f"fast lane: poll failed ({str(exc)[:500]})") from exc
            counts.polls += 1
            if changed:
                counts.found += 1
                done = catch_up(con, client, config, providers, synced, pages, before_send)
                counts.rows_synced += done["rows"]
                counts.planned += done["planned"]
                counts.sent += done["sent"]
                log(
                    "fast lane: "
                    + ", ".join(f"{name} {n}" for name, n in changed.items())
                    + f" changed; {done['rows']} rows synced, {done['planned']} planned, "
                    f"{done['sent']} sent ({clock() - started:.1f} s)"
                )
    finally:
        client.limiter = inner  # the client is the caller's again
        opened.close()
    counts.requests = client.stats.requests - requests_before
    aside = f", stepped aside for readers {counts.stepped_aside}x" if counts.stepped_aside else ""
    log(
        f"fast lane: {counts.polls} polls, {counts.found} found changes, {counts.sent} messages "
        f"sent, {counts.requests} Cliniko requests (every {counts.every_seconds:.1f} s, "
        f"{settings.requests_per_minute}/min with the tick's){aside}; stopped: {counts.stopped}"
    )
    return counts


def _stop(
    clock: Callable[[], float],
    until: float,
    should_stop: Callable[[], str | None],
    budget: Budget,
    polled: int,
) -> str | None:
    """Why the lane stops now: the run is cancelled, or the next tick is (nearly) due; a poll
    the budget would put off past ``until`` is not waited for."""
    if (why := should_stop()) is not None:
        return why
    if clock() >= until:
        return "the next tick is due"
    if clock() + budget.wait_for(polled) >= until:
        return "the next tick is due before the request budget allows another poll"
    return None
