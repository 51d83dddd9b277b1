"""Medical alerts and invoices, synced like every resource: over real HTTP from the sandbox into a
real DuckDB file, incrementally, with the alerts Cliniko hides (archived: the way an alert is
removed now) and the rows it deletes, and with counts only in what the sync reports.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from flows.sync import summary_markdown  # imported first: Prefect sets up logging on import
from sandbox.cliniko.patient_extras import CLINICAL_ALERTS, TAG_ALERTS
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FAST_RETRY = Retry(initial_seconds=0.01, max_seconds=0.2)


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=13, patients=400, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


def sync(db, server, clinic, *, reconcile=False):
    with (
        ClinikoClient(
            clinic.api_key, "tests@example.com", server.base_url, pace=None, retry=FAST_RETRY
        ) as client,
        open_db(db) as con,
    ):
        return extract.run_sync(con, client, reconcile=reconcile)


def held(db, resource: str) -> dict[int, tuple[dict, object]]:
    with open_db(db, read_only=True) as con:
        return {
            row_id: (orjson.loads(payload), removed_at)
            for row_id, payload, removed_at in con.execute(
                f"SELECT id, payload, removed_at FROM raw.{resource}"
            ).fetchall()
        }


def test_alerts_and_invoices_arrive_whole_then_only_what_changed(tmp_path, clinic, server):
    db = tmp_path / "clinic.duckdb"
    first = sync(db, server, clinic)
    for resource in ("medical_alerts", "invoices"):
        served = clinic.snapshot(resource, server.base_url)
        rows = held(db, resource)
        assert {i: p for i, (p, _r) in rows.items()} == served, resource
        assert first[resource].new == len(served) > 0
    alerts = held(db, "medical_alerts")
    archived = [i for i, (p, _r) in alerts.items() if p["archived_at"]]
    assert archived, "alerts removed before the first sync come too (archived_at:*)"
    statuses = {p["status"] for p, _r in held(db, "invoices").values()}
    assert statuses == {10, 20, 30, 40}

    # A day of the clinic: alerts added and removed, visits invoiced, invoices paid.
    done = clinic.advance(timedelta(days=1))
    assert done["alerts_added"] and done["alerts_removed"] and done["invoices_paid"]
    assert done["invoices_raised"]
    # The front desk takes one more alert off a patient: Cliniko archives it.
    keep = next(i for i, (p, _r) in alerts.items() if not p["archived_at"])
    clinic.bulk_edit("medical_alerts", [keep], {"archived_at": clinic.now.strftime("%FT%TZ")})

    second = sync(db, server, clinic)
    for resource in ("medical_alerts", "invoices"):
        # Incremental: what changed (and the overlap window), not the table again.
        assert second[resource].new + second[resource].updated > 0
        assert second[resource].unchanged < first[resource].new / 10, second[resource]
        served = clinic.snapshot(resource, server.base_url)
        rows = held(db, resource)
        gone = clinic.hard_deleted(resource)
        assert {i: p for i, (p, _r) in rows.items() if i not in gone} == served, resource
    payload, removed_at = held(db, "medical_alerts")[keep]
    assert payload["archived_at"] and removed_at is None, "archived: still there, hidden"
    paid_later = [
        i
        for i, (p, _r) in held(db, "invoices").items()
        if p["status"] == 20 and p["closed_at"] > START.strftime("%FT%TZ")
    ]
    assert paid_later, "invoices open at the first sync and paid since are read again"


def test_a_deleted_alert_or_invoice_is_marked_removed_by_the_reconciliation(
    tmp_path, clinic, server
):
    db = tmp_path / "clinic.duckdb"
    sync(db, server, clinic)
    for _ in range(4):  # until the clock has deleted an alert and an invoice synced before
        clinic.advance(timedelta(days=1))
        synced = {r: set(held(db, r)) for r in ("medical_alerts", "invoices")}
        if all(clinic.hard_deleted(r) & synced[r] for r in synced):
            break
        sync(db, server, clinic)
    counts = sync(db, server, clinic, reconcile=True)
    for resource in ("medical_alerts", "invoices"):
        gone = clinic.hard_deleted(resource) & synced[resource]
        assert gone, f"the clock deleted no {resource} that was synced"
        rows = held(db, resource)
        assert {i for i, (_p, removed) in rows.items() if removed is not None} == gone
        assert counts[resource].removed == len(gone)


def test_the_sync_reports_counts_of_alerts_and_invoices_never_their_contents(
    tmp_path, clinic, server, caplog
):
    db = tmp_path / "clinic.duckdb"
    caplog.set_level(logging.DEBUG)
    counts = sync(db, server, clinic)
    clinic.advance(timedelta(hours=6))
    counts = sync(db, server, clinic, reconcile=True)
    with open_db(db, read_only=True) as con:
        summaries = [s for (s,) in con.execute("SELECT summary FROM state.sync_runs").fetchall()]
    published = [summary_markdown("demo", "reconcile", counts), *summaries]
    published += [record.getMessage() for record in caplog.records]
    assert caplog.records, "the sync's log records are captured"
    text = "\n".join(published)
    invoices = [p for p, _r in held(db, "invoices").values()]
    for name in (*TAG_ALERTS, *CLINICAL_ALERTS):
        assert name not in text, name
    for field in ("total_amount", "net_amount", "invoice_to", "issue_date", '"number"'):
        assert field not in text, field
    billed_to = {i["invoice_to"] for i in invoices if i["invoice_to"]}
    assert billed_to and not any(who in text for who in billed_to), "no patient names"
    for summary in summaries:
        for resource, fields in orjson.loads(summary).items():
            assert set(fields) == set(extract.ResourceCounts.__dataclass_fields__), resource
            assert all(
                isinstance(v, int | float) or k in ("resource", "watermark")
                for k, v in fields.items()
            )
    assert counts["medical_alerts"].rows and counts["invoices"].rows
