"""Booking -> welcome latency with the fast lane, and the Cliniko requests it costs when idle.

Everything is real except Cliniko: a Prefect server started here (its own home, a free port),
the clinic's tick deployment served by ``prefect.serve`` in a subprocess (bench/tick.py's
``Served``: each run its own process, as in production), a sandbox Cliniko in this process over
HTTP whose clock runs (its own new patients, bookings, cancellations...), DuckDB in a temp folder.

The clinic has BENCH_LATENCY_PATIENTS (1,000) patients, a welcome email on every booking
(``timing: immediately``) and the fast lane on (clinic.yaml's defaults: 50 requests a minute,
the interval from the budget), ticking every BENCH_LATENCY_TICK_MINUTES (5, the default of
``schedule.tick_every_minutes``). After the first tick that completed its steps (its lane
started) and a minute for that backfill's requests to leave the lane's budget:

1. Bookings at random moments (2-12 s apart) for at least one whole tick interval and until
   BENCH_LATENCY_BOOKINGS (20) were welcomed (a patient without an email is never welcomed):
   latency = the outbox file's written_at - the booking's moment; median, p95, max.
   Targets: median <= 10 s, p95 <= 30 s.
2. Idle: the sandbox's clock stopped, no bookings, for BENCH_LATENCY_IDLE_MINUTES (the tick
   interval + 1): Cliniko requests counted at the sandbox, the most in any 60 s and the mean
   per minute. Target: <= 50 a minute (a quarter of the 200/min the clinic's Cliniko user
   shares with its other integrations), the ticks' own requests included.

``python -m bench latency`` (about 15 minutes); figures go to bench/results/latency.jsonl.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from datetime import UTC, datetime

from bench import _results
from bench.tick import Served, add_clinic, bench_server

CLINIC = "latency"
WELCOME = {
    "name": "welcome",
    "enabled": True,
    "event": "appointment_booked",
    "timing": "immediately",
    "channel": "email",
    "template": "welcome",
    "purpose": "transactional",
}
TARGETS = {"median_s": 10, "p95_s": 30, "idle_requests_per_minute": 50}
BACKFILL_WINDOW = 60  # seconds: the lane's budget window (tasks/lane.py WINDOW)


def setting(name: str, default: float) -> float:
    return float(os.environ.get(f"BENCH_LATENCY_{name}", default))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def book_now(clinic) -> tuple[int, float]:
    """One appointment booked in the sandbox now; its id and the wall-clock moment."""
    from sandbox.cliniko.clinic import _Changes

    table = clinic.tables["individual_appointments"]
    with clinic.lock:
        before = set(table.rows)
        moment = time.time()
        _Changes(clinic).bookings(int(moment))
        new = set(table.rows) - before
    return (new.pop(), float(int(moment))) if new else (0, moment)


def latency(client) -> dict:
    from sandbox.cliniko import SandboxClinic, SandboxServer

    patients = int(setting("PATIENTS", 1000))
    wanted = int(setting("BOOKINGS", 20))
    minutes = setting("TICK_MINUTES", 5)
    idle_minutes = setting("IDLE_MINUTES", minutes + 1)
    print(f"Booking -> welcome in the outbox, fast lane on, ticks every {minutes:g} min "
          f"({patients} patients)")  # fmt: skip
    clinic = SandboxClinic.generate(seed=21, patients=patients, start=datetime.now(UTC))
    with SandboxServer(clinic, rate_limit=None, auto_advance_speed=1) as sandbox:
        add_clinic(
            CLINIC,
            sandbox,
            triggers=[WELCOME],
            schedule={"tick_every_minutes": minutes},
            fast_lane={"enabled": True, "requests_per_minute": 50},
        )
        served = Served(minutes * 60, [CLINIC])
        try:
            started = time.monotonic()
            first_tick(client)
            print(f"   first tick's full pass (sync, build, go-live): "
                  f"{time.monotonic() - started:.0f}s; its fast lane is on")  # fmt: skip
            # the first sync is a backfill (hundreds of requests): the lane's budget, which
            # counts the tick's requests, holds it off until they leave its minute (by design)
            time.sleep(BACKFILL_WINDOW)
            booked: dict[int, float] = {}
            samples = _measure_welcomes(clinic, wanted, minutes * 60, booked)
            sandbox.auto_advance_speed = 0  # the clinic's clock stops: nothing changes
            time.sleep(2)
            idle = _idle_requests(sandbox, idle_minutes * 60)
        finally:
            served.stop()
        where = _where(client, booked)
    figures: dict = {
        "patients": patients,
        "tick_every_minutes": minutes,
        "bookings_welcomed": len(samples),
        **idle,
        "where": where,
    }
    if samples:
        figures |= {
            "median_s": round(statistics.median(samples), 1),
            "p95_s": round(pct(samples, 0.95), 1),
            "max_s": round(max(samples), 1),
        }
    print(f"   {len(samples)} welcomes: median {figures.get('median_s', '-')} s "
          f"(target <= {TARGETS['median_s']} s), p95 {figures.get('p95_s', '-')} s "
          f"(target <= {TARGETS['p95_s']} s), max {figures.get('max_s', '-')} s")  # fmt: skip
    print(f"   idle, {idle['idle_minutes']:g} min: {idle['idle_requests_max_minute']} Cliniko "
          f"requests in the busiest minute, {idle['idle_requests_per_minute']:.1f} a minute on "
          f"average (target <= {TARGETS['idle_requests_per_minute']})")  # fmt: skip
    return figures


def first_tick(client, timeout: float = 900) -> None:
    """Start the clinic's tick now and wait until a tick's fast lane starts: its full pass
    completed and the welcome trigger is live (a failed first tick: the next one's)."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.exceptions import ObjectNotFound

    for _ in range(240):  # the served process registers its deployment in a few seconds
        try:
            deployment = client.read_deployment_by_name(f"clinic-tick/{CLINIC}-tick")
            break
        except ObjectNotFound:
            time.sleep(0.5)
    client.create_flow_run_from_deployment(deployment.id)
    deadline = time.monotonic() + timeout
    lanes = TaskRunFilter(name=TaskRunFilterName(any_=["fast-lane"]))
    while not client.read_task_runs(task_run_filter=lanes, limit=1):
        # a tick that failed (a first sync can) leaves it to the next scheduled one
        if time.monotonic() > deadline:
            raise RuntimeError(f"no tick completed its steps in {timeout:.0f}s")
        time.sleep(0.5)


def _measure_welcomes(
    clinic,
    wanted: int,
    at_least_seconds: float,
    booked: dict[int, float],
    limit_minutes: float = 20,
) -> list[float]:
    """Book at random moments for at least ``at_least_seconds`` (a whole tick interval: the
    moments the lane is off are in the sample) and until ``wanted`` welcomes arrived."""
    from tasks.providers.outbox import outbox_dir

    outbox = outbox_dir(CLINIC)
    latencies: dict[int, float] = {}
    rng = random.Random(6)
    started = time.monotonic()
    deadline = started + limit_minutes * 60
    next_booking = started
    while time.monotonic() < deadline:
        booking = time.monotonic() - started < at_least_seconds or len(latencies) < wanted
        if booking and time.monotonic() >= next_booking and len(booked) < 6 * wanted:
            appointment, moment = book_now(clinic)
            booked[appointment] = moment
            next_booking = time.monotonic() + rng.uniform(2, 12)
        for path in outbox.glob("*.json") if outbox.exists() else ():
            record = json.loads(path.read_text(encoding="utf-8"))
            if "send_key" not in record:
                continue
            appointment = int(record["send_key"].rsplit(":", 1)[1])
            if appointment in booked and appointment not in latencies:
                written = datetime.fromisoformat(record["written_at"]).timestamp()
                latencies[appointment] = written - booked[appointment]
        if not booking and len(latencies) >= min(wanted, len(booked)):
            break
        if not booking and time.monotonic() - next_booking > 120:
            break  # the last bookings had two minutes: the rest have no email on file
        time.sleep(0.5)
    return list(latencies.values())


def _where(client, booked: dict[int, float]) -> dict:
    """Where each welcome's time went: the phase its booking fell in (a lane polling, or the gap
    between one run's lane and the next's: the lane's margin, the run's end, the next run's
    start and its full pass), the sync that caught it (the lane's ``partial`` or a tick's) and
    booking -> that sync's start -> planned -> sent. Prints the slowest and each gap's parts."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    from tasks.config import load_clinic
    from tasks.warehouse import open_db

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[f"{CLINIC}-tick"])),
        limit=200,
    )
    lanes = client.read_task_runs(
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["fast-lane"])), limit=200
    )

    def ts(moment) -> float:
        return moment.timestamp() if moment is not None else float("inf")

    spans = sorted((ts(r.start_time), ts(r.end_time)) for r in runs if r.start_time is not None)
    lane_spans = sorted(
        (ts(t.start_time), ts(t.end_time)) for t in lanes if t.start_time is not None
    )
    with open_db(load_clinic(CLINIC).database_path) as con:
        syncs = [
            (kind, ts(started), ts(finished))
            for kind, started, finished in con.execute(
                "SELECT kind, started_at, finished_at FROM state.sync_runs ORDER BY started_at"
            ).fetchall()
        ]
        ledger = {
            int(appointment): (ts(planned), ts(sent))
            for appointment, planned, sent in con.execute(
                "SELECT appointment_id, planned_at, sent_at FROM state.messages "
                "WHERE source_name = 'welcome' AND sent_at IS NOT NULL"
            ).fetchall()
        }
    rows = []
    for appointment, moment in booked.items():
        if appointment not in ledger:
            continue
        planned, sent = ledger[appointment]
        kind, sync_start, _ = max(
            (s for s in syncs if s[2] <= planned), key=lambda s: s[1], default=("?", moment, 0)
        )
        in_lane = any(start <= moment < end for start, end in lane_spans)
        rows.append({
            "latency": round(sent - moment, 1),
            "phase": "lane" if in_lane else "gap",
            "caught_by": "lane" if kind == "partial" else "tick",
            "to_sync": round(sync_start - moment, 1),
            "sync_to_planned": round(planned - sync_start, 1),
            "planned_to_sent": round(sent - planned, 1),
        })  # fmt: skip
    gaps = []
    for (_, lane_end), (next_start, _) in zip(lane_spans, lane_spans[1:], strict=False):
        run_end = min((e for s, e in spans if s <= lane_end <= e), default=lane_end)
        next_run = max((s for s, e in spans if s <= next_start), default=next_start)
        gaps.append({
            "lane_end_to_run_end": round(run_end - lane_end, 1),
            "run_end_to_next_run_start": round(next_run - run_end, 1),
            "next_run_start_to_lane": round(next_start - next_run, 1),
            "gap": round(next_start - lane_end, 1),
        })  # fmt: skip
    catch_ups = [round(f - s, 1) for k, s, f in syncs if k == "partial"]
    print(
        "   slowest welcomes (s): latency phase caught_by | booking->sync start, ->planned, ->sent"
    )
    for row in sorted(rows, key=lambda r: -r["latency"])[:8]:
        print(f"     {row['latency']:5.1f} {row['phase']:4} {row['caught_by']:4} | "
              f"{row['to_sync']:5.1f} {row['sync_to_planned']:5.1f} {row['planned_to_sent']:5.1f}")  # fmt: skip
    for gap in gaps:
        print(f"   gap between lanes: {gap}")
    by_phase = {
        phase: sorted(r["latency"] for r in rows if r["phase"] == phase)
        for phase in ("lane", "gap")
    }
    summary = {
        "phases": {p: {"n": len(v), "median_s": statistics.median(v) if v else None,
                       "max_s": max(v, default=None)} for p, v in by_phase.items()},
        "gaps": gaps,
        "lane_sync_seconds_median": statistics.median(catch_ups) if catch_ups else None,
    }  # fmt: skip
    print(
        f"   by phase: {summary['phases']}; lane sync median {summary['lane_sync_seconds_median']} s"
    )
    return summary


def _idle_requests(sandbox, seconds: float) -> dict:
    """Requests the sandbox answered while nothing changed: the busiest 60 s and the mean."""
    since = time.monotonic()
    time.sleep(seconds)
    moments = [t for t, _path, _status in list(sandbox.stats.log) if t >= since]
    busiest = max(
        (
            sum(1 for u in moments if t <= u < t + 60)
            for t in [since, *moments]
            if t + 60 <= since + seconds
        ),
        default=len(moments),
    )
    return {
        "idle_minutes": round(seconds / 60, 2),
        "idle_requests": len(moments),
        "idle_requests_max_minute": busiest,
        "idle_requests_per_minute": round(len(moments) / (seconds / 60), 1),
    }


def main() -> None:
    load = _results.load_average()
    with bench_server("bench-latency-") as client:
        figures = latency(client)
    _results.record("latency", {**figures, "targets": TARGETS}, load_at_start=load)


if __name__ == "__main__":
    main()
