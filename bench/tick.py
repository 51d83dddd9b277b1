"""Tick benchmark (issue 6 §5): the idle tick, ticks per minute. (Booking -> welcome latency,
with the fast lane, is bench/latency.py.)

Everything is real except Cliniko: a Prefect server started here (its own home, a free port),
the tick deployments served by ``prefect.serve`` in a subprocess (each run its own process, as
in production), sandbox Cliniko servers in this process over HTTP, DuckDB files in a temp folder.

1. Idle tick: a clinic of BENCH_TICK_IDLE_PATIENTS (20,000) with the demo clinic's triggers,
   journeys and campaigns. After its first (full) tick, BENCH_TICK_IDLE_RUNS (3) ticks with
   nothing changed, each split into process start, our work (time inside task bodies: SQL,
   HTTP, files) and Prefect (the rest of the run), the CPU seconds of every process but the
   sandbox, and the Prefect API requests and events of one more tick run in this process.
   Targets: run <= 2.0 s, Prefect's share <= 40%.
2. Sustained: BENCH_TICK_CLINICS (5) clinics of 500 patients, their sandbox clocks running, ticking
   every 60 s and then every 12 s (25 asked a minute), BENCH_TICK_MINUTES (3) minutes each: ticks
   completed per minute (target >= 20), how late they started, how many were skipped as too
   late, and what the Prefect server logged going wrong meanwhile (errors, "database is
   locked", tracebacks: a server that stalls under the load shows there). The server's log
   goes with the temp folder at the end; a copy is kept in the system's temp folder (and
   named) when it holds a traceback.

W. Warm start (``BENCH_TICK_PARTS=warm``, not run by default): the idle tick's process start,
   pickup -> done and CPU per tick with each run forked from the warm template (relay/warm.py,
   as relay serve and relay worker start runs) against Prefect's own start, back to back.

``python -m bench tick`` (about 15 minutes on a quiet 2-core machine); shrink it with the
variables above, e.g. BENCH_TICK_IDLE_PATIENTS=2000 BENCH_TICK_MINUTES=1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench import _results
from relay.serve import _die_with_parent, free_port, prefect_server, use_server

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def setting(name: str, default: int) -> int:
    return int(os.environ.get(f"BENCH_TICK_{name}", default))


# --- set-up -----------------------------------------------------------------------------------


def add_clinic(name: str, sandbox, **sections) -> None:
    """A clinic folder with its own ClinikoAccount block, as an operator adds one."""
    from pydantic import SecretStr

    from blocks.cliniko import ClinikoAccount

    ClinikoAccount(
        api_key=SecretStr(sandbox.clinic.api_key),
        contact_email="bench@localhost",
        base_url=sandbox.base_url,
        requests_per_minute=100_000,
    ).save(f"{name}-cliniko", overwrite=True)
    folder = Path(os.environ["RELAY_CLINICS_DIR"]) / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"clinic": name, "name": f"Bench {name}", "cliniko": {"account": f"{name}-cliniko"}}
    (folder / "clinic.yaml").write_text(yaml.safe_dump({**config, **sections}), encoding="utf-8")


def demo_sections() -> dict:
    """The demo clinic's triggers, journeys and campaigns: a realistic amount of planning."""
    demo = yaml.safe_load((PROJECT_ROOT / "clinics/demo/clinic.yaml").read_text(encoding="utf-8"))
    return {k: v for k, v in demo.items() if k in ("triggers", "journeys", "campaigns", "sync")}


class Served:
    """``prefect.serve`` of the named clinics' ticks every ``every`` seconds, in a subprocess;
    each run forked from the warm template (relay/warm.py), or with ``warm=False`` started
    Prefect's own way (a new Python per run), for a before/after."""

    def __init__(
        self, every: float, clinics: list[str], suffix: str = "tick", warm: bool = True
    ) -> None:
        log = Path(os.environ["RELAY_DATA_DIR"]) / f"serve-{every:g}s-{time.time():.0f}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tick", "serve", str(every), suffix]
            + ["warm" if warm else "cold", *clinics],
            cwd=PROJECT_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child,
        )

    def cpu_seconds(self) -> float:
        """CPU seconds the served process and every process below it used so far, the runs
        it (or its template) reaped included: before/after a tick, what the tick cost."""
        from relay.serve import descendants

        total = 0
        for pid in {self.proc.pid} | descendants(self.proc.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in stat[11:15])  # utime stime cutime cstime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # serve stops on Ctrl-C; kill only if it hangs
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _child() -> None:
    """In the served subprocess: Ctrl-C works (a background parent may ignore it), and it dies
    with this process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()


def _serve(every: str, suffix: str, start: str, clinics: list[str]) -> None:
    from prefect import serve

    from relay import warm
    from relay.serve import tick_deployment

    if start == "warm":
        warm.install()  # as relay serve does
    interval = timedelta(seconds=float(every))
    deployments = [tick_deployment(c, interval, name=f"{c}-{suffix}") for c in clinics]
    serve(*deployments, print_starting_message=False)


def tick_now(client, clinic: str, timeout: float = 1800) -> object:
    """Run the clinic's tick deployment once, now, and wait for it to finish."""
    from prefect.exceptions import ObjectNotFound

    for _ in range(240):  # the served process registers its deployments in a few seconds
        try:
            deployment = client.read_deployment_by_name(f"clinic-tick/{clinic}-tick")
            break
        except ObjectNotFound:
            time.sleep(0.5)
    run_id = client.create_flow_run_from_deployment(deployment.id).id
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"{clinic}: tick not finished after {timeout:.0f}s")
        time.sleep(0.5)


def _seconds(run) -> float:
    return (run.end_time - run.start_time).total_seconds()


# --- 2. the idle tick -------------------------------------------------------------------------


def idle(client) -> None:
    from sandbox.cliniko import SandboxClinic, SandboxServer

    patients, runs = setting("IDLE_PATIENTS", 20_000), setting("IDLE_RUNS", 3)
    print(f"2. Idle tick on a {patients}-patient clinic")
    load_at_start = _results.load_average()
    started = time.monotonic()
    clinic = SandboxClinic.generate(seed=22, patients=patients, start=datetime.now(UTC))
    print(f"   generated the sandbox clinic in {time.monotonic() - started:.0f}s")
    with SandboxServer(clinic, rate_limit=None) as sandbox:  # no clock: nothing changes
        add_clinic("idle", sandbox, **demo_sections())
        served = Served(3600, ["idle"])  # on demand only
        try:
            first = tick_now(client, "idle")
            print(
                f"   first tick (full sync, full build): {_seconds(first):.0f}s, {first.state.name}"
            )
            splits = []
            for _ in range(runs):
                cpu = _tree_cpu()
                split = _split(client, tick_now(client, "idle"))
                split["CPU (all processes)"] = _tree_cpu(settle_from=cpu) - cpu
                splits.append(split)
        finally:
            served.stop()
        calls = _count_calls("idle")
    figures: dict = {"patients": patients, "runs": runs}
    for name, target in IDLE_TARGETS.items():
        values = [s[name] for s in splits]
        figures[name] = round(statistics.median(values), 3)
        print(f"   {name:<20} median {statistics.median(values):5.2f}s  (runs: "
              + ", ".join(f"{v:.2f}" for v in values) + f"){target and '  target ' + target}")  # fmt: skip
    share = statistics.median(s["Prefect"] / s["run"] for s in splits)
    figures["Prefect share"] = round(share, 3)
    print(f"   {'Prefect share':<20} median {100 * share:5.1f}%  target <= 40%")
    print(
        "   total = process start (spawn, imports) + run; run = our work + Prefect. CPU: the "
        "server, runner and tick processes (not the sandbox)"
    )
    figures |= {f"calls: {k}": v for k, v in calls.items()}
    print(
        f"   one idle tick in-process: {calls['requests']} Prefect API requests "
        f"({calls['writes']} writes), {calls['events']} events"
    )
    _results.record("tick-idle", figures, load_at_start=load_at_start)


IDLE_TARGETS = {
    "total": "<= 3.0 s (worker pickup -> done)",
    "process start": "",
    "run": "<= 2.0 s",
    "our work": "",
    "Prefect": "",
    "CPU (all processes)": "",
}


def idle_sync_round_trips(_client=None) -> None:
    """R. The idle sync alone (``BENCH_TICK_PARTS=roundtrips``, not run by default): one request
    per path, asked one at a time (the order before issue 16) against at once within the key's
    in-flight permits, with the sandbox answering at once and then after a Cliniko-like round
    trip (BENCH_TICK_ROUND_TRIP_MS, 200; Cliniko's measured 150-300 ms). Back to back, each
    run with a fresh limiter (ticks are minutes apart). Wall and CPU of this process, requests."""
    import tasks.cliniko.client as cliniko
    from sandbox.cliniko import Faults, SandboxClinic, SandboxServer
    from tasks.cliniko import pacing
    from tasks.cliniko.sync import run_sync
    from tasks.warehouse import open_db

    runs, round_trip = setting("IDLE_RUNS", 3) * 2, setting("ROUND_TRIP_MS", 200) / 1000
    print(f"R. Idle sync: one request per path, one at a time vs at once ({runs} runs each)")
    load_at_start = _results.load_average()
    clinic = SandboxClinic.generate(seed=22, patients=300, start=datetime.now(UTC))
    figures: dict = {"round trip ms": round_trip * 1000, "runs": runs}
    with SandboxServer(clinic, rate_limit=None) as sandbox, tempfile.TemporaryDirectory() as tmp:

        def one_sync(concurrency: int | None, pace=cliniko.Pace()) -> tuple[float, float, int]:
            pacing._limiters.clear()  # a tick minutes after the last: the burst is whole again
            client = cliniko.ClinikoClient(clinic.api_key, "bench@localhost", sandbox.base_url,
                                           pace=pace)  # fmt: skip
            if concurrency is not None:
                client.concurrency = concurrency
            wall, cpu = time.perf_counter(), time.process_time()
            with client, open_db(Path(tmp) / "idle.duckdb") as con:
                run_sync(con, client)
            return time.perf_counter() - wall, time.process_time() - cpu, client.stats.requests

        one_sync(None, pace=None)  # the first, full sync
        one_sync(None)  # the overlap's rows: the runs below find nothing new
        for latency in (0.0, round_trip):
            sandbox.faults = Faults(slow_rate=1.0 if latency else 0.0, slow_seconds=latency)
            for label, concurrency in (("one at a time", 1), ("at once", None)):
                taken = [one_sync(concurrency) for _ in range(runs)]
                wall = statistics.median(t[0] for t in taken)
                cpu = statistics.median(t[1] for t in taken)
                name = f"{label}, {latency * 1000:.0f} ms"
                figures[name] = {"wall s": round(wall, 3), "cpu s": round(cpu, 3),
                                 "requests": taken[0][2]}  # fmt: skip
                print(f"   {name:<24} wall median {wall:5.2f}s  CPU {cpu:5.2f}s  "
                      f"{taken[0][2]} requests")  # fmt: skip
    print("   (the idle tick's run target, <= 2.0 s, covers the whole tick; this is its sync)")
    _results.record("tick-idle-sync", figures, load_at_start=load_at_start)


def _split(client, run) -> dict[str, float]:
    """Where an idle tick's time goes, from the server's own record of the run and its tasks.
    "Our work" is the time inside the task bodies: the tick's own tasks (a step each) and those
    of any subflow, counting a task nested in another once (its parent's time holds it)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    pending = next(
        s.timestamp for s in client.read_flow_run_states(run.id) if s.type.value == "PENDING"
    )
    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
        )
    )
    wrappers = {s.parent_task_run_id for s in subflows}
    tasks = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id, *(s.id for s in subflows)]))
    )
    ours = sum(
        t.total_run_time.total_seconds()
        for t in tasks
        if t.id not in wrappers and not t.task_inputs.get("__parents__")
    )
    spawn = (run.start_time - pending).total_seconds()
    body = (run.end_time - run.start_time).total_seconds()
    if setting("TASKS", 0):  # BENCH_TICK_TASKS=1: where our work goes, task by task
        slowest = sorted(tasks, key=lambda t: -t.total_run_time.total_seconds())[:12]
        print("   tasks: " + ", ".join(f"{t.name} {t.total_run_time.total_seconds():.2f}"
                                      for t in slowest))  # fmt: skip
    return {
        "total": spawn + body,
        "process start": spawn,
        "run": body,
        "our work": ours,
        "Prefect": body - ours,
    }


# --- warm against cold process start, back to back ----------------------------------------


def warm_start(client) -> None:
    """The idle tick served with each run forked from the warm template and then with
    Prefect's own start (a new Python per run), back to back on the same clinic: process start
    (Pending -> run start), pickup -> done and CPU seconds per tick of the served process tree
    (runner, template, runs; not the server). BENCH_TICK_PARTS=warm; sizes as the idle tick."""
    from bench._results import load_average, record
    from sandbox.cliniko import SandboxClinic, SandboxServer

    patients, runs = setting("IDLE_PATIENTS", 20_000), setting("IDLE_RUNS", 3)
    load = load_average()
    print(f"W. Process start, warm against cold, idle {patients}-patient clinic (load {load})")
    clinic = SandboxClinic.generate(seed=22, patients=patients, start=datetime.now(UTC))
    figures: dict[str, object] = {"patients": patients, "runs": runs}
    with SandboxServer(clinic, rate_limit=None) as sandbox:  # no clock: nothing changes
        add_clinic("warm", sandbox, **demo_sections())
        for mode in ("cold", "warm", "cold", "warm"):  # twice each, so drift shows
            served = Served(3600, ["warm"], warm=mode == "warm")
            try:
                if "first tick" not in figures:
                    figures["first tick"] = _seconds(tick_now(client, "warm"))
                tick_now(client, "warm")  # not counted: the template's first run
                for _ in range(runs):
                    before = served.cpu_seconds()
                    split = _split(client, tick_now(client, "warm"))
                    split["CPU"] = served.cpu_seconds() - before
                    for name in ("process start", "total", "CPU"):
                        figures.setdefault(f"{mode} {name}", []).append(round(split[name], 2))
            finally:
                served.stop()
    targets = {"process start": "well under 1 s", "total": "<= 3.0 s", "CPU": "-"}
    for name, target in targets.items():
        for mode in ("cold", "warm"):
            values = figures[f"{mode} {name}"]
            figures[f"{mode} {name} median"] = statistics.median(values)
            print(f"   {mode} {name:<14} median {statistics.median(values):5.2f}s (target {target};"
                  " runs: " + ", ".join(f"{v:.2f}" for v in values) + ")")  # fmt: skip
    print("   process start = Pending -> run start; total = pickup -> done; CPU = served tree")
    record("tick-warm", figures, load_at_start=load)


def _tree_cpu(settle_from: float | None = None) -> float:
    """CPU seconds (user + system, with reaped children) of every process below this one: the
    Prefect server, the served runner and the tick processes it has reaped. With
    ``settle_from``, wait (up to 5 s) for the finished tick's process to be reaped first."""
    tick = os.sysconf("SC_CLK_TCK")

    def total() -> float:
        children: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry.name), int(fields[1])
            children.setdefault(ppid, []).append(pid)
            cpu[pid] = sum(int(f) for f in fields[11:15]) / tick
        seen, todo = 0.0, list(children.get(os.getpid(), []))
        while todo:
            pid = todo.pop()
            seen += cpu.get(pid, 0.0)
            todo += children.get(pid, [])
        return seen

    now = total()
    deadline = time.monotonic() + 5
    while settle_from is not None and now <= settle_from and time.monotonic() < deadline:
        time.sleep(0.2)
        now = total()
    time.sleep(0 if settle_from is None else 1.0)  # the runner reaps the tick's process
    return total()


def _count_calls(clinic: str) -> dict[str, int]:
    """One more idle tick of ``clinic``, in this process, counting what it sends to the Prefect
    server: HTTP requests (and how many write) and events (task-run states, ours)."""
    import httpx
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL

    from flows.tick import clinic_tick

    api = PREFECT_API_URL.value()
    counts = {"requests": 0, "writes": 0, "events": 0}
    sync_send, async_send, emit = (
        httpx.Client.send,
        httpx.AsyncClient.send,
        PrefectEventsClient._emit,
    )

    paths: Counter = Counter()

    def count(request) -> None:
        if str(request.url).startswith(api):
            counts["requests"] += 1
            write = request.method != "GET" and not request.url.path.endswith("/filter")
            counts["writes"] += write
            path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", request.url.path.split("/api")[-1])
            paths[f"{request.method} {path}"] += 1

    def counted_sync(self, request, *args, **kwargs):
        count(request)
        return sync_send(self, request, *args, **kwargs)

    async def counted_async(self, request, *args, **kwargs):
        count(request)
        return await async_send(self, request, *args, **kwargs)

    async def counted_emit(self, event):
        counts["events"] += 1
        return await emit(self, event)

    httpx.Client.send, httpx.AsyncClient.send = counted_sync, counted_async  # type: ignore[method-assign]
    PrefectEventsClient._emit = counted_emit  # type: ignore[method-assign]
    try:
        clinic_tick(clinic=clinic, return_state=True)
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
    finally:
        httpx.Client.send, httpx.AsyncClient.send = sync_send, async_send  # type: ignore[method-assign]
        PrefectEventsClient._emit = emit  # type: ignore[method-assign]
    print("   requests: " + ", ".join(f"{p} {n}" for p, n in paths.most_common()))
    return counts


# --- 3. sustained ticks per minute ------------------------------------------------------------


def sustained(client) -> None:
    from sandbox.cliniko import SandboxClinic, SandboxServer

    count, minutes = setting("CLINICS", 5), setting("MINUTES", 3)
    print(f"3. {count} clinics of 500 patients, clocks running, on one served process")
    load_at_start = _results.load_average()
    names = [f"clinic{i}" for i in range(count)]
    sandboxes = [
        SandboxServer(
            SandboxClinic.generate(seed=30 + i, patients=500, start=datetime.now(UTC)),
            rate_limit=None,
            auto_advance_speed=1,
        ).start()
        for i in range(count)
    ]
    try:
        for name, sandbox in zip(names, sandboxes, strict=True):
            add_clinic(name, sandbox, **demo_sections())
        served = Served(3600, names)
        try:
            for name in names:  # first, full ticks: not part of the steady state
                tick_now(client, name)
        finally:
            served.stop()
        figures: dict = {"clinics": count, "minutes": minutes}
        for every in SUSTAINED_EVERY:
            figures[f"every {every}s"] = _steady(client, names, every, minutes)
    finally:
        for sandbox in sandboxes:
            sandbox.stop()
    best = max(f["ticks per minute"] for f in figures.values() if isinstance(f, dict))
    figures["ticks per minute"] = best
    print(f"   sustained: {best:.1f} ticks/min done (target >= 20)")
    _results.record("tick-sustained", figures, load_at_start=load_at_start)


# Tick intervals of the sustained phases: 60 s (a clinic a minute each), then 12 s, which asks
# 25 ticks a minute of five clinics, more than the target of 20 (100 clinics on 5-minute ticks).
SUSTAINED_EVERY = (60, 12)


def _steady(client, names: list[str], every: int, minutes: int) -> dict:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    # Deployments of their own per rate (clinicN-every-20s), so one phase's schedule, pause on
    # shutdown and runs never mix with another's.
    suffix = f"every-{every}s"
    cpu_before = _tree_cpu()  # the server's and this phase's runner's, from here on
    logged_before = server_log_problems()
    served = Served(every, names, suffix)
    # The measured window: runs due in `minutes` minutes, from one interval after serving starts
    # (the first run is due then); one more interval afterwards to let the last ones start.
    since = datetime.now(UTC) + timedelta(seconds=every)
    until = since + timedelta(minutes=minutes)
    time.sleep((until - datetime.now(UTC)).total_seconds() + every)
    ours = DeploymentFilter(name=DeploymentFilterName(any_=[f"{n}-{suffix}" for n in names]))
    due = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime(after_=since, before_=until)
        ),
        deployment_filter=ours,
        limit=200,
    )
    # Stop scheduling, let the ticks under way finish (stopping serve would crash them), stop.
    for name in names:
        _pause(client, f"clinic-tick/{name}-{suffix}")
    busy = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING", "PENDING"]))
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and client.read_flow_runs(
        flow_run_filter=busy, deployment_filter=ours
    ):
        time.sleep(2)
    cpu = _tree_cpu() - cpu_before  # before the stop: the runner's reaped ticks still count
    logged = {k: n - logged_before[k] for k, n in server_log_problems().items()}
    served.stop()
    runs = [r for r in (_reread(client, r.id) for r in due) if r is not None]
    waiting = len(due) - len(runs)  # never started: deleted with the schedule on pause
    finished = [r for r in runs if r.state.is_final() and r.start_time]
    late = [(r.start_time - r.expected_start_time).total_seconds() for r in finished]
    summarised = _with_summary(client, [r.id for r in finished])  # a skipped tick publishes none
    done = sum(1 for r in finished if r.state.is_completed() and r.id in summarised)
    skipped = sum(1 for r in finished if r.state.is_completed() and r.id not in summarised)
    failed = sorted(r.state.name for r in finished if not r.state.is_completed())
    waiting += len(runs) - len(finished)
    # The CPU above is every run of the phase, not only those due in the window (the first one,
    # and those due until the pause): per run and per tick done over all of them.
    ran = [r for r in client.read_flow_runs(deployment_filter=ours, limit=200) if r.start_time]
    ran_done = len(_with_summary(client, [r.id for r in ran])) if ran else 0
    asked = len(names) * 60 / every
    print(
        f"   every {every:>2}s ({asked:.0f} ticks/min asked): {done / minutes:.1f} ticks/min done, "
        f"{skipped} skipped as late, {len(failed)} not completed {failed or ''}, {waiting} never "
        "started; start lateness "
        + (f"median {statistics.median(late):.0f}s, max {max(late):.0f}s" if late else "-")
        + f"; CPU {cpu:.0f}s over {len(ran)} runs of the phase, {cpu / max(ran_done, 1):.2f}s"
        f" per tick done ({cpu / max(len(ran), 1):.2f}s per run, skipped ones included); the "
        f"server logged {logged['errors']} errors ({logged['database is locked']} 'database is "
        f"locked'), {logged['tracebacks']} tracebacks"
    )
    return {
        "asked per minute": asked,
        "ticks per minute": round(done / minutes, 2),
        "skipped as late": skipped,
        "not completed": len(failed),
        "never started": waiting,
        "start lateness median s": round(statistics.median(late), 1) if late else None,
        "start lateness max s": round(max(late), 1) if late else None,
        # server, runner and tick processes (not the sandbox): the steadiest figure under load
        "CPU s": round(cpu, 1),
        "runs of the phase": len(ran),
        "CPU s per tick done": round(cpu / max(ran_done, 1), 2),
        "CPU s per run": round(cpu / max(len(ran), 1), 2),
        # what the Prefect server's log says went wrong during the phase (server_log_problems)
        "server log": logged,
    }


def server_log_problems(log: Path | None = None) -> dict[str, int]:
    """What the benchmark's Prefect server has logged going wrong so far: its ERROR records, those
    of them where SQLite refused a write ("database is locked"; a stalled server logs that for
    minutes) and tracebacks (a chained exception counted once). Figures, because the log itself
    goes with the temp folder (bench_server keeps a copy when it holds a traceback)."""
    log = log or Path(os.environ["PREFECT_HOME"]) / "server.log"  # where prefect_server writes it
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    records: list[list[str]] = []  # [level, text]: a record's header line and what follows it
    for line in lines:
        header = _LOG_RECORD.match(line)
        if header:
            records.append([header.group(1) or header.group(2), line])
        elif records:
            records[-1][1] += "\n" + line
    errors = [text for level, text in records if level in ("ERROR", "CRITICAL")]
    chained = ("The above exception was the direct cause", "During handling of the above")
    tracebacks, previous = 0, ""
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            tracebacks += not previous.startswith(chained)
        if line.strip():
            previous = line
    return {
        "errors": len(errors),
        "database is locked": sum("database is locked" in text for text in errors),
        "tracebacks": tracebacks,
    }


# A record's first line in the server's log: Prefect's "12:17:45.626 | ERROR   | ..." or
# uvicorn's "ERROR:    ...".
_LOG_RECORD = re.compile(r"^(?:\d\d:\d\d:\d\d\.\d+ \| (\w+)|([A-Z]+):\s)")


def _pause(client, deployment: str, attempts: int = 5) -> None:
    """Pause a deployment. A SQLite Prefect server busy recording five clinics' ticks can
    refuse even Prefect's client after its own retries ("database is locked"); try again."""
    from prefect.exceptions import PrefectHTTPStatusError

    for attempt in range(attempts):
        try:
            client.pause_deployment(client.read_deployment_by_name(deployment).id)
            return
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 503 or attempt == attempts - 1:
                raise
            time.sleep(1)


def _with_summary(client, run_ids: list) -> set:
    """The runs among ``run_ids`` that published a tick summary (did the work)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=run_ids), key=ArtifactFilterKey(like_="tick-")
        ),
        limit=200,
    )
    return {a.flow_run_id for a in found}


def _reread(client, run_id):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(run_id)
    except ObjectNotFound:
        return None


@contextlib.contextmanager
def bench_server(prefix: str) -> Iterator[Any]:
    """A Prefect server of its own (a free port, a temp home) with the relay's data and clinic
    folders in the same temp folder; yields a client of it. bench/latency.py uses it too."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        os.environ.update(
            RELAY_DATA_DIR=str(root / "data"),
            RELAY_CLINICS_DIR=str(root / "clinics"),
            PREFECT_HOME=str(root / "prefect"),
            PREFECT_LOGGING_LEVEL="ERROR",
        )
        try:
            with prefect_server(free_port(), home=root / "prefect", ui=False) as api:
                use_server(api)
                settings = temporary_settings({PREFECT_API_URL: api})
                with settings, get_client(sync_client=True) as client:
                    yield client
        finally:
            _keep_server_log(root / "prefect" / "server.log", prefix)


def _keep_server_log(log: Path, prefix: str) -> None:
    """The temp folder goes at the end, the server's log with it: a copy is kept (and named)
    when the server logged a traceback, so a stall or error in a finished run can be read."""
    if server_log_problems(log)["tracebacks"]:
        kept = Path(tempfile.gettempdir()) / f"{prefix}server-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
        shutil.copyfile(log, kept)
        print(f"the Prefect server logged errors; its log is kept at {kept}")


def main() -> None:
    parts = {"idle": idle, "sustained": sustained, "warm": warm_start}  # warm: a before/after
    chosen = os.environ.get("BENCH_TICK_PARTS", "idle,sustained").split(",")
    if chosen == ["roundtrips"]:  # no Prefect in it: no server to start
        idle_sync_round_trips()
        return
    with bench_server("bench-tick-") as client:
        for part in chosen:
            if part == "roundtrips":
                idle_sync_round_trips()
            else:
                parts[part](client)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        main()
