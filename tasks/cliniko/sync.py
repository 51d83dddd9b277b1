"""Incremental sync of Cliniko into ``raw.*``: one paging mechanism for every resource in
``tasks.cliniko.resources``, resumable after a kill at any moment.

How a path is read (cliniko-api.md §5): ``sort=updated_at&q[]=updated_at:>=<cursor>`` plus the
resource's hidden-row filters. After each page the cursor moves to the page's largest
``updated_at`` and page 1 is asked again, keyset-style, so a row updated mid-run (which jumps to
the end of the order) can never shift an unread row onto a page already read. Only when a whole
page shares the cursor's second do we follow ``links.next`` within it. A run starts at the
watermark minus the overlap; rows seen twice are recognised (same ``updated_at`` and payload) and
left alone.

Pages are written in transactions together with the watermark they justify (a few pages per
commit: see ``ResourceWriter``), so a kill anywhere loses nothing (the watermark never passes an
uncommitted row) and duplicates nothing (rows are upserted by id). Malformed records go to
``state.quarantine`` with a reason that names the problem, never the value. A reconciliation is the same sweep from the beginning, and then marks
rows Cliniko no longer returns as removed (hard deletes); rows are never deleted here.

Before anything is written, the first page of every path is fetched (those requests are needed
anyway), so a bad key or a missing permission fails the run with nothing half-written.

Plain functions, no Prefect: ``flows/sync.py`` wraps them; ``python -m tasks.cliniko.sync`` runs a sync
without Prefect (tests kill it with -9; the benchmark measures it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import resource as _rusage
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson

from tasks.cliniko import resources as _resources
from tasks.cliniko.client import ClinikoClient, Pace, Page
from tasks.cliniko.resources import RESOURCES, Resource
from tasks.warehouse import open_db, transaction

MAX_BIGINT = 2**63 - 1

Row = tuple[int, datetime | None, str]  # id, updated_at, payload exactly as sent (JSON text)


# --- Loading: Cliniko records -> rows -----------------------------------------------------------


@dataclass
class Batch:
    """One page, parsed: rows to upsert, records to quarantine, and where the cursor may move."""

    rows: list[Row]
    quarantined: list[tuple[str, str, str]]  # record key as sent, reason (no values), payload
    seen_ids: list[int]  # every id Cliniko returned, loadable or not (for reconciliation)
    max_updated_at: datetime | None


class _Malformed(Exception):
    pass


def _as_id(value: object) -> int:
    if isinstance(value, bool):
        raise _Malformed("id is not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise _Malformed("id is missing or not an integer")
    if not 0 < number <= MAX_BIGINT:
        raise _Malformed("id is outside the 64-bit range")
    return number


def _link_id(record: dict, link: str) -> int:
    try:
        url = record[link]["links"]["self"]
        return _as_id(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    except (KeyError, TypeError, AttributeError):
        raise _Malformed(f"no id and no {link} link to key it on") from None


def parse_timestamp(value: object, name: str = "updated_at") -> datetime | None:
    """Cliniko's UTC timestamps; ``""`` and null both mean none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{name} is not a timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Malformed(f"{name} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise _Malformed(f"{name} has no time zone")
    return parsed.astimezone(UTC)


def _record_key(resource: Resource, record: object, payload: str) -> str:
    """How a quarantined record is named: its id (or key link) as sent, else a digest of it."""
    if isinstance(record, dict):
        sent = record.get("id")
        if sent is None and resource.fallback_key_link:
            link = record.get(resource.fallback_key_link)
            if isinstance(link, dict) and isinstance(link.get("links"), dict):
                sent = link["links"].get("self")
        if isinstance(sent, str | int) and not isinstance(sent, bool):
            return str(sent)[:200]
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_records(resource: Resource, records: list) -> Batch:
    """Turn a page's records into rows; anything unloadable is set aside with its reason."""
    by_id: dict[int, Row] = {}
    quarantined: list[tuple[str, str, str]] = []
    seen: list[int] = []
    newest: datetime | None = None
    for record in records:
        payload = orjson.dumps(record).decode()
        record_id: int | None = None
        try:
            if not isinstance(record, dict):
                raise _Malformed("record is not a JSON object")
            if resource.fallback_key_link and record.get("id") is None:
                record_id = _link_id(record, resource.fallback_key_link)
            else:
                record_id = _as_id(record.get("id"))
            seen.append(record_id)
            updated_at = parse_timestamp(record.get("updated_at"))
        except _Malformed as problem:
            quarantined.append((_record_key(resource, record, payload), str(problem), payload))
            updated_at = _parseable_updated_at(record)
        else:
            by_id[record_id] = (record_id, updated_at, payload)
        if updated_at is not None and (newest is None or updated_at > newest):
            newest = updated_at
    return Batch(list(by_id.values()), quarantined, seen, newest)


def _parseable_updated_at(record: object) -> datetime | None:
    """A quarantined record may still tell the cursor how far the page reached."""
    try:
        return parse_timestamp(record.get("updated_at")) if isinstance(record, dict) else None
    except _Malformed:
        return None


# --- Writing: pages, committed with the watermarks they justify -------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REMOVED = -1  # in the held index: a row marked removed, rewritten (un-marked) when seen again


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // timedelta(microseconds=1)


@dataclass
class PageResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0


class ResourceWriter:
    """Writes the pages of one resource: rows, quarantine and watermarks in one transaction.

    Pages are buffered and committed together every ``FLUSH_ROWS`` rows or ``FLUSH_SECONDS``
    (and by ``commit()``): each commit holds whole pages AND the watermarks they justify, so a kill
    at any moment leaves the watermark behind every row not yet committed, and the next run reads
    those again. Committing per page cost more than everything else together (WAL writes, fsyncs).

    Which rows changed is decided in memory, against an index of the ids we hold (id -> updated_at
    in microseconds; ~100 bytes a row), not by a query per page: only a row seen again with the same
    ``updated_at`` needs its payload compared, and the previous page usually has it.
    """

    FLUSH_ROWS = 5000  # DuckDB writes ~2x faster in commits of 5,000 rows than of 1,000
    FLUSH_SECONDS = 3.0
    LOOKUP_ROWS = 2000  # measured: reading 580k ids takes 0.5 s, one page's ids about 1 ms

    def __init__(self, con: duckdb.DuckDBPyConnection, resource: Resource) -> None:
        self.con, self.resource = con, resource
        # id -> updated_at of the rows we hold, read whole once a sync has seen LOOKUP_ROWS rows;
        # until then each page looks up its own ids, so an incremental sync (a few pages in the
        # overlap window) never reads the whole table.
        self._held: dict[int, int | None] | None = None
        self._looked_up = 0
        self.quarantine = quarantined_keys(con, resource)
        self._previous_page: dict[int, str] = {}
        self._pending: dict[int, Row] = {}
        self._new: set[int] = set()
        self._quarantined: dict[str, tuple[str, str]] = {}  # key -> (reason, payload)
        self._cleared: set[str] = set()
        self._marks: dict[str, datetime] = {}
        self._since_commit = time.monotonic()

    _HELD_SQL = "SELECT id, CASE WHEN removed_at IS NULL THEN epoch_us(updated_at) ELSE {removed} END FROM {table}"

    def _held_for(self, rows: list[Row]) -> dict[int, int | None]:
        """id -> updated_at (or _REMOVED) of the rows we hold among ``rows``' ids (or more)."""
        if not rows:
            return {}
        if self._held is None and self._looked_up + len(rows) <= self.LOOKUP_ROWS:
            self._looked_up += len(rows)
            ids = ",".join(str(int(r[0])) for r in rows)
            sql = self._HELD_SQL.format(removed=_REMOVED, table=self.resource.table)
            return dict(self.con.execute(f"{sql} WHERE id IN ({ids})").fetchall())
        if self._held is None:
            self._held = {}
            sql = self._HELD_SQL.format(removed=_REMOVED, table=self.resource.table)
            for chunk in _chunks(self.con.execute(sql)):
                self._held.update(chunk)
        return self._held

    def add(self, path: str, batch: Batch, now: datetime) -> PageResult:
        """Take a page; commits when enough is buffered. Counts are final once committed."""
        result = PageResult(quarantined=len(batch.quarantined))
        unsure = []
        held = self._held_for(batch.rows)
        for row in batch.rows:
            row_id, updated = row[0], _micros(row[1])
            pending = self._pending.get(row_id)
            if pending is not None:
                ours_updated, ours_payload = _micros(pending[1]), pending[2]
            elif row_id in held:
                ours_updated, ours_payload = held[row_id], self._previous_page.get(row_id)
            else:
                self._pending[row_id] = row
                self._new.add(row_id)
                result.new += 1
                continue
            if ours_updated != updated or ours_updated == _REMOVED:
                self._pending[row_id] = row
                result.updated += 1
            elif ours_payload is None:
                unsure.append(row)  # same updated_at as the copy we hold: compare payloads
            elif ours_payload == row[2]:
                result.unchanged += 1
            else:
                self._pending[row_id] = row
                result.updated += 1
        if unsure:
            ours = dict(
                self.con.execute(
                    f"SELECT id, payload FROM {self.resource.table} "
                    f"WHERE id IN ({','.join(str(r[0]) for r in unsure)})"
                ).fetchall()
            )
            for row in unsure:
                if ours.get(row[0]) == row[2]:
                    result.unchanged += 1
                else:
                    self._pending[row[0]] = row
                    result.updated += 1
        self._previous_page = {r[0]: r[2] for r in batch.rows}
        for key, reason, payload in batch.quarantined:
            self._quarantined[key] = (reason, payload)
            self._cleared.discard(key)
        for key in {str(r[0]) for r in batch.rows} & (self.quarantine | self._quarantined.keys()):
            self._quarantined.pop(key, None)  # a good copy clears an earlier quarantine
            self._cleared.add(key)
        if batch.max_updated_at is not None:
            mark = self._marks.get(path)
            self._marks[path] = (
                batch.max_updated_at if mark is None else max(mark, batch.max_updated_at)
            )
        if (
            len(self._pending) >= self.FLUSH_ROWS
            or time.monotonic() - self._since_commit >= self.FLUSH_SECONDS
        ):
            self.commit(now)
        return result

    def commit(self, now: datetime) -> None:
        """Write everything buffered, and the watermarks it justifies, in one transaction."""
        new = [r for i, r in self._pending.items() if i in self._new]
        changed = [r for i, r in self._pending.items() if i not in self._new]
        with transaction(self.con):
            for verb, rows in (("INSERT", new), ("INSERT OR REPLACE", changed)):
                if rows:
                    self.con.execute(
                        f"{verb} INTO {self.resource.table} "
                        "SELECT unnest($ids), unnest($updated), unnest($payloads), $now, NULL",
                        {
                            "ids": [r[0] for r in rows],
                            "updated": [r[1] for r in rows],
                            "payloads": [r[2] for r in rows],
                            "now": now,
                        },
                    )
            if self._quarantined:
                self.con.executemany(
                    "INSERT INTO state.quarantine VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (resource, record_key) DO UPDATE SET reason = excluded.reason, "
                    "payload = excluded.payload, last_seen = excluded.last_seen",
                    [
                        (self.resource.name, key, reason, payload, now, now)
                        for key, (reason, payload) in self._quarantined.items()
                    ],
                )
            if self._cleared:
                self.con.execute(
                    "DELETE FROM state.quarantine WHERE resource = $resource "
                    "AND record_key IN (SELECT unnest($keys))",
                    {"resource": self.resource.name, "keys": sorted(self._cleared)},
                )
            for path, mark in self._marks.items():
                _advance_watermark(self.con, self.resource.name, path, mark, now)
        if self._held is not None:
            self._held.update((i, _micros(r[1])) for i, r in self._pending.items())
        self.quarantine = (self.quarantine - self._cleared) | self._quarantined.keys()
        self._pending, self._new, self._quarantined = {}, set(), {}
        self._cleared, self._marks = set(), {}
        self._since_commit = time.monotonic()


def bound_memory(con: duckdb.DuckDBPyConnection, limit: str = "64MB") -> None:
    """DuckDB caches up to 80% of RAM by default, and the process grows by about what it may
    cache. A sync streams through its data: measured on 150,000 rows, 64 MB kept the process at
    210 MB (128 MB: 260 MB; unbounded: 630 MB at 570,000 rows) and was no slower."""
    con.execute(f"SET memory_limit = '{limit}'")


def _chunks(cursor: duckdb.DuckDBPyConnection, size: int = 50_000):
    while rows := cursor.fetchmany(size):
        yield rows


def _advance_watermark(
    con: duckdb.DuckDBPyConnection, resource: str, path: str, seen: datetime, now: datetime
) -> None:
    # An UPDATE is measurably cheaper than an upsert, and a path has its row after its first page.
    updated = con.execute(
        "UPDATE state.sync_watermarks SET watermark = greatest(watermark, $seen), updated_at = $now "
        "WHERE resource = $resource AND path = $path",
        {"seen": seen, "now": now, "resource": resource, "path": path},
    ).fetchone()
    if not updated or updated[0] == 0:
        con.execute(
            "INSERT INTO state.sync_watermarks VALUES (?, ?, ?, ?)", [resource, path, seen, now]
        )


def quarantined_keys(con: duckdb.DuckDBPyConnection, resource: Resource) -> set[str]:
    return {
        key
        for (key,) in con.execute(
            "SELECT record_key FROM state.quarantine WHERE resource = ?", [resource.name]
        ).fetchall()
    }


def watermark(con: duckdb.DuckDBPyConnection, resource: str, path: str) -> datetime | None:
    found = con.execute(
        "SELECT watermark FROM state.sync_watermarks WHERE resource = ? AND path = ?",
        [resource, path],
    ).fetchone()
    return found[0] if found else None


# --- Reading: the one paging mechanism ----------------------------------------------------------


def format_cursor(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_params(resource: Resource, cursor: datetime | None) -> list[tuple[str, str]]:
    params = [("sort", "updated_at")]
    params += [("q[]", f"{hidden}:*") for hidden in resource.include_hidden]
    if cursor is not None:
        params.append(("q[]", f"updated_at:>={format_cursor(cursor)}"))
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
    ) -> None:
        self.con, self.client = con, client
        self.overlap, self.full, self.on_page = overlap, full, on_page
        self.resources = resources
        self.counts = {r.name: ResourceCounts(r.name) for r in resources}
        self._first: dict[str, tuple[datetime | None, Page]] = {}
        self._pages: queue.Queue = queue.Queue(maxsize=self.READ_AHEAD)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def open(self) -> dict[str, ResourceCounts]:
        """Ask for the first page of every path before writing anything, then start reading."""
        for resource in self.resources:
            counts = self.counts[resource.name]
            for path in resource.paths:
                cursor = self._start_cursor(resource, path)
                started = time.perf_counter()
                page = self._request(counts, path, resource.name, list_params(resource, cursor))
                counts.seconds += time.perf_counter() - started
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
        writer = ResourceWriter(self.con, resource)
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
        stats = self.client.stats
        requests, limited = stats.requests, stats.rate_limited
        try:
            return self.client.get_page(*ask)
        finally:
            counts.requests += stats.requests - requests
            counts.rate_limited += stats.rate_limited - limited

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
        """The one paging mechanism, for every path in turn: keyset on updated_at, next links
        only within one second. Hands (path, page) to the writer, (path, None) at a path's end;
        or the exception that stopped it."""
        try:
            for resource in self.resources:
                counts = self.counts[resource.name]
                for path in resource.paths:
                    cursor, page = self._first.pop(path)
                    while True:
                        batch = parse_records(resource, page.records)
                        if not self._hand_over((path, batch)):
                            return
                        if not page.next_url:
                            break
                        moved = _floor_second(batch.max_updated_at)
                        if moved is not None and (cursor is None or moved > cursor):
                            cursor = moved  # page 1 again, from the furthest row read
                            ask = (path, resource.name, list_params(resource, cursor))
                        else:  # the whole page shares the cursor's second: go on within it
                            ask = (page.next_url, resource.name)
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


def _floor_second(moment: datetime | None) -> datetime | None:
    return moment.replace(microsecond=0) if moment is not None else None


def mark_removed(
    con: duckdb.DuckDBPyConnection, resource: Resource, seen: set[int], now: datetime
) -> int:
    """After a full sweep: rows we hold that Cliniko no longer returns were hard-deleted there."""
    with transaction(con):
        marked = con.execute(
            f"UPDATE {resource.table} SET removed_at = $now "
            "WHERE removed_at IS NULL AND id NOT IN (SELECT unnest($seen::BIGINT[]))",
            {"now": now, "seen": sorted(seen)},
        ).fetchone()
    return marked[0] if marked else 0


# --- Run records --------------------------------------------------------------------------------


def reconcile_due(con: duckdb.DuckDBPyConnection, every_hours: float, now: datetime) -> bool:
    """True when no reconciliation has completed in the last ``every_hours`` (or ever)."""
    last = con.execute(
        "SELECT max(started_at) FROM state.sync_runs WHERE kind = 'reconcile' AND status = 'completed'"
    ).fetchone()[0]
    return last is None or now - last >= timedelta(hours=every_hours)


def start_run(con: duckdb.DuckDBPyConnection, kind: str) -> str:
    run_id = uuid.uuid4().hex
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
    """Close the run record. ``error`` is stored by message: ours never carry personal data."""
    summary = orjson.dumps({name: asdict(c) for name, c in counts.items()}).decode()
    con.execute(
        "UPDATE state.sync_runs SET finished_at = ?, status = ?, summary = ?, error = ? "
        "WHERE run_id = ?",
        [
            datetime.now(UTC),
            "failed" if error else "completed",
            summary,
            f"{type(error).__name__}: {error}"[:2000] if error else None,
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
) -> dict[str, ResourceCounts]:
    """A whole run, recorded in ``state.sync_runs``. The flow does the same step by step."""
    run_id = start_run(con, "reconcile" if reconcile else "incremental")
    sync = Sync(con, client, overlap=overlap, full=reconcile, on_page=on_page)
    try:
        sync.run()
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
    args = parser.parse_args(argv)

    from tasks.cliniko.client import Retry

    client = ClinikoClient(
        os.environ.get("CLINIKO_API_KEY", ""),
        os.environ.get("CLINIKO_CONTACT", "ops@localhost"),
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
        )
    report = {
        "seconds": time.perf_counter() - started,
        "requests": client.stats.requests,
        "rate_limited": client.stats.rate_limited,
        "retried": client.stats.retried,
        "paced_seconds": client.stats.paced_seconds,
        "peak_rss_mb": _rusage.getrusage(_rusage.RUSAGE_SELF).ru_maxrss / 1024,
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
