"""Incremental sync of Cliniko into ``raw.*``: one paging mechanism and one cursor for every
resource in ``tasks.cliniko.resources``, resumable after a kill at any moment.

How a path is read (cliniko-api.md §5): ``sort=updated_at,id&q[]=updated_at:>=<cursor>`` plus
the resource's hidden-row filters (the ``id`` tie-break: see ``SORT``). After each page the cursor
moves to the page's largest ``updated_at`` and page 1 is asked again, keyset-style, so a row
updated mid-run (which jumps to the end of the order) can never shift an unread row onto a page
already read. When a whole page shares the cursor's second (a bulk edit), the second is walked
from its start by ``id`` (``SECOND_SORT``): page 1 of that second after the largest id read
(``updated_at:>=S&updated_at:<S+1s&id:>N``), never by offset (``links.next``): a row of the
second edited meanwhile leaves it and would shift an unread one onto a read page. A run starts
at the watermark minus the overlap; rows seen twice (same ``updated_at`` and payload) are left.

Pages are parsed and written by ``tasks.cliniko.writer`` (rows, quarantine and the watermark in
one transaction, a few pages per commit). A reconciliation is the same sweep from the beginning,
and then marks rows Cliniko no longer returns as removed (hard deletes); rows are never deleted.

Before anything is written, the first page of every path is fetched (those requests are needed
anyway), so a bad key or a missing permission fails the run with nothing half-written.

Plain functions, no Prefect: ``run_sync`` is the one run path (its run record in
``state.sync_runs``); ``flows/sync.py`` passes it a ``sweep`` that runs the same ``Sync`` methods
as Prefect tasks. ``python -m tasks.cliniko.sync`` runs a sync without Prefect (tests kill it
with -9; the benchmark measures it).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson

from tasks.cliniko import resources as _resources
from tasks.cliniko.client import ClinikoClient, Pace, Page
from tasks.cliniko.resources import RESOURCES, Resource
from tasks.cliniko.writer import Batch, ResourceWriter, mark_removed, parse_records, watermark
from tasks.peak_memory import peak_rss_mb
from tasks.warehouse import duckdb_message, one, open_db

# --- Reading: the one paging mechanism ----------------------------------------------------------


def format_cursor(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Cliniko orders rows that tie on every sort field however it likes, and may order them
# differently on the next request: ``id`` after ``updated_at`` makes the order total. Within one
# second (a bulk edit gives thousands of rows one updated_at) ``id`` alone: Cliniko shows
# updated_at to the second but may sort on the finer time it keeps (Rails on Postgres: micro-
# seconds), so by ``updated_at,id`` a second's rows would come in that hidden order, not by id.
SORT, SECOND_SORT = "updated_at,id", "id"


def list_params(
    resource: Resource, cursor: datetime | None, after_id: int | None = None
) -> list[tuple[str, str]]:
    """The list query from ``cursor`` on; with ``after_id``, only the rest of the cursor's own
    second: its rows of a larger id, by id (the walk through a second's rows, see the module doc)."""
    params = [("sort", SORT if after_id is None else SECOND_SORT)]
    params += [("q[]", f"{hidden}:*") for hidden in resource.include_hidden]
    if cursor is not None:
        params.append(("q[]", f"updated_at:>={format_cursor(cursor)}"))
        if after_id is not None:
            second_after = cursor.replace(microsecond=0) + timedelta(seconds=1)
            params.append(("q[]", f"updated_at:<{format_cursor(second_after)}"))
            params.append(("q[]", f"id:>{after_id}"))
    return params


@dataclass
class ResourceCounts:
    """What a run did for one resource: counts only, safe to log, return and publish."""

    resource: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    removed: int = 0
    pages: int = 0
    requests: int = 0
    rate_limited: int = 0
    seconds: float = 0.0
    expected: int = 0  # rows Cliniko announced (total_entries of each path's first page)
    watermark: str | None = None

    @property
    def rows(self) -> int:
        return self.new + self.updated + self.unchanged + self.quarantined


ProgressCallback = Callable[[ResourceCounts], None]


class Sync:
    """One sync run over every resource: ``open()`` first (fails before any write), then
    ``sync_resource()`` for each, in ``RESOURCES`` order (dimensions before facts), then
    ``close()``. ``run()`` does all three.

    Reading and writing overlap: after ``open()`` one reader thread walks every path in order,
    handing parsed pages to the writer (this thread) up to ``READ_AHEAD`` pages ahead, so requests
    keep flowing at the paced rate through commits and from one resource to the next.

    ``full=True`` reads every path from the beginning and then marks rows Cliniko no longer returns
    as removed: the periodic reconciliation. (A plain class, not a dataclass, so Prefect does not
    walk its pages when it is passed to a task.)
    """

    READ_AHEAD = 50  # pages (~8 MB)

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        client: ClinikoClient,
        *,
        overlap: timedelta = timedelta(minutes=5),
        full: bool = False,
        on_page: ProgressCallback | None = None,
        resources: tuple[Resource, ...] = RESOURCES,
        first_pages: dict[str, tuple[datetime | None, Page]] | None = None,
        country: str | None = None,
    ) -> None:
        self.con, self.client = con, client
        self.country = country  # the clinic's: patients' mobile numbers read as written
        self.overlap, self.full, self.on_page = overlap, full, on_page
        self.resources = resources
        self.counts = {r.name: ResourceCounts(r.name) for r in resources}
        # path -> (cursor, page 1 from that cursor) already asked for (the fast lane's poll)
        self._given = dict(first_pages or {})
        self._first: dict[str, tuple[datetime | None, Page]] = {}
        self._pages: queue.Queue = queue.Queue(maxsize=self.READ_AHEAD)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._counts_lock = threading.Lock()

    def open(self) -> dict[str, ResourceCounts]:
        """Ask for the first page of every path before writing anything, then start reading.

        The first pages are asked for at once, as many at a time as the key's limiter lets be on
        their way (``client.concurrency``; the pacing holds, see ``RateLimiter``): an idle sync
        is these requests and nothing else, so it waits for a few round trips instead of one per
        path (13). A failure is raised for the first failing path in ``RESOURCES`` order.
        A path whose first page was given (``first_pages``) is not asked for again."""
        for resource in self.resources:
            for path in resource.paths:
                if path in self._given:
                    cursor, page = self._given[path]
                    self._first[path] = (cursor, page)
                    self.counts[resource.name].expected += page.total_entries or len(page.records)
        asks = [
            (resource, path, self._start_cursor(resource, path))
            for resource in self.resources
            for path in resource.paths
            if path not in self._given
        ]

        failed = threading.Event()  # a refusal (bad key, permission): ask for nothing more

        def first(ask: tuple[Resource, str, datetime | None]) -> tuple[Page, float] | None:
            if failed.is_set():
                return None
            resource, path, cursor = ask
            started = time.perf_counter()
            counts = self.counts[resource.name]
            try:
                page = self._request(counts, path, resource.name, list_params(resource, cursor))
            except BaseException:
                failed.set()
                raise
            return page, time.perf_counter() - started

        workers = max(1, min(self.client.concurrency, len(asks)))
        with ThreadPoolExecutor(workers, thread_name_prefix="cliniko-first") as pool:
            futures = [pool.submit(first, ask) for ask in asks]
        for future in futures:  # the first failure in RESOURCES order is the one raised
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        pages = [future.result() for future in futures]
        for (resource, path, cursor), got in zip(asks, pages, strict=True):
            assert got is not None  # skipped only after a failure, raised above
            page, seconds = got
            counts = self.counts[resource.name]
            counts.seconds += seconds
            self._first[path] = (cursor, page)
            counts.expected += page.total_entries or len(page.records)
        self._reader = threading.Thread(target=self._read_all, name="cliniko-reader", daemon=True)
        self._reader.start()
        return self.counts

    def sync_resource(self, name: str) -> ResourceCounts:
        resource = _resources.get(name)
        counts = self.counts[name]
        started = time.perf_counter()
        seen: set[int] = set()
        writer = ResourceWriter(self.con, resource, country=self.country)
        for path in resource.paths:
            while (batch := self._next_page(path)) is not None:
                done = writer.add(path, batch, datetime.now(UTC))
                if self.full:
                    seen.update(batch.seen_ids)
                counts.pages += 1
                counts.new += done.new
                counts.updated += done.updated
                counts.unchanged += done.unchanged
                counts.quarantined += done.quarantined
                if self.on_page:
                    self.on_page(counts)
            writer.commit(datetime.now(UTC))
        if self.full:
            counts.removed = mark_removed(self.con, resource, seen, datetime.now(UTC))
        known = [w for p in resource.paths if (w := watermark(self.con, name, p)) is not None]
        counts.watermark = format_cursor(max(known)) if known else None
        counts.seconds += time.perf_counter() - started
        return counts

    def close(self) -> None:
        """Stop the reader (it may be waiting on a request or a full queue)."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join()

    def run(self) -> dict[str, ResourceCounts]:
        try:
            self.open()
            for resource in self.resources:
                self.sync_resource(resource.name)
        finally:
            self.close()
        return self.counts

    def _start_cursor(self, resource: Resource, path: str) -> datetime | None:
        if self.full:
            return None
        mark = watermark(self.con, resource.name, path)
        return mark - self.overlap if mark is not None else None

    def _request(self, counts: ResourceCounts, *ask) -> Page:
        requests, limited = self.client.thread_counts()
        try:
            return self.client.get_page(*ask)
        finally:
            now_requests, now_limited = self.client.thread_counts()
            with self._counts_lock:
                counts.requests += now_requests - requests
                counts.rate_limited += now_limited - limited

    def _next_page(self, path: str) -> Batch | None:
        item = self._pages.get()
        if isinstance(item, BaseException):
            raise item
        got, batch = item
        if got != path:
            raise RuntimeError(
                f"sync_resource out of order: expected {path}, the reader is at {got}"
            )
        return batch

    def _read_all(self) -> None:
        """The one paging mechanism, for every path in turn: keyset on updated_at, and on id
        within one second (``_next_step``). Hands (path, page) to the writer, (path, None) at a path's end;
        or the exception that stopped it."""
        try:
            for resource in self.resources:
                counts = self.counts[resource.name]
                for path in resource.paths:
                    cursor, page = self._first.pop(path)
                    after_id: int | None = None  # walking the cursor's second from this id
                    ask: tuple[str, str] | tuple[str, str, list[tuple[str, str]]]
                    while True:
                        batch = parse_records(resource, page.records)
                        if not self._hand_over((path, batch)):
                            return
                        step = _next_step(cursor, after_id, batch, page.next_url)
                        if step is None:
                            break
                        cursor, after_id, by_offset = step
                        ask = (
                            (page.next_url, resource.name)
                            if by_offset and page.next_url
                            else (path, resource.name, list_params(resource, cursor, after_id))
                        )
                        page = self._request(counts, *ask)
                    if not self._hand_over((path, None)):
                        return
        except BaseException as exc:  # raised again in the writer's thread
            self._hand_over(exc)

    def _hand_over(self, item: tuple[str, Batch | None] | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # closed (the writer failed or finished): stop reading


def _next_step(
    cursor: datetime | None, after_id: int | None, batch: Batch, next_url: str | None
) -> tuple[datetime | None, int | None, bool] | None:
    """Where the walk goes after a page: (cursor, after_id, by_offset), or None at the end.

    Page 1 again from the page's largest ``updated_at``; when the whole page shares the
    cursor's second, that second from its start by id (the page came in Cliniko's order, maybe
    a finer time's: SECOND_SORT), each page after the largest id read, then on from the next
    second. ``next_url`` (by offset) is the last resort, for pages with nothing to key on."""
    if after_id is not None:  # a page of the cursor's second alone
        assert cursor is not None
        if not next_url:  # the second is read: on from the next one
            return cursor + timedelta(seconds=1), None, False
        if batch.max_id is not None and batch.max_id > after_id:
            return cursor, batch.max_id, False
        return cursor, after_id, True
    if not next_url:
        return None
    moved = batch.max_updated_at and batch.max_updated_at.replace(microsecond=0)
    if moved is not None and (cursor is None or moved > cursor):
        return moved, None, False
    if cursor is not None and batch.max_id is not None:
        return cursor, 0, False  # the whole second, by id
    return cursor, None, True


def bound_memory(con: duckdb.DuckDBPyConnection, limit: str = "64MB") -> None:
    """DuckDB caches up to 80% of RAM by default, and the process grows by about what it may
    cache. A sync streams through its data: measured on 150,000 rows, 64 MB kept the process at
    210 MB (128 MB: 260 MB; unbounded: 630 MB at 570,000 rows) and was no slower. The largest
    thing a sync asks DuckDB for at once is one of the writer's INSERTs (about 15 MB: see
    ``ResourceWriter.STATEMENT_ROWS``); keep it well inside the bound."""
    con.execute(f"SET memory_limit = '{limit}'")


# --- Run records --------------------------------------------------------------------------------


def reconcile_due(con: duckdb.DuckDBPyConnection, every_hours: float, now: datetime) -> bool:
    """True ``every_hours`` after the last completed reconciliation, or with none, after the
    first completed sync; never before: a first sync reads every row anyway, and one cut short
    goes on from its watermarks, where a reconciliation would begin again from the start."""
    last = one(
        con,
        "SELECT coalesce(max(started_at) FILTER (WHERE kind = 'reconcile'), min(started_at)) "
        "FROM state.sync_runs WHERE status = 'completed' AND kind <> 'partial'",
    )[0]
    return last is not None and now - last >= timedelta(hours=every_hours)


INTERRUPTED = "its process stopped before it finished; the next sync resumed from its watermarks"


def start_run(con: duckdb.DuckDBPyConnection, kind: str) -> str:
    """Record a run as 'running'; one still 'running' had its process stop (one process writes
    a clinic's database: no other sync is under way) and becomes 'interrupted', end unknown."""
    run_id = uuid.uuid4().hex
    sql = "UPDATE state.sync_runs SET status = 'interrupted', error = ? WHERE status = 'running'"
    con.execute(sql, [INTERRUPTED])
    con.execute(
        "INSERT INTO state.sync_runs (run_id, kind, started_at, status) VALUES (?, ?, ?, 'running')",
        [run_id, kind, datetime.now(UTC)],
    )
    return run_id


def finish_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    counts: dict[str, ResourceCounts],
    error: BaseException | None = None,
) -> None:
    """Close the run record. ``error`` is stored by message: ours never carry personal data,
    and a DuckDB error about data (the writer's statements read the payloads, and the patients'
    phone numbers as it writes them) loses its quoted values (``duckdb_message``)."""
    summary = orjson.dumps({name: asdict(c) for name, c in counts.items()}).decode()
    con.execute(
        "UPDATE state.sync_runs SET finished_at = ?, status = ?, summary = ?, error = ? "
        "WHERE run_id = ?",
        [
            datetime.now(UTC),
            "failed" if error else "completed",
            summary,
            f"{type(error).__name__}: {duckdb_message(error)}"[:2000] if error else None,
            run_id,
        ],
    )


def run_sync(
    con: duckdb.DuckDBPyConnection,
    client: ClinikoClient,
    *,
    overlap: timedelta = timedelta(minutes=5),
    reconcile: bool = False,
    on_page: ProgressCallback | None = None,
    sweep: Callable[[Sync], object] = Sync.run,
    resources: tuple[Resource, ...] = RESOURCES,
    first_pages: dict[str, tuple[datetime | None, Page]] | None = None,
    country: str | None = None,
) -> dict[str, ResourceCounts]:
    """A whole run, recorded in ``state.sync_runs`` (completed, or failed with its error),
    whoever runs it. ``sweep`` reads every resource: ``Sync.run``, or the flow's Prefect tasks
    around the same ``Sync`` methods (flows/sync.py). ``resources``: only these (the fast lane's
    few, tasks/lane.py), recorded as kind 'partial'; a reconciliation reads them all.
    ``first_pages``: path -> (cursor, its page 1 from there) already asked for (the lane's poll:
    read on from there, not asked again). ``country``: the clinic's (clinic.yaml): the mobile
    numbers of the patients written are read as they are written (ResourceWriter)."""
    partial = not reconcile and resources != RESOURCES
    run_id = start_run(con, "reconcile" if reconcile else "partial" if partial else "incremental")
    chosen = resources if partial else RESOURCES
    sync = Sync(
        con,
        client,
        overlap=overlap,
        full=reconcile,
        on_page=on_page,
        resources=chosen,
        first_pages=None if reconcile else first_pages,
        country=country,
    )
    try:
        sweep(sync)
    except BaseException as exc:
        finish_run(con, run_id, sync.counts, exc)
        raise
    finish_run(con, run_id, sync.counts)
    return sync.counts


# --- Plain entry point (no Prefect): tests and benchmarks run this in a subprocess --------------


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.cliniko.sync --db PATH``; credentials from CLINIKO_API_KEY, CLINIKO_BASE_URL,
    CLINIKO_CONTACT. Prints one JSON line of counts (and the process's peak memory)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.cliniko.sync", description=main.__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--reconcile", action="store_true")
    parser.add_argument("--overlap-minutes", type=float, default=5.0)
    parser.add_argument("--requests", type=float, default=200, help="rate limit: requests ...")
    parser.add_argument("--per-seconds", type=float, default=60.0, help="... per window")
    parser.add_argument("--no-rate-limit", action="store_true")
    parser.add_argument("--retry-initial", type=float, default=0.5)
    parser.add_argument(
        "--country", default="AU", help="the clinic's, as clinic.yaml's country (phones)"
    )
    args = parser.parse_args(argv)

    from tasks.cliniko.client import Retry

    client = ClinikoClient(
        os.environ.get("CLINIKO_API_KEY", ""),
        os.environ.get("CLINIKO_CONTACT", ""),  # a placeholder is refused: see check_contact
        os.environ.get("CLINIKO_BASE_URL") or None,
        pace=None if args.no_rate_limit else Pace(args.requests, args.per_seconds),
        retry=Retry(initial_seconds=args.retry_initial),
    )
    started = time.perf_counter()
    with client, open_db(args.db) as con:
        bound_memory(con)
        counts = run_sync(
            con,
            client,
            overlap=timedelta(minutes=args.overlap_minutes),
            reconcile=args.reconcile,
            country=args.country or None,
        )
    report = {
        "seconds": time.perf_counter() - started,
        "requests": client.stats.requests,
        "rate_limited": client.stats.rate_limited,
        "retried": client.stats.retried,
        "paced_seconds": client.stats.paced_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "resources": {name: asdict(c) for name, c in counts.items()},
    }
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    from tasks.errors import UserFacingError

    try:
        sys.exit(main())
    except UserFacingError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
