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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._starter_engine import EngineCommandStarter
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from flows.lane import WORKER_STOP
from relay import warm

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
            entrypoint = await self._entrypoint(flow_run, configuration)
            if entrypoint is None:
                return await super().run(flow_run, configuration, task_status)
            return await self._run_warm(flow_run, configuration, entrypoint, task_status)

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
            stop = str((self._stops or Path(tempfile.gettempdir())) / str(flow_run.id))
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
