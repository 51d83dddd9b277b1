"""The sync over real HTTP against the Cliniko sandbox, into real DuckDB files.

"Mirrors the clinic" means: for every resource, the rows we hold (hidden ones included) equal what
the sandbox serves when asked for everything, payload for payload, except rows hard-deleted in
Cliniko (kept until a reconciliation marks them) and rows it made malformed (quarantined).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from tasks.cliniko import sync as extract
from tasks.cliniko.client import (
    BadApiKey,
    ClinikoClient,
    GarbagePage,
    Pace,
    PermissionDenied,
    ResourceNotFound,
    Retry,
)
from tasks.cliniko.resources import RESOURCES
from tasks.cliniko.writer import ResourceWriter
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PATHS = sum(len(r.paths) for r in RESOURCES)
FAST_RETRY = Retry(initial_seconds=0.01, max_seconds=0.2)


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=7, patients=150, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


@pytest.fixture
def db(tmp_path):
    return tmp_path / "clinic.duckdb"


def client_for(server, key, **kwargs) -> ClinikoClient:
    kwargs.setdefault("pace", None)
    kwargs.setdefault("retry", FAST_RETRY)
    return ClinikoClient(key, "tests@example.com", server.base_url, **kwargs)


def sync(db, server, clinic, *, key=None, reconcile=False, **kwargs):
    with client_for(server, key or clinic.api_key, **kwargs) as client, open_db(db) as con:
        return extract.run_sync(con, client, reconcile=reconcile)


def held(con, resource, *, removed=False) -> dict[int, dict]:
    where = "removed_at IS NOT NULL" if removed else "removed_at IS NULL"
    return {
        row_id: orjson.loads(payload)
        for row_id, payload in con.execute(
            f"SELECT id, payload FROM raw.{resource} WHERE {where}"
        ).fetchall()
    }


def assert_mirrors(db, clinic, server, malformed: dict[str, set[int]] | None = None):
    with open_db(db, read_only=True) as con:
        for resource in RESOURCES:
            ours = held(con, resource.name)
            theirs = clinic.snapshot(resource.name, server.base_url)
            skip = clinic.hard_deleted(resource.name) | (malformed or {}).get(resource.name, set())
            mine = {k: v for k, v in ours.items() if k not in skip}
            missing = theirs.keys() - mine.keys()
            extra = mine.keys() - theirs.keys()
            stale = [k for k in theirs.keys() & mine.keys() if theirs[k] != mine[k]]
            assert not (missing or extra or stale), (
                f"{resource.name}: {len(missing)} missing, {len(extra)} extra, {len(stale)} stale "
                f"(of {len(theirs)})"
            )


def written(db) -> tuple[int, int]:
    with open_db(db, read_only=True) as con:
        rows = sum(con.execute(f"SELECT count(*) FROM {r.table}").fetchone()[0] for r in RESOURCES)
        marks = con.execute("SELECT count(*) FROM state.sync_watermarks").fetchone()[0]
    return rows, marks


# --- Incremental sync -------------------------------------------------------------------------


@pytest.fixture(params=["page lookups", "whole table"])
def lookups(request, monkeypatch):
    """Both ways the sync learns which rows it holds: each page's ids looked up (incremental
    syncs), or the whole table read once (backfills and large change sets)."""
    if request.param == "whole table":
        monkeypatch.setattr(ResourceWriter, "LOOKUP_ROWS", 0)
    else:
        monkeypatch.setattr(ResourceWriter, "LOOKUP_ROWS", 10**9)
    return request.param


def test_incremental_syncs_after_random_changes_mirror_the_clinic(db, clinic, server, lookups):
    first = sync(db, server, clinic)
    assert sum(c.new for c in first.values()) > 2000
    assert_mirrors(db, clinic, server)

    rng = random.Random(3)
    for _ in range(4):
        changes = clinic.advance(timedelta(minutes=rng.randint(5, 240)))
        counts = sync(db, server, clinic)
        assert_mirrors(db, clinic, server)
        assert sum(c.new + c.updated for c in counts.values()) > 0, changes


def test_an_unchanged_clinic_costs_one_request_per_path(db, clinic, server):
    sync(db, server, clinic)
    clinic.advance(timedelta(hours=1))  # changes older than the overlap window
    sync(db, server, clinic)
    server.reset_stats()
    counts = sync(db, server, clinic)
    assert server.stats.requests == PATHS
    assert sum(c.new + c.updated for c in counts.values()) == 0


def test_rows_seen_again_in_the_overlap_are_not_counted_as_updated(db, clinic, server, lookups):
    sync(db, server, clinic)
    clinic.advance(timedelta(minutes=3))  # inside the 5-minute overlap: re-read next time
    changed = sync(db, server, clinic)
    again = sync(db, server, clinic)
    assert sum(c.new + c.updated for c in changed.values()) > 0
    assert sum(c.new + c.updated for c in again.values()) == 0
    assert sum(c.unchanged for c in again.values()) > 0


def test_a_sync_while_the_clinic_keeps_changing_loses_nothing(db, clinic, server):
    """Rows updated mid-run jump to the end of the updated_at order (the offset-drift pitfall)."""
    sync(db, server, clinic)
    clinic.advance(timedelta(hours=2))

    def busy_clinic(_counts):
        clinic.advance(timedelta(minutes=1))

    with client_for(server, clinic.api_key) as client, open_db(db) as con:
        extract.Sync(con, client, on_page=busy_clinic).run()
        extract.run_sync(con, client)  # picks up what changed during the first
    assert_mirrors(db, clinic, server)


def test_a_bulk_edit_of_1000_rows_in_one_second_is_read_in_full_in_one_run(db, clinic, server):
    """A bulk action gives 1,000 attendees the same updated_at second: ten pages of one second,
    which only links.next can walk. Cliniko orders ties however it likes, differently from one
    request to the next (so does the sandbox); the sync's sort ends in id, so every row is read."""
    sync(db, server, clinic)
    clinic.advance(timedelta(hours=1))  # past the overlap: the next run reads only the burst
    ids = sorted(clinic.snapshot("attendees", server.base_url))[:1000]
    assert len(ids) == 1000
    stamp = clinic.bulk_edit("attendees", ids, {"notes": "Moved to the new room"})

    counts = sync(db, server, clinic)
    assert counts["attendees"].updated >= 1000  # the burst, and what the clock changed
    assert counts["attendees"].pages >= 10
    with open_db(db, read_only=True) as con:
        edited = con.execute(
            "SELECT count(*) FROM raw.attendees WHERE payload->>'notes' = 'Moved to the new room' "
            "AND payload->>'updated_at' = ?",
            [stamp],
        ).fetchone()[0]
    assert edited == 1000
    assert_mirrors(db, clinic, server)


def test_a_row_of_a_bulk_edit_edited_again_mid_run_shifts_no_other_row_out_of_reach(
    db, clinic, server
):
    """The offset-drift pitfall inside one second: while the sync walks a 1,000-row burst, one
    row it has read is edited again and leaves the burst's second. Walked by offset
    (``links.next``), every later row of the burst moves up one place and the first row of the
    next page lands on the page already read: never read, and an hour behind the watermark, so
    the next run's overlap does not reach it either."""
    sync(db, server, clinic)
    clinic.advance(timedelta(hours=1))
    ids = sorted(clinic.snapshot("attendees", server.base_url))[:1000]
    clinic.bulk_edit("attendees", ids, {"notes": "Moved to the new room"})
    pages = 0
    with client_for(server, clinic.api_key) as client, open_db(db) as con:
        get_page = client.get_page

        def edit_a_row_already_read(path_or_url, key, params=()):
            nonlocal pages
            page = get_page(path_or_url, key, params)
            pages += key == "attendees"
            if key == "attendees" and pages == 2:
                clinic.advance(timedelta(hours=1))
                clinic.bulk_edit("attendees", [int(page.records[0]["id"])], {"notes": "Later"})
            return page

        client.get_page = edit_a_row_already_read  # type: ignore[method-assign]
        extract.run_sync(con, client)
    sync(db, server, clinic)  # the overlap (5 minutes) re-reads only the last minutes
    assert_mirrors(db, clinic, server)


def test_reconciliation_marks_hard_deleted_rows_and_keeps_them(db, clinic, server, lookups):
    sync(db, server, clinic)
    for _ in range(3):
        clinic.advance(timedelta(hours=12))
        sync(db, server, clinic)
    deleted = {r.name: clinic.hard_deleted(r.name) for r in RESOURCES}
    assert any(deleted.values()), "the sandbox clock made no hard deletes in 36 hours"

    counts = sync(db, server, clinic, reconcile=True)
    with open_db(db, read_only=True) as con:
        for resource in RESOURCES:
            gone = held(con, resource.name, removed=True)
            assert gone.keys() <= deleted[resource.name]
            assert counts[resource.name].removed == len(gone)
        last = con.execute(
            "SELECT kind, status FROM state.sync_runs ORDER BY started_at DESC"
        ).fetchone()
    assert last == ("reconcile", "completed")
    assert sum(c.removed for c in counts.values()) > 0
    assert_mirrors(db, clinic, server)


def test_a_429_is_waited_out_until_the_window_resets_not_retried_blindly(clinic, server):
    from sandbox.cliniko import RateLimit

    server.rate_limit = RateLimit(per_window=3, window_seconds=0.5)  # reset sent as a decimal
    with client_for(server, clinic.api_key) as client:  # unpaced: only the 429s slow it down
        for _ in range(12):
            client.get_page("/businesses", "businesses")
    statuses = [status for _, _, status in server.stats.log]
    assert client.stats.rate_limited > 0 and statuses.count(200) == 12
    assert all(not (a == b == 429) for a, b in pairwise(statuses)), statuses


def test_paced_at_the_servers_own_limit_no_window_of_it_sees_a_429(db, clinic, server):
    """The client's pace against the sandbox's fixed windows (aligned on the epoch, where the
    client cannot see them) at the very limit the server enforces: a whole backfill, real HTTP,
    not one 429. (Compressed to 8 requests a second: slow enough for any machine, however
    loaded, to ask faster than that, so a limiter that let a window hold 9 would meet a 429.)"""
    from sandbox.cliniko import RateLimit

    server.rate_limit = RateLimit(per_window=8, window_seconds=1.0)
    counts = sync(db, server, clinic, pace=Pace(8, 1.0))
    requests = sum(c.requests for c in counts.values())
    assert requests > 5 * 8  # more than five windows' worth
    assert server.stats.rate_limited == 0
    assert_mirrors(db, clinic, server)


# --- Refusals: clear errors, nothing written --------------------------------------------------


def test_a_bad_key_fails_clearly_and_writes_nothing(db, clinic, server):
    bad_key = "sbx0000000000000000000000000000dead-au1"
    with pytest.raises(BadApiKey) as refused:
        sync(db, server, clinic, key=bad_key)
    message = str(refused.value)
    assert "401" in message and "'au1'" in message and "127.0.0.1" in message
    assert bad_key not in message and bad_key[:-4] not in message
    assert written(db) == (0, 0)


def test_a_key_for_another_shard_names_the_shard_it_asked_for(db, clinic, server):
    other_shard = clinic.api_key.rsplit("-", 1)[0] + "-uk2"
    with pytest.raises(BadApiKey, match="names shard 'uk2'") as refused:
        sync(db, server, clinic, key=other_shard)
    assert other_shard.rsplit("-", 1)[0] not in str(refused.value)
    assert written(db) == (0, 0)


def test_a_missing_permission_fails_before_any_resource_is_written(db, clinic, server):
    limited = "sbx1111111111111111111111111111beef-au1"
    clinic.add_key(limited, denied=("patients",))
    with pytest.raises(PermissionDenied, match="/patients") as refused:
        sync(db, server, clinic, key=limited)
    assert "403" in str(refused.value)
    assert written(db) == (0, 0)  # businesses come before patients, and were not written either


def test_a_resource_the_role_cannot_see_says_which(db, clinic, server):
    limited = "sbx2222222222222222222222222222cafe-au1"
    clinic.add_key(limited, not_found=("appointment_types",))
    with pytest.raises(ResourceNotFound, match="/appointment_types"):
        sync(db, server, clinic, key=limited)
    assert written(db) == (0, 0)


# --- Bad data ---------------------------------------------------------------------------------


def test_malformed_records_are_quarantined_and_the_sync_goes_on(db, clinic, server):
    sync(db, server, clinic)
    clinic.advance(timedelta(minutes=30))
    # broken after the half hour's changes: a change to a broken row heals it (the sandbox
    # serves its next real change well formed), which a seed's changes did to one patient
    keys = clinic.inject_malformed("patients", 4) + clinic.inject_malformed("attendees", 2)
    counts = sync(db, server, clinic)

    with open_db(db, read_only=True) as con:
        quarantined = dict(
            con.execute("SELECT record_key, reason FROM state.quarantine").fetchall()
        )
    assert set(quarantined) == set(keys)
    assert counts["patients"].quarantined == 4 and counts["attendees"].quarantined == 2
    names = {p["first_name"] for p in clinic.snapshot("patients", server.base_url).values()}
    for reason in quarantined.values():
        assert reason.startswith(("id ", "updated_at "))
        assert not any(name and name in reason for name in names)
    broken = {
        "patients": {int(k.lstrip("x")) for k in keys[:4]},
        "attendees": {int(k.lstrip("x")) for k in keys[4:]},
    }
    assert_mirrors(db, clinic, server, malformed=broken)


def test_garbage_pages_are_retried_through(db, clinic, server):
    from sandbox.cliniko import Faults

    server.faults = Faults(malformed_rate=0.3, seed=5)
    sync(db, server, clinic)
    server.faults = Faults()
    assert_mirrors(db, clinic, server)


def test_a_page_that_stays_garbage_fails_the_run_without_moving_the_watermark(db, clinic, server):
    from sandbox.cliniko import Faults

    sync(db, server, clinic)
    clinic.advance(timedelta(hours=1))
    with open_db(db, read_only=True) as con:
        before = con.execute("SELECT * FROM state.sync_watermarks ORDER BY ALL").fetchall()

    server.faults = Faults(malformed_rate=1.0)
    with pytest.raises(GarbagePage, match="unreadable page"):
        sync(db, server, clinic)
    with open_db(db, read_only=True) as con:
        after = con.execute("SELECT * FROM state.sync_watermarks ORDER BY ALL").fetchall()
        status, error = con.execute(
            "SELECT status, error FROM state.sync_runs ORDER BY started_at DESC"
        ).fetchone()
    assert after == before
    assert status == "failed" and "GarbagePage" in error


# --- Hostile conditions (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_storms_of_429s_5xx_dropped_and_slow_answers_still_mirror_the_clinic(db, clinic, server):
    from sandbox.cliniko import Faults, RateLimit

    server.rate_limit = RateLimit(per_window=4, window_seconds=0.5)
    server.faults = Faults(error_rate=0.1, drop_rate=0.05, slow_rate=0.05, slow_seconds=0.3, seed=9)
    sync(db, server, clinic)  # unpaced on purpose: the server's 429s do the pacing
    clinic.advance(timedelta(hours=3))
    sync(db, server, clinic, pace=Pace(4, 0.5))
    assert server.stats.rate_limited > 0
    assert sum(n for status, n in server.stats.by_status.items() if status >= 500) > 0
    server.faults = Faults()
    server.rate_limit = None
    assert_mirrors(db, clinic, server)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_loses_and_duplicates_nothing(db, clinic, server):
    env = {
        **os.environ,
        "CLINIKO_API_KEY": clinic.api_key,
        "CLINIKO_BASE_URL": server.base_url,
        "CLINIKO_CONTACT": "tests@example.com",
    }
    # Paced so a sync takes seconds: long enough to be killed in the middle of it, wherever it is
    # (between requests, between pages, inside a commit). Kills until four have landed.
    command = [sys.executable, "-m", "tasks.cliniko.sync", "--db", str(db), "--requests", "12",
               "--per-seconds", "1", "--retry-initial", "0.05"]  # fmt: skip
    rng = random.Random(11)
    kills = rounds = 0
    while kills < 4 and rounds < 12:
        rounds += 1
        proc = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        clinic.advance(timedelta(hours=rng.randint(1, 8)))
    assert kills == 4, "the sync kept finishing before it could be killed: make it longer"

    finished = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert_mirrors(db, clinic, server)
    with open_db(db, read_only=True) as con:
        for resource in RESOURCES:
            total, distinct = con.execute(
                f"SELECT count(*), count(DISTINCT id) FROM {resource.table}"
            ).fetchone()
            assert total == distinct
