"""Rows of one simulated Cliniko resource, kept ready to serve, and the list query over them.

Speed is the point: a benchmark pages 300,000 appointments at thousands of rows a second. So each
row is stored once as the exact JSON bytes the API sends (links hold a base-URL placeholder that
a page swaps for the server's URL in one pass) with its timestamps unpacked, and each sortable
timestamp has a sorted index of ``(ts << 64) | id`` integers kept with bisect. The change-feed
request ``sort=updated_at,id&q[]=updated_at:>=X`` with every hidden kind asked for
(``archived_at:*``...) is answered from that index by bisection: the fast path. A query sorted on
one indexed timestamp that leaves some rows hidden walks that index slice, checking the unpacked
fields (no decoding). Any other query takes the general path (filter and sort in Python): correct,
but it decodes and sorts the table.

Ties: Cliniko promises no order among rows equal on every sort field, so unless the sort ends
in a tie-break (``id``) the sandbox orders ties arbitrarily, and differently from one request to
the next (a per-table request counter salts the order: deterministic for a given sequence of
requests, never stable across them). A client that pages by offset through rows sharing one
``updated_at`` second under ``sort=updated_at`` alone meets what it would meet in production:
rows read twice and rows never read.

Timestamps are whole UTC seconds (the API has 1-second resolution); empty ones are ``""`` in some
rows and ``null`` in others, as in the official examples, and both mean "not set".
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from sandbox.cliniko.spec import ARRAY, BOOLEAN, DATE, DATETIME, NUMBER, STRING, ResourceSpec

BASE = "~B~"  # stands for the server's base URL (".../v1") inside stored bodies
BASE_BYTES = BASE.encode()

_SLOT_FIELDS = (
    "created_at",
    "updated_at",
    "archived_at",
    "cancelled_at",
    "starts_at",
    "deleted_at",
)
_ID_BITS = 64
ID_MASK = (1 << _ID_BITS) - 1  # index keys are (ts << 64) | id
_TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


_DAY = 86_400
_days: dict[int, str] = {}
_day_starts: dict[str, int] = {}
_CLOCK = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(_DAY)]


def fmt_ts(ts: int) -> str:
    """Epoch seconds as the API writes them: ``2026-03-02T09:00:00Z`` (hot: table look-ups)."""
    day, second = divmod(int(ts), _DAY)
    prefix = _days.get(day)
    if prefix is None:
        prefix = _days[day] = datetime.fromtimestamp(day * _DAY, UTC).strftime("%Y-%m-%d")
    return prefix + _CLOCK[second]


def parse_ts(value: object) -> int | None:
    """A stored timestamp ("" and None mean not set) as epoch seconds."""
    if not value:
        return None
    text = str(value)
    if len(text) != 20 or text[10] != "T" or text[19] != "Z":
        return int(datetime.fromisoformat(text).timestamp())
    day = _day_starts.get(text[:10])
    if day is None:
        day = _day_starts[text[:10]] = int(
            datetime.fromisoformat(text[:10] + "T00:00:00+00:00").timestamp()
        )
    return day + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])


def dump(rec: dict) -> bytes:
    """JSON bytes of exactly their own size (orjson's own result keeps an ~8 KiB buffer, which
    at 500,000 stored rows is gigabytes)."""
    return memoryview(orjson.dumps(rec)).tobytes()


def link(path: str) -> dict:
    """A link-style foreign key, as Cliniko sends them: {"links": {"self": "<base>/path"}}."""
    return {"links": {"self": f"{BASE}/{path}"}}


def link_id(value: object) -> int | None:
    """The id at the end of a link-style foreign key (None for a null link)."""
    if not value:
        return None
    tail = value["links"]["self"].rsplit("/", 1)[1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else None


class QueryError(Exception):
    """A request the real API refuses; carries the status and the API's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Row:
    __slots__ = ("id", "body", *_SLOT_FIELDS)

    def __init__(self, rec: dict, body: bytes | None = None) -> None:
        self.id = int(rec["id"])
        self.body = body if body is not None else dump(rec)
        self.created_at = parse_ts(rec.get("created_at"))
        self.updated_at = parse_ts(rec.get("updated_at"))
        self.archived_at = parse_ts(rec.get("archived_at"))
        self.cancelled_at = parse_ts(rec.get("cancelled_at"))
        self.starts_at = parse_ts(rec.get("starts_at"))
        self.deleted_at = parse_ts(rec.get("deleted_at"))

    @classmethod
    def of(
        cls,
        rec: dict,
        *,
        created: int,
        updated: int,
        archived: int | None = None,
        cancelled: int | None = None,
        starts: int | None = None,
    ) -> Row:
        """A row whose timestamps the caller already knows (bulk generation skips parsing)."""
        row = cls.__new__(cls)
        row.id, row.body = int(rec["id"]), dump(rec)
        row.created_at, row.updated_at = created, updated
        row.archived_at, row.cancelled_at, row.starts_at = archived, cancelled, starts
        row.deleted_at = parse_ts(rec.get("deleted_at"))
        return row

    def record(self) -> dict:
        """The row's true record: a row served malformed still has its real id and updated_at."""
        rec = orjson.loads(self.body)
        rec["id"], rec["updated_at"] = str(self.id), fmt_ts(self.updated_at)
        return rec


class Table:
    """One resource's rows by id, with a sorted index per indexed timestamp.

    A row with ``deleted_at`` set stays readable by id but is in no index and no list: Cliniko's
    lists never show deleted rows, whatever the filters (``deleted_at:*`` included)."""

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        self.rows: dict[int, Row] = {}
        self.indexes: dict[str, list[int]] = {f: [] for f in spec.indexed}
        self.queries = 0  # salts the order of ties (see the module docstring)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, items: list[dict | Row]) -> None:
        """Bulk insert (generation): one sort per index instead of an insort per row."""
        for item in items:
            row = item if isinstance(item, Row) else Row(item)
            self.rows[row.id] = row
        listed = [r for r in self.rows.values() if r.deleted_at is None]
        for name, index in self.indexes.items():
            index.extend(_key(getattr(r, name), r.id) for r in listed)
            index.sort()

    def put(self, rec: dict, body: bytes | None = None) -> Row:
        """Insert or replace a row (its id is rec["id"]); ``body`` overrides the served bytes."""
        row = Row(rec, body)
        self.remove(row.id)
        self.rows[row.id] = row
        if row.deleted_at is None:
            for name, index in self.indexes.items():
                insort(index, _key(getattr(row, name), row.id))
        return row

    def remove(self, row_id: int) -> bool:
        row = self.rows.pop(row_id, None)
        if row is None:
            return False
        for name, index in self.indexes.items() if row.deleted_at is None else ():
            key = _key(getattr(row, name), row_id)
            pos = bisect_left(index, key)
            del index[pos]
        return True

    def record(self, row_id: int) -> dict:
        return self.rows[row_id].record()


def _key(ts: int | None, row_id: int) -> int:
    return ((ts or 0) << _ID_BITS) | row_id


def _shuffled(row_id: int, salt: int) -> int:
    """A per-request arbitrary rank of a row among its ties (a multiplicative hash)."""
    return ((row_id ^ salt) * 0x9E3779B97F4A7C15) & ID_MASK


def _ordered_slice(keys: list[int], lo: int, hi: int, start: int, stop: int, salt: int | None):
    """``keys[start:stop]`` of the sorted ``keys[lo:hi]``, with each run of equal timestamps
    reordered arbitrarily when ``salt`` is given (no tie-break asked for). Only the runs that the
    page touches are reordered, so a page costs its size plus the ties at its two edges."""
    if start >= stop:
        return []
    if salt is None:
        return keys[start:stop]
    first, last = keys[start] >> _ID_BITS, keys[stop - 1] >> _ID_BITS
    g_lo = max(lo, bisect_left(keys, first << _ID_BITS, lo, hi))
    g_hi = min(hi, bisect_right(keys, (last << _ID_BITS) | ID_MASK, lo, hi))
    run = sorted(keys[g_lo:g_hi], key=lambda k: (k >> _ID_BITS, _shuffled(k & ID_MASK, salt)))
    return run[start - g_lo : stop - g_lo]


# ---- q[] filters ---------------------------------------------------------------------------

_OPS = ("!?", ">=", "<=", "!=", "~~", ">", "<", "=", "~", "?", "*")  # longest first
_ALLOWED = {
    DATETIME: {">", ">=", "<", "<=", "?", "!?", "*"},
    DATE: {"=", ">", ">=", "<", "<=", "?", "!?"},
    NUMBER: {"=", "!=", ">", ">=", "<", "<=", "?", "!?"},
    STRING: {"=", "!=", "~", "~~", "?", "!?"},
    BOOLEAN: {"=", "!="},
    ARRAY: {"~"},
}
_RANGE_OPS = {">", ">=", "<", "<="}


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: object  # parsed for the field's type; None for ? !? *
    kind: str

    def matches(self, v: object) -> bool:
        op, want = self.op, self.value
        if op == "*":
            return True
        if op == "?":
            return v is not None
        if op == "!?":
            return v is None
        if v is None:
            return False
        if op == "=":
            if self.kind == NUMBER:
                return v in want
            if self.kind == DATE:
                return want.match(v) is not None
            return v == want
        if op == "!=":
            return v != want
        if op == "~":
            return want in v if self.kind == ARRAY else want in v.lower()
        if op == "~~":
            return want.match(v) is not None
        if op == ">":
            return v > want
        if op == ">=":
            return v >= want
        if op == "<":
            return v < want
        return v <= want  # "<="


def parse_filter(spec: ResourceSpec, raw: str) -> Filter:
    name, sep, rest = raw.partition(":")
    if not sep or name not in spec.filters:
        raise QueryError(400, "This column is not searchable.")
    kind = spec.filters[name]
    op = next((o for o in _OPS if rest.startswith(o)), None)
    if op is None or op not in _ALLOWED[kind]:
        raise QueryError(400, f"Invalid search operator for {name}.")
    text = rest[len(op) :]
    if op in ("?", "!?", "*"):
        return Filter(name, op, None, kind)
    try:
        return Filter(name, op, _parse_value(kind, op, text), kind)
    except ValueError:
        raise QueryError(400, f"Invalid search value for {name}.") from None


def _parse_value(kind: str, op: str, text: str) -> object:
    if kind == DATETIME:
        if not _TS_FORMAT.match(text):
            raise ValueError(text)
        return parse_ts(text)
    if kind == NUMBER:
        values = [int(v) for v in text.split(",")]
        return frozenset(values) if op == "=" else values[0]
    if kind == BOOLEAN:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if kind == DATE:
        if not re.fullmatch(r"[\d*]{4}-[\d*]{2}-[\d*]{2}", text):
            raise ValueError(text)
        return re.compile(re.escape(text).replace(r"\*", r"\d")) if op == "=" else text
    if kind == ARRAY:
        return int(text)  # the one array filter, patient_ids, holds ids
    if op == "~":
        return text.lower()
    if op == "~~":
        return re.compile(".*".join(re.escape(p) for p in text.split("%")) + r"\Z", re.I)
    return text


def parse_sort(spec: ResourceSpec, raw: str | None) -> list[tuple[str, bool]]:
    """``sort=starts_at,created_at:desc`` -> [(field, descending)]; default created_at asc."""
    if not raw:
        return [("created_at", False)]
    keys = []
    for part in raw.split(","):
        name, _, direction = part.strip().partition(":")
        if name not in spec.filters or direction not in ("", "asc", "desc"):
            raise QueryError(400, f"Invalid sort: {part.strip()}.")
        keys.append((name, direction == "desc"))
    return keys


# ---- the list query -------------------------------------------------------------------------


def field_value(row: Row, name: str, kind: str, cache: dict) -> object:
    """A filterable field's value on a row, comparable with the parsed filter values."""
    if name in _SLOT_FIELDS:
        return getattr(row, name)
    if name == "id":
        return row.id
    rec = cache.get(row.id)
    if rec is None:
        rec = cache[row.id] = row.record()
    if kind == DATETIME:
        return parse_ts(rec.get(name))
    if kind == NUMBER:  # a foreign key (``patient_id`` is the ``patient`` link) or a number
        return link_id(rec.get(name[:-3])) if name.endswith("_id") else rec.get(name)
    if kind == ARRAY:
        return [int(v) for v in rec.get(name) or ()]
    value = rec.get(name)
    return None if value == "" and kind in (STRING, DATE) else value


def query(
    table: Table,
    filters: list[Filter],
    sort: list[tuple[str, bool]],
    page: int,
    per_page: int,
    partition: tuple[str, object] | None = None,
) -> tuple[int, list[bytes]]:
    """Total matching rows and the bodies of one page, as the API would list them."""
    offset = (page - 1) * per_page
    rows = table.rows
    table.queries += 1
    tie_broken = any(name == "id" for name, _desc in sort)
    salt = None if tie_broken else _shuffled(table.queries, 0x5EED)
    in_range = _index_range(table, filters, sort)
    if in_range is not None:
        index, lo, hi = in_range
        filtered = {f.field for f in filters}
        hiding = [h for h in table.spec.hidden if h not in filtered]
        if not hiding and partition is None:  # the fast path: pure bisection
            start = lo + offset
            keys = _ordered_slice(index, lo, hi, start, min(hi, start + per_page), salt)
            return hi - lo, [rows[k & ID_MASK].body for k in keys]
        kept = []
        for key in index[lo:hi]:  # walk the index, skipping hidden rows: no sort, no decode
            row = rows[key & ID_MASK]
            if any(getattr(row, h) is not None for h in hiding):
                continue
            if partition is not None and row.record().get(partition[0]) != partition[1]:
                continue
            kept.append(key)
        stop = min(len(kept), offset + per_page)
        keys = _ordered_slice(kept, 0, len(kept), offset, stop, salt)
        return len(kept), [rows[k & ID_MASK].body for k in keys]
    matched = _scan(table, filters, partition)
    cache: dict = {}
    matched.sort(key=lambda r: r.id if salt is None else _shuffled(r.id, salt))
    for name, desc in reversed(sort):
        kind = table.spec.filters[name]
        matched.sort(
            key=lambda r, n=name, k=kind: _sort_key(field_value(r, n, k, cache)), reverse=desc
        )
    return len(matched), [r.body for r in matched[offset : offset + per_page]]


def _sort_key(v: object) -> tuple:
    # Nulls last ascending (first descending), like Postgres behind Rails.
    return (v is None, v) if not isinstance(v, list) else (False, tuple(v))


def _index_range(
    table: Table, filters: list[Filter], sort: list[tuple[str, bool]]
) -> tuple[list[int], int, int] | None:
    """The slice of a sorted index a query reads, when it sorts ascending on one indexed field
    (optionally then ascending on ``id``, the index's own tie order) and filters only on that
    field's range (plus ``*`` filters, which only unhide rows, and, sorted on ``id`` too, an
    ``id`` range when the field's range holds one second). Sorted on ``id`` alone, a range of
    one indexed field within one second is the same slice: there, the index is in id order."""
    if sort == [("id", False)]:
        ranged = {f.field for f in filters if f.op in _RANGE_OPS and f.field != "id"}
        if len(ranged) != 1 or (name := ranged.pop()) not in table.indexes:
            return None
        found = _index_range(table, filters, [(name, False), ("id", False)])
        if found is None:
            return None
        index, lo, hi = found
        return found if lo >= hi or index[lo] >> _ID_BITS == index[hi - 1] >> _ID_BITS else None
    if not 1 <= len(sort) <= 2 or sort[0][1] or (len(sort) == 2 and sort[1] != ("id", False)):
        return None
    name = sort[0][0]
    index = table.indexes.get(name)
    if index is None:
        return None
    lo, hi = 0, len(index)
    by_id = [f for f in filters if f.field == "id" and f.op in _RANGE_OPS and len(sort) == 2]
    for f in filters:
        if f.op == "*" or f in by_id:
            continue
        if f.field != name or f.op not in _RANGE_OPS:
            return None
        if f.op == ">":
            lo = max(lo, bisect_right(index, _key(f.value, ID_MASK)))
        elif f.op == ">=":
            lo = max(lo, bisect_left(index, _key(f.value, 0)))
        elif f.op == "<":
            hi = min(hi, bisect_left(index, _key(f.value, 0)))
        else:
            hi = min(hi, bisect_right(index, _key(f.value, ID_MASK)))
    if by_id and lo < hi:
        # An id range is a slice of the index only within one second (keys are (ts, id)): the
        # rest of a bulk edit's second, as a client walks it by id.
        second = index[lo] >> _ID_BITS
        if index[hi - 1] >> _ID_BITS != second:
            return None
        for f in by_id:
            if f.op == ">":
                lo = max(lo, bisect_right(index, _key(second, f.value)))
            elif f.op == ">=":
                lo = max(lo, bisect_left(index, _key(second, f.value)))
            elif f.op == "<":
                hi = min(hi, bisect_left(index, _key(second, f.value)))
            else:
                hi = min(hi, bisect_right(index, _key(second, f.value)))
    return index, lo, max(lo, hi)


def _scan(table: Table, filters: list[Filter], partition: tuple[str, object] | None) -> list[Row]:
    spec = table.spec
    filtered = {f.field for f in filters}
    hiding = [h for h in spec.hidden if h not in filtered]
    cache: dict = {}
    out = []
    for row in table.rows.values():
        if row.deleted_at is not None or any(getattr(row, h) is not None for h in hiding):
            continue
        if partition is not None and row.record().get(partition[0]) != partition[1]:
            continue
        if all(f.matches(field_value(row, f.field, f.kind, cache)) for f in filters):
            out.append(row)
    return out
