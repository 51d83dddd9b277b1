"""``relay serve``: watch the pipeline run in the Prefect UI, with no accounts and no setup.

One process holds everything: a local Prefect server (its UI on
127.0.0.1), the sandbox Cliniko with its clock running (so the clinic keeps booking, cancelling
and arriving), and the demo clinic's deployments served from here with ``prefect.serve`` (each
run in its own subprocess, no work pool or worker needed). `relay deploy`'s deployments are the
same flows for a real install with a worker (docs/scaling.md). Each run's process is forked from
a template that imported Prefect and the flows once, when ``relay serve`` started
(relay/warm.py): restart it to run code changed since.

Ctrl-C stops it all within seconds and quietly (``supervise``): that process runs in a session of
its own, so the terminal's Ctrl-C reaches none of it (the server, the runner and each run would
each print their own traceback and shut down at their own pace); ``relay serve`` itself takes the
Ctrl-C, sends SIGTERM to every process of the tree at once and SIGKILL to any still there after
``STOP_GRACE`` seconds. SIGTERM (systemd, ``kill``) and SIGHUP (the terminal closed, SSH dropped)
stop it the same way. The serving process cannot outlive ``relay serve`` (it gets SIGTERM when
``relay serve`` dies, even by SIGKILL), and on its own SIGTERM it stops its tree the same way at
once (``_stop_self``), not after Prefect's Runner has waited for the runs in progress.
If the Prefect server dies under it (killed, out of memory), nothing can run or be seen: it
says so in one line and stops the rest the same way, exiting 1 (``_server_gone``).
Their output past start-up goes to ``.prefect/serve.log``. A run killed
mid-step resumes at the next tick, like any crash (the ledger, the sync's watermarks), and the
next ``relay serve`` marks it Crashed and gives its slot back (relay/slots.py). The tree is stopped
from outside, not left to the shutdown of a Runner with runs in progress (a tick in its fast
lane, flows/lane.py, lasts until its next tick is due). ``relay serve`` is the subreaper of its
tree, so a process orphaned while stopping
(a run the Runner started as it stopped) is still found and stopped, and each process is known
by pid and start time, so a reused pid is never signalled or waited for.

The server is also what tests and benchmarks start (``prefect_server``): the real thing, as an
operator runs it, on a port of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from relay.tree import (  # noqa: F401  (relay.serve's names of old: scripts, bench, tests)
    STOP_GRACE,
    STOP_SIGNALS,
    _become_subreaper,
    _die_with_parent,
    _take_stop_signals,
    alive,
    descendants,
    started,
    stop_tree,
    supervise_command,
)
from tasks.errors import UserFacingError

# `prefect` with Python's cycle collector off the server's event loop (relay/prefect_server.py)
PREFECT_SERVER = [sys.executable, "-m", "relay.prefect_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_env() -> dict[str, str]:
    """The environment of a Prefect server relay starts: relay's server settings under the
    operator's own (relay/slots.py: leases on disk, so a restarted server still takes back the
    slot of a run killed before; a put-back tick tries again within seconds)."""
    from relay.slots import LEASE_STORAGE, SLOT_WAIT

    return {**LEASE_STORAGE, **SLOT_WAIT, **os.environ}


@contextlib.contextmanager
def prefect_server(
    port: int,
    *,
    home: Path | None = None,
    ui: bool = True,
    log: Path | None = None,
    on_exit: Callable[[int, Path], None] | None = None,
) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1:port until the block ends; yields the API URL.
    Through relay/prefect_server.py: on SQLite it would otherwise wedge under load.
    ``on_exit(code, log)`` is called (from a thread of its own) if the server ends by itself
    before the block does: killed, crashed, out of memory.

    Stopped with SIGTERM (the server exits in a few seconds; docs/reference.md, Prefect).
    """
    if port_in_use(port):
        raise UserFacingError(
            f"Port {port} on 127.0.0.1 is already in use (another Prefect server?). "
            "Stop it, or pick another port with --port."
        )
    env = {**server_env(), "PREFECT_UI_ENABLED": "true" if ui else "false"}
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"
    env["PREFECT_UI_URL"] = f"http://127.0.0.1:{port}"
    env["PREFECT_UI_API_URL"] = api  # else the UI calls port 4200 whatever --port says
    log_path = log or Path(env.get("PREFECT_HOME", ".prefect")) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [*PREFECT_SERVER, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        ending = threading.Event()  # set as the block ends: the server's exit is then ours
        try:
            deadline = time.monotonic() + 120
            while not healthy(api):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise UserFacingError(f"The Prefect server did not start; see {log_path}")
                time.sleep(0.3)
            if on_exit is not None:
                threading.Thread(
                    target=_watch, args=(proc, ending, on_exit, log_path), daemon=True
                ).start()
            yield api
        finally:
            ending.set()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _watch(proc, ending: threading.Event, on_exit, log_path: Path) -> None:
    code = proc.wait()
    if not ending.is_set():
        on_exit(code, log_path)


def healthy(api: str) -> bool:
    """Whether the Prefect server at ``api`` answers its health check within 2 s."""
    try:
        return httpx.get(f"{api}/health", timeout=2).json() is True
    except (httpx.HTTPError, ValueError):
        return False


def use_server(api: str) -> None:
    """Point this process (and the runs it starts) at the server. Before Prefect is imported."""
    os.environ["PREFECT_API_URL"] = api
    os.environ["PREFECT_UI_URL"] = api.removesuffix("/api")


def tick_deployment(clinic: str, every: timedelta, name: str | None = None):
    """The clinic's tick as a served deployment, with the same limits as relay deploy's."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.tick import clinic_tick

    return clinic_tick.to_deployment(
        name=name or f"{clinic}-tick",
        interval=every,
        parameters={"clinic": clinic, "max_lateness_minutes": 2 * every.total_seconds() / 60},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        description=f"{clinic}: the whole pipeline every {every.total_seconds() / 60:g} minutes",
    )


def report_deployment(clinic: str):
    """The clinic's weekly owner report (flows/report.py:owner_report, parameter ``clinic``),
    on clinic.yaml's ``report.weekday`` at ``report.at`` in the clinic's time zone."""
    from prefect.schedules import Cron

    from flows.report import owner_report
    from tasks.config import load_clinic

    config = load_clinic(clinic)
    if config.report is None:
        raise UserFacingError(f"{config.source}: no report: section; the report has no owner.")
    return owner_report.to_deployment(
        name=f"{clinic}-report",
        schedule=Cron(config.report.cron, timezone=config.time_zone),
        parameters={"clinic": clinic},
        description=f"{clinic}: the owner's weekly report, {config.report.weekday}s at "
        f"{config.report.at:%H:%M} ({config.time_zone})",
    )


def on_demand_deployments() -> list:
    """Flows run by a person with parameters (the campaign)."""
    from flows.campaign import send_campaign

    return [send_campaign.to_deployment(name="demo-campaign", parameters={"clinic": "demo"})]


STOPPED = "relay serve stopped while this run was going; its process is gone"


def serve_demo(
    port: int, every_minutes: float, patients: int, seed: int, speed: float, echo
) -> None:
    """Start everything, trigger the first tick at once, and serve until Ctrl-C."""
    from relay import warm
    from relay.slots import Housekeeper, release_stopped_runs
    from sandbox.cliniko import SandboxClinic, SandboxServer
    from tasks.config import load_clinic
    from tasks.providers.outbox import outbox_dir, start_run
    from tasks.unsubscribe.app import serving

    config = load_clinic("demo")
    with prefect_server(port, on_exit=partial(_server_gone, echo)) as api:
        use_server(api)
        from prefect.client.orchestration import get_client

        for stale in (config.database_path, config.database_path.with_suffix(".duckdb.wal")):
            stale.unlink(missing_ok=True)
        # The outbox goes with the database, as in `relay demo`: a message file of an earlier
        # session would stand for this session's message with the same key (never written), and
        # the index says which run it holds.
        start_run(
            outbox_dir("demo"),
            f"relay serve --seed {seed} --patients {patients}",
            time_zone=config.time_zone,
        )
        from tasks.home import forget_home

        forget_home("demo")  # a new database on purpose: the old one's home would refuse it
        clinic = SandboxClinic.generate(
            seed=seed, patients=patients, start=datetime.now(UTC).replace(second=0, microsecond=0)
        )
        with SandboxServer(clinic, rate_limit=None, auto_advance_speed=speed) as sandbox:
            os.environ.update(
                CLINIKO_API_KEY=clinic.api_key,
                CLINIKO_BASE_URL=sandbox.base_url,
                CLINIKO_CONTACT="demo@localhost",
                CLINIKO_REQUESTS_PER_MINUTE="1200",
            )
            tick = tick_deployment("demo", timedelta(minutes=every_minutes))
            weekly = [report_deployment("demo")] if config.report else []
            deployments = [tick, *weekly, *on_demand_deployments()]
            tick_id = tick.apply()
            with get_client(sync_client=True) as client:
                stopped = release_stopped_runs(client, [tick_id], STOPPED)
                client.create_flow_run_from_deployment(tick_id)
            report_line = (
                f"Report:       the owner's week, {config.report.weekday}s at "
                f"{config.report.at:%H:%M} (demo-report; run it now from the UI)\n"
                if config.report
                else ""
            )
            if stopped:
                echo(f"Marked Crashed (a stopped session's, their slot given back): {stopped}")
            echo(
                f"Prefect UI:   {api.removesuffix('/api')}  (Deployments, Runs, Artifacts)\n"
                f"Sandbox:      {sandbox.base_url}  ({patients} patients, clock {speed:g}x)\n"
                f"Ticks:        demo every {every_minutes:g} min; the first one starts now\n"
                f"{report_line}"
                f"Outbox:       {outbox_dir('demo') / 'index.html'}\n"
                f"Unsubscribe:  {config.providers.unsubscribe_url}/<token> (links in marketing)\n"
                "Ctrl-C stops everything."
            )
            link = urlsplit(config.providers.unsubscribe_url)
            with serving({"demo": config}, link.hostname or "127.0.0.1", link.port or 80):
                every = timedelta(minutes=every_minutes)
                with Housekeeper([tick_id], every):
                    warm.install()  # each run forked from a template (relay/warm.py)
                    _serve(deployments, limit=4)
    echo("Stopped: server, sandbox and runs.")


def _serve(deployments: list, limit: int) -> None:
    """``prefect.serve(*deployments, limit=limit)``, except on SIGTERM: Prefect's Runner takes
    SIGTERM for a graceful shutdown that waits for the runs in progress (a tick in its fast lane
    lasts until its next tick is due: 40 s and more), and installs that handler as it starts,
    over any of ours. Here SIGTERM goes to the handler that was in place before it started
    (``main``'s ``_stop_self``: the tree stopped at once), as it would without the Runner."""
    import asyncio

    from prefect.runner import Runner

    ours = signal.getsignal(signal.SIGTERM)

    class Serving(Runner):
        def handle_sigterm(self, *args: object, **kwargs: object) -> None:
            if callable(ours):
                ours(signal.SIGTERM, None)
            else:
                super().handle_sigterm(*args, **kwargs)

    runner = Serving(limit=limit, pause_on_shutdown=True)
    for deployment in deployments:
        runner.add_deployment(deployment)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


def _server_gone(echo, code: int, log: Path) -> None:
    """The Prefect server ended by itself (killed, crashed): nothing is scheduled, run or shown
    any more, so say so and stop the rest as a stop signal does, rather than serve nothing (the
    runner printing a traceback a minute). The next ``relay serve`` marks the runs it left
    Crashed and gives their slots back."""
    time.sleep(1)  # a stop signal reaches the server and this process at once: let it act
    if _STOPPING.is_set():
        return
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    with contextlib.suppress(OSError):
        echo(
            f"The Prefect server stopped by itself ({how}; its log: {log}). Without it nothing "
            "runs: stopping everything. Start relay serve again."
        )
    _stop_tree_and_exit(f"as the Prefect server stopped ({how})", 1)


def _stop_self(signum: int, frame: object) -> None:
    """In the serving process (``main``), on a stop signal: stop everything below it (the Prefect
    server, the run template and its runs) as ``supervise`` does, SIGTERM then SIGKILL after
    ``STOP_GRACE``, and exit; its own threads (the sandbox, the unsubscribe endpoint) end with
    it. So it stops promptly whoever signals it: ``supervise`` stopping the tree, a ``kill`` of
    this pid alone, or the SIGTERM it gets when ``supervise`` dies (``_die_with``)."""
    if _STOPPING.is_set():  # already stopping (the server gone: ``_server_gone``)
        return
    _stop_tree_and_exit(f"on {signal.Signals(signum).name}", 0)


_STOPPING = threading.Event()  # the serving process is stopping its tree (whatever the cause)


def _stop_tree_and_exit(why: str, code: int) -> None:
    """Stop every process below this one (SIGTERM, then SIGKILL after STOP_GRACE) and exit."""
    _STOPPING.set()
    if threading.current_thread() is threading.main_thread():  # signals: the main thread's
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
    begun = time.monotonic()
    killed = stop_tree(None, root=os.getpid())
    after = f"; killed after {STOP_GRACE:g} s: {'; '.join(killed)}" if killed else ""
    with contextlib.suppress(OSError):
        print(
            f"relay.serve: stopped {why} ({time.monotonic() - begun:.1f} s{after})",
            file=sys.stderr,
            flush=True,
        )
    os._exit(code)


def supervise(args: list[str], echo, log: Path) -> int:
    """Run ``python -m relay.serve ARGS`` in a session of its own until it ends or a stop signal
    (Ctrl-C, SIGTERM, SIGHUP); on one, stop its whole process tree (SIGTERM, then SIGKILL after
    STOP_GRACE). Its stderr goes to ``log``. Returns its exit code (0 after a stop signal)."""
    return supervise_command([sys.executable, "-m", "relay.serve", *args], echo, log)


def main(argv: list[str] | None = None) -> None:
    """The process ``supervise`` starts: ``serve_demo`` with the options of ``relay serve``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m relay.serve")
    for name, kind in (("port", int), ("every", float), ("patients", int), ("seed", int)):
        parser.add_argument(f"--{name}", type=kind, required=True)
    parser.add_argument("--speed", type=float, required=True)
    a = parser.parse_args(argv)

    def echo(text: str) -> None:
        print(text, flush=True)

    _become_subreaper()  # a run orphaned below this process is still in the tree it stops
    _take_stop_signals(_stop_self)
    try:
        serve_demo(a.port, a.every, a.patients, a.seed, a.speed, echo)
    except UserFacingError as exc:
        print(exc, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    import relay  # noqa: F401  (the offline Prefect defaults, before Prefect is imported)

    main()
