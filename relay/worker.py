"""``relay worker``: Prefect's process worker, each run forked from a warm template (relay/warm.py).

``RelayWorker`` is a ``ProcessWorker`` (type ``process``: the pools ``relay deploy`` makes, the
same job template, job variables, ``--limit``, cancellation, crash reporting) that changes one
thing, how a run's process starts. Prefect's process worker starts two new Pythons per run (its
workspace supervisor, which runs the pull steps, then ``python -m prefect.engine``), each
importing Prefect before the run does anything. ``relay deploy``'s deployments have no pull
step, no custom command and a module-path entrypoint, so a run needs neither: it is forked
from the template with the environment the engine would have had (the worker's, Prefect's
settings, the job variables' env, ``PREFECT__FLOW_RUN_ID``, the control channel) in a fresh
temporary directory, and does what ``python -m prefect.engine`` does.

A worker rather than the Runner (``prefect.serve``) because a fleet's machines pick runs from
a work pool's queue (docs/scaling.md, one home per clinic): the worker keeps the pool, queue
and job variables an operator manages with ``relay deploy``, and only the start changes.

Stopped (SIGTERM, Ctrl-C), it lets each warm run in its fast lane end by itself, Completed, for
up to ``flows.lane.WORKER_GRACE`` seconds (relay/warm.py ``_let_its_lane_end``): a restart for
new code then crashes no tick that had done its work. Each run is told through a file of its
own in the worker's temporary directory (``flows.lane.WORKER_STOP`` in its environment).

A run of any other deployment (pull steps, a command in its job variables, a file-path
entrypoint) starts Prefect's normal way, and so does every run where the template cannot be
used (no fork on the platform, or the template failed to start), with a warning.

``Stopping`` bounds the worker's stop (SIGTERM, Ctrl-C) whatever the Prefect server does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._starter_engine import EngineCommandStarter
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from flows.lane import WORKER_GRACE, WORKER_STOP
from relay import warm
from relay.serve import healthy
from relay.tree import STOP_SIGNALS, alive, descendants, hup_ignored, signal_one, started

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


@contextlib.contextmanager
def _removed(*paths: str) -> Iterator[None]:
    """The files gone when the block ends (a run's stop files)."""
    try:
        yield
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def warm_entrypoint(deployment, configuration: ProcessJobConfiguration) -> str | None:
    """The entrypoint a warm start may import, or None when the run needs Prefect's start: a
    command of its own, pull steps (code placed per run), or a file path (read from the run's
    directory) cannot be served by the code the template imported."""
    if deployment is None or configuration._command_configured:
        return None
    entrypoint = deployment.entrypoint
    if deployment.pull_steps or not entrypoint or ":" in entrypoint:
        return None
    return entrypoint


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "overrides the registered type 'process'": on purpose

    class RelayWorker(ProcessWorker):
        """A process worker whose runs start warm (module docstring)."""

        type = "process"

        def __init__(self, *args: Any, preload: list[str] | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._preload = preload or []
            self._warm = False
            self._stops: Path | None = None  # each warm run's stop file (flows/lane.py)
            # pid -> "name (id)" and its lane's file (flows/lane.py), for Stopping
            self.running: dict[int, tuple[str, str]] = {}

        async def __aenter__(self) -> RelayWorker:
            # The template imports once, before the first run is taken (not during it).
            self._warm = await anyio.to_thread.run_sync(warm.install, self._preload)
            self._stops = Path(tempfile.mkdtemp(prefix="relay-worker-"))
            await super().__aenter__()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            try:
                await super().__aexit__(*exc_info)
            finally:
                if self._stops is not None:
                    shutil.rmtree(self._stops, ignore_errors=True)

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            status = _Recorded(
                task_status or anyio.TASK_STATUS_IGNORED,
                self.running,
                (f"{flow_run.name} ({flow_run.id})", self._stop_file(flow_run) + ".lane"),
            )
            try:
                entrypoint = await self._entrypoint(flow_run, configuration)
                if entrypoint is None:
                    return await super().run(flow_run, configuration, status)
                return await self._run_warm(flow_run, configuration, entrypoint, status)
            finally:
                if status.pid is not None:
                    self.running.pop(status.pid, None)

        def _stop_file(self, flow_run: FlowRun) -> str:
            return str((self._stops or Path(tempfile.gettempdir())) / str(flow_run.id))

        async def _entrypoint(self, flow_run: FlowRun, configuration) -> str | None:
            if not self._warm or flow_run.deployment_id is None:
                return None
            deployment = await self.client.read_deployment(flow_run.deployment_id)
            return warm_entrypoint(deployment, configuration)

        async def _run_warm(
            self, flow_run: FlowRun, configuration, entrypoint: str, task_status
        ) -> ProcessWorkerResult:
            """ProcessWorker.run without the workspace supervisor: a temporary directory unless
            the job names one, Prefect's executor (Pending -> Running, crash on a bad exit,
            cancel) and its engine start, forked from the template."""
            status = task_status or anyio.TASK_STATUS_IGNORED
            directory = (
                contextlib.nullcontext(configuration.working_dir)
                if configuration.working_dir
                else tempfile.TemporaryDirectory(suffix="prefect")
            )
            execution: FlowRunExecutionResult | None = None
            # A run in its fast lane is let end by itself when this worker stops (relay/warm.py)
            stop = self._stop_file(flow_run)
            with directory as working_dir, _removed(stop, stop + ".lane"):
                async with FlowRunExecutorContext() as ctx:
                    # ProcessWorker's own start of `python -m prefect.engine` (job env over
                    # settings, a session of its own), which warm.install forks from the
                    # template; the entrypoint as its workspace supervisor would set it.
                    starter = EngineCommandStarter(
                        cwd=Path(working_dir).resolve(),
                        env={
                            **configuration.env,
                            "PREFECT__FLOW_ENTRYPOINT": entrypoint,
                            WORKER_STOP: stop,
                        },
                        stream_output=configuration.stream_output,
                        control_channel=ctx.control_channel,
                        isolate_process_group=True,
                        env_overrides_settings=True,
                    )
                    executor = ctx.create_executor(
                        flow_run,
                        starter,
                        resolve_flow=load_flow_from_flow_run,  # for crashed hooks, as Prefect
                        propose_submitting=False,
                    )

                    async def execute(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
                        nonlocal execution
                        execution = await executor.submit(task_status=task_status)

                    async with anyio.create_task_group() as group:
                        handle = await group.start(execute)
                        if handle.pid is None:
                            raise RuntimeError("Flow run process has no PID")
                        status.started(handle.pid)
            if execution is None or execution.status_code is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(
                status_code=execution.status_code, identifier=str(execution.handle.pid)
            )


class _Recorded:
    """A run's task status that also notes the run's pid in ``running`` when it starts."""

    def __init__(self, status, running: dict[int, tuple[str, str]], run: tuple[str, str]):
        self.status, self.running, self.run = status, running, run
        self.pid: int | None = None

    def started(self, value: int | None = None) -> None:
        if value is not None:
            self.pid = value
            self.running[value] = self.run
        self.status.started(value)


# How long a stopping worker's run, told to stop (SIGTERM), has to end before it is killed if the
# Prefect server does not answer then. Told so, a run reports Crashed to the server and exits: in
# a second when the server answers, and it retries for minutes when it does not.
STOP_GRACE_SECONDS = 10.0
# How long it has while the server answers: it is reporting its end, which took over 10 s once
# under the whole test suite's load (Prefect's own teardown waits up to 2 s for each of its
# heartbeat and suspension-watch threads before the report). Killed, it stayed Running until the
# lost-run automation marked it Crashed and alerted. Within the worker's own deadline, below.
STOP_GRACE_ANSWERING_SECONDS = 25.0
# How long after the stop signal (and the lane's grace, flows.lane.WORKER_GRACE, when a run was
# in its lane) the worker exits at the latest, whatever it waits for: Prefect's own grace for a
# stopping worker's runs.
STOP_DEADLINE_SECONDS = 30.0


class Stopping:
    """The stop of `relay worker` on SIGTERM or Ctrl-C, bounded whatever the server does.

    The first signal cancels the worker's task: Prefect's teardown then sends each run it
    started SIGTERM (a run in its fast lane first given ``WORKER_GRACE`` seconds to end by
    itself, relay/warm.py) and waits for it to end. The thread below tells each run the same
    (its stop file, its SIGTERM) at the same moments, so a run is told even when that teardown
    does not reach it (under the whole suite's load a run once slept on, untold, until killed
    25 s later). A run so told reports Crashed to the server as it exits, and with the server
    gone (stopped, restarting, unreachable) it retries that report for a minute or more
    (``PREFECT_CLIENT_MAX_RETRIES``): the worker waited for it all that time, as Prefect's own
    kill after its grace never came (its stop had been cancelled).
    So from the signal on, a thread gives each run ``grace`` seconds after its SIGTERM
    (``answering_grace`` while the server at ``api`` answers: the run is reporting), then
    SIGKILLs what is left of it: what a killed tick leaves, which the lost-run automation and
    the slot's lease already handle (docs/scaling.md). The worker's own teardown and Prefect's
    last sends at exit wait on the server too, without end for one that does not answer (a
    network gone): ``deadline`` seconds after the signal (after the lane's grace too, if a run
    was in its lane) the process exits whatever it waits for. A second signal kills the runs
    and exits at once.

    A run is a process the worker started one on (``running``), or one below the worker in a
    session of its own (Prefect starts each so, and relay/warm.py's runs do the same), with
    everything below it; the template is not one."""

    # relay serve's: Ctrl-C, SIGTERM, and SIGHUP (the terminal closed) unless ignored (nohup)
    SIGNALS = STOP_SIGNALS

    def __init__(
        self,
        say: Callable[[str], object],
        running: Mapping[int, tuple[str, str]] | None = None,
        grace: float = STOP_GRACE_SECONDS,
        deadline: float = STOP_DEADLINE_SECONDS,
        api: str | None = None,
        answering_grace: float = STOP_GRACE_ANSWERING_SECONDS,
    ):
        self._say = say
        self.running = running if running is not None else {}  # RelayWorker.running
        self.grace = grace
        self.deadline = deadline
        self.api = api  # the Prefect server's API URL: with none, never asked
        self.answering_grace = answering_grace
        self._answered: tuple[float, bool] | None = None  # (when asked, whether it answered)
        self._names: dict[int, str] = {}
        self._lanes: set[int] = set()  # runs in their fast lane as the stop began
        self.signal_name: str | None = None
        self.at: float | None = None
        self._now = threading.Event()
        self._runs_done = threading.Event()
        self._watch: threading.Thread | None = None

    def say(self, text: str) -> None:
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            self._say(text)

    def take_signals(self, loop, task) -> None:
        """In the worker's loop: each stop signal stops ``task`` (the worker) and its runs."""
        for signum in self._taken():
            loop.add_signal_handler(signum, self._signalled, signum, task)

    def _taken(self) -> list[int]:
        return [s for s in self.SIGNALS if s != signal.SIGHUP or not hup_ignored()]

    def _signalled(self, signum: int, task) -> None:
        if self._watch is not None:
            self._now.set()  # a second signal: no more grace
            return
        self.signal_name = signal.Signals(signum).name
        self.at = time.monotonic()
        # As the stop began (a cancelled run forgets its pid), before warm.py looks at the lanes
        self._names = {pid: name for pid, (name, _) in self.running.items()}
        self._lanes = {pid for pid, (_, lane) in self.running.items() if os.path.exists(lane)}
        self._stop_files = {pid: self.running[pid][1].removesuffix(".lane") for pid in self._lanes}
        self._watch = threading.Thread(target=self._stop_runs, name="relay-stop", daemon=True)
        self._watch.start()
        task.cancel()

    def finish(self) -> None:
        """After the worker's loop has ended (and with it its signal handlers): if stopping,
        wait for the runs to end or be killed; a signal meanwhile, or later, is the second."""
        if self._watch is None:
            return
        for signum in self._taken():
            signal.signal(signum, lambda *_: self._now.set())
        self._runs_done.wait()

    def _stop_runs(self) -> None:  # in its own thread, from the first signal on
        assert self.at is not None
        lane = WORKER_GRACE if self._lanes else 0.0
        self.say(
            f"Stopping on {self.signal_name}: runs in progress are told to stop"
            + (f" (in their fast lane, {lane:g} s to end first)" if lane else "")
            + f", and killed if still running {self.grace:g} s later"
            + (
                f" ({self.answering_grace:g} s while the Prefect server answers)."
                if self.api
                else "."
            )
        )
        # The runs the worker started, by pid (a run orphaned, its template stopped by the same
        # stop, as systemd stops every process of the service, is no longer below the worker),
        # and every process below it in a session of its own.
        seen = {pid: since for pid in self._names if (since := started(pid)) is not None}
        for stop in self._stop_files.values():  # a run in its lane: "your worker is stopping"
            with contextlib.suppress(OSError):
                open(stop, "a").close()
        told_by_us: set[int] = set()
        killed: list[int] = []
        while True:
            for pid in runs_below(os.getpid()):
                if (since := started(pid)) is not None:
                    seen.setdefault(pid, since)
            left = [pid for pid, since in seen.items() if pid not in killed and alive(pid, since)]
            for pid in left:
                # Told to stop at once, or after the lane's grace (a process not known by pid,
                # a run's child, as late as any); then ``grace`` seconds.
                told = lane if pid in self._lanes or pid not in self._names else 0.0
                if (
                    pid in self._names
                    and pid not in told_by_us
                    and time.monotonic() >= self.at + told
                ):
                    # The SIGTERM Prefect's teardown of the worker sends (a moment later: both
                    # pending at once, taken once), here too: that teardown may not tell it.
                    signal_one(pid, seen[pid], signal.SIGTERM)
                    told_by_us.add(pid)
                if self._now.is_set() or self._outstayed(self.at + told):
                    signal_one(pid, seen[pid], signal.SIGKILL)
                    killed.append(pid)
            if len(left) == len([pid for pid in left if pid in killed]):
                break
            self._now.wait(0.2)
        names = sorted({self._names[pid] for pid in killed if pid in self._names})
        if killed:
            why = (
                "though the Prefect server answers"
                if self._answered and self._answered[1]
                else "a stopping run reports to the Prefect server: is it down?"
            )
            self.say(
                f"Killed what was left of {len(names) or 'the'} run(s) "
                f"{time.monotonic() - self.at:.0f} s after the stop ({why}): "
                f"{', '.join(names) or 'unnamed'}. Each stays Running until the lost-run "
                "automation marks it Crashed; the next tick catches up."
            )
        self._runs_done.set()
        deadline = self.at + lane + self.deadline
        if self._now.wait(max(0.0, deadline - time.monotonic())):
            self.say("Stopped at once on a second stop signal.")
        else:
            self.say(
                f"Still stopping {lane + self.deadline:g} s after {self.signal_name} (Prefect waiting "
                "on a server that does not answer): exiting now; its last logs and events for "
                "the server are not sent."
            )
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        self._exit(0)

    def _exit(self, code: int) -> None:
        os._exit(code)  # whatever Prefect still waits for (tests: not their own process)

    def _outstayed(self, told: float) -> bool:
        """Whether a run told to stop at ``told`` (monotonic) is past its grace: ``grace`` if
        the server does not answer (asked at most once a second), ``answering_grace`` if it
        does."""
        now = time.monotonic()
        if now < told + self.grace:
            return False
        if now >= told + max(self.grace, self.answering_grace) or self.api is None:
            return True
        if self._answered is None or now - self._answered[0] >= 1.0:
            self._answered = (now, healthy(self.api))
        return not self._answered[1]


def runs_below(pid: int) -> set[int]:
    """The runs below ``pid``: processes in a session other than its own, and theirs."""
    own = _session(pid)
    return {child for child in descendants(pid) if (s := _session(child)) is not None and s != own}


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone
        return None
