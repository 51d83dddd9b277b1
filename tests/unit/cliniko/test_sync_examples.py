"""Conformance: every example response in Cliniko's official documentation parses, and every
record of a resource we sync loads through the real loader into raw.* without quarantine.

The examples (tests/fixtures/cliniko-examples/) mix integer and string ids, "" and null
timestamps, and an id-less referral source: the variation the loader must take.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tasks import warehouse
from tasks.cliniko import resources
from tasks.cliniko.writer import ResourceWriter, parse_records

EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "cliniko-examples"
FILES = sorted(EXAMPLES.glob("*.json"))

# Documented endpoints we do not sync, and why.
NOT_SYNCED = {
    "bookings": "a union of individual and group appointments and unavailable blocks; the typed endpoints carry the same rows",
    "conflicts": "scheduling conflicts of one appointment: computed on request, not a record",
    "deleted": "legacy lists of deleted ids only (no record, maybe no id field); the id reconciliation finds hard deletes",
    "settings": "account settings; its time zone is a Rails label, businesses carry the IANA zone",
    "user": "the key's own user: staff, not clinic data",
    "users": "staff accounts, not needed for messaging",
}


def _example(path: Path) -> tuple[str, object]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc["request"], doc["response"]


def _resource_of(request: str) -> resources.Resource | None:
    """GET /patients, /patients/archived, /patients/:id -> patients; conflicts are not records."""
    parts = request.removeprefix("GET /").split("/")
    if {"conflicts", "deleted"} & set(parts):
        return None
    return resources.BY_NAME.get(parts[0])


def _why_not_synced(request: str) -> str:
    parts = request.removeprefix("GET /").split("/")
    special = [p for p in ("conflicts", "deleted") if p in parts]
    return NOT_SYNCED[special[0] if special else parts[0]]


def test_the_examples_are_all_there():
    assert len(FILES) >= 30, f"expected Cliniko's documented examples in {EXAMPLES}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_documented_response_loads_or_is_knowingly_not_synced(path):
    request, response = _example(path)
    resource = _resource_of(request)
    if resource is None:
        assert _why_not_synced(request)
        return
    # A list response carries its records under the resource's key; a single GET is one record.
    records = response.get(resource.name, [response])
    assert records, f"{path.name}: no records"

    con = warehouse.memory_db()
    batch = parse_records(resource, records)
    assert batch.quarantined == [], f"{path.name}: {[(k, why) for k, why, _ in batch.quarantined]}"
    writer = ResourceWriter(con, resource)
    writer.add("/" + resource.name, batch, datetime.now(UTC))
    writer.commit(datetime.now(UTC))

    stored = con.execute(f"SELECT id, updated_at, payload FROM {resource.table}").fetchall()
    assert len(stored) == len({r[0] for r in batch.rows}) == len(records)
    for (row_id, updated_at, payload), record in zip(
        sorted(stored), _by_key(resource, records), strict=True
    ):
        assert orjson.loads(payload) == record, "the payload is exactly what Cliniko sent"
        assert row_id > 0
        if record.get("updated_at"):
            assert updated_at == datetime.fromisoformat(record["updated_at"])
        else:
            assert updated_at is None


def _by_key(resource, records):
    return sorted(records, key=lambda r: parse_records(resource, [r]).rows[0][0])
