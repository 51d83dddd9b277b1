"""Cliniko records -> rows in ``raw.*``: parsing a page (``parse_records``) and writing pages of
one resource with the watermarks they justify (``ResourceWriter``).

A record is kept exactly as Cliniko sent it (the JSON ``payload``), keyed by its 64-bit id (sent
as a string or a number; a referral source has none and is keyed by its patient's link).
Malformed records go to ``state.quarantine`` with a reason that names the problem, never the
value; a good copy seen later clears it. Pages are written in transactions together with the
watermark they justify, so a kill anywhere loses nothing (the watermark never passes an
uncommitted row) and duplicates nothing (rows are upserted by id). Rows are never deleted here:
``mark_removed`` marks the rows a reconciliation no longer saw.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import orjson

from tasks.cliniko import fields
from tasks.cliniko.resources import Resource
from tasks.warehouse import transaction

MAX_BIGINT = 2**63 - 1

# The resource whose records carry phone numbers, and its payloads as one INSERT passed them.
MOBILES_RESOURCE = "patients"
_PAYLOADS = "(SELECT unnest($payloads) AS payload)"

Row = tuple[int, datetime | None, str]  # id, updated_at, payload exactly as sent (JSON text)


# --- Loading: Cliniko records -> rows -----------------------------------------------------------


@dataclass
class Batch:
    """One page, parsed: rows to upsert, records to quarantine, and where the cursor may move."""

    rows: list[Row]
    quarantined: list[tuple[str, str, str]]  # record key as sent, reason (no values), payload
    seen_ids: list[int]  # every id Cliniko returned, loadable or not (for reconciliation)
    max_updated_at: datetime | None
    # The largest ``id`` the records carry themselves (not a fallback key): where the pager goes
    # on from within one second (tasks.cliniko.sync). None when no record has one.
    max_id: int | None = None


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
    top_id: int | None = None
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
                top_id = record_id if top_id is None else max(top_id, record_id)
            seen.append(record_id)
            updated_at = parse_timestamp(record.get("updated_at"))
        except _Malformed as problem:
            quarantined.append((_record_key(resource, record, payload), str(problem), payload))
            updated_at = _parseable_updated_at(record)
        else:
            by_id[record_id] = (record_id, updated_at, payload)
        if updated_at is not None and (newest is None or updated_at > newest):
            newest = updated_at
    return Batch(list(by_id.values()), quarantined, seen, newest, top_id)


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
    # Rows per INSERT within a commit. A statement's memory grows with its rows (its parameter
    # lists, and the JSON parse of the parsed ``fields``), a commit's does not: 5,000 appointments
    # in one statement needed 57 MB of the sync's 64 MB bound (tasks.cliniko.sync.bound_memory)
    # and ran out of it beside the database's own blocks; in statements of 500, 15 MB, at the
    # same CPU.
    STATEMENT_ROWS = 500
    LOOKUP_ROWS = 2000  # measured: reading 580k ids takes 0.5 s, one page's ids about 1 ms

    def __init__(
        self, con: duckdb.DuckDBPyConnection, resource: Resource, *, country: str | None = None
    ) -> None:
        self.con, self.resource = con, resource
        # The clinic's country: the patients' mobile numbers are read as they are written
        # (tasks.models.functions.read_new_mobiles), not at the next build. None: not read.
        self.country = country if resource.name == MOBILES_RESOURCE else None
        self._registered = False  # the models' macros, on ``con`` (read_new_mobiles)
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
        # The fields staging reads, parsed in the same INSERT as the payload (tasks/cliniko/fields.py).
        self._parsed = (
            f", {fields.parse_sql(resource.name)} AS fields"
            if resource.name in fields.PARSED
            else ""
        )

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
        unsure: list[Row] = []
        held = self._held_for(batch.rows)
        ours_payload: str | None
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
            ours: dict[int, str] = dict(
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

    def _read_mobiles(self, country: str, payloads: list[str]) -> None:
        """The patients' mobile numbers the memo lacks, read and remembered (read_new_mobiles),
        listed from the slice of payloads one INSERT just wrote: listed from the commit's rows
        in the table, 5,000 patients' JSON at once, a first sync ran out of its memory bound."""
        from tasks.models import functions  # phonenumbers, the models' macros: only here

        if not self._registered:
            functions.register_macros(self.con)
            self._registered = True
        functions.read_new_mobiles(self.con, country, _PAYLOADS, {"payloads": payloads})

    def commit(self, now: datetime) -> None:
        """Write everything buffered, and the watermarks it justifies, in one transaction."""
        changed = [i for i in self._pending if i not in self._new]
        all_rows = list(self._pending.values())
        with transaction(self.con):
            # A changed row's old copy is deleted and the new one appended, not replaced in
            # place: DuckDB rewrites a whole column of every row group an in-place update
            # touched at the next checkpoint, and the payload is the widest column there is
            # (250 edited appointments of 2,000,000: a 10 s checkpoint, against 0.03 s).
            for start in range(0, len(changed), self.STATEMENT_ROWS):
                self.con.execute(
                    f"DELETE FROM {self.resource.table} WHERE id IN (SELECT unnest($ids))",
                    {"ids": changed[start : start + self.STATEMENT_ROWS]},
                )
            for start in range(0, len(all_rows), self.STATEMENT_ROWS):
                rows = all_rows[start : start + self.STATEMENT_ROWS]
                payloads = [r[2] for r in rows]
                self.con.execute(
                    f"INSERT INTO {self.resource.table} BY NAME SELECT *{self._parsed} "
                    "FROM (SELECT unnest($ids) AS id, unnest($updated) AS updated_at, "
                    "unnest($payloads) AS payload, $now AS synced_at, "
                    "NULL::TIMESTAMPTZ AS removed_at)",
                    {
                        "ids": [r[0] for r in rows],
                        "updated": [r[1] for r in rows],
                        "payloads": payloads,
                        "now": now,
                    },
                )
                if self.country:
                    self._read_mobiles(self.country, payloads)
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
