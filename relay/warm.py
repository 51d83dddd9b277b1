"""Warm starts: each flow run forked from a template process that has already imported Prefect
and our flows, instead of a new Python that imports them again for every tick.

Prefect 3.8.8 starts every run in a fresh interpreter: the deployments a Runner serves
(``prefect.serve``, used by ``relay serve`` and the benchmarks) and the process worker's runs
with ``python -m prefect.engine`` (the worker's behind a second Python, its workspace
supervisor). Each pays
``import prefect`` and our imports (about 2.5 s of CPU here) before the run does anything.

Here a *template* is started once per serving process: multiprocessing's forkserver, told to
preload ``PRELOAD``. It only imports: it opens no connection, no database, no socket of ours and
starts no thread (``tests/flows/test_warm.py`` checks a run's process has none of the worker's).
Each run is then ``fork()`` of the template: its own OS process, a child of the template (which
reaps it and reports its exit code), with its own pid, memory and module state, killed alone by
a cancel from the UI or a SIGKILL, and heartbeating itself. Before the run starts its process
is given exactly the environment Prefect would have given a fresh one (``_become``): the
environment replaced, not merged (``PREFECT_API_URL``, ``PREFECT__FLOW_RUN_ID``, the control
channel, the heartbeat frequency, the job variables' env), the working directory, Prefect's
global settings and logging set up again from that environment; at its end, the exit handlers
a fresh interpreter would run (Prefect drains its log and event workers there).

``install`` puts it in Prefect's own seam (a module-level function its starter calls, "patch the
module to override"): ``run_process`` of ``EngineCommandStarter`` (``python -m prefect.engine``:
the deployments ``prefect.serve`` serves, as ``relay serve`` and the benchmarks do, and the runs
of ``relay worker``, relay/worker.py). Same arguments, same result: a started process.

A run forked this way stops as a cold one does: a cancel (the Runner's or worker's SIGTERM to
its pid) or ``relay serve``'s Ctrl-C (SIGTERM, then SIGKILL, to its whole tree, the template
and its runs included) ends it in its fast lane too, and a run whose template is gone (its
worker killed) leaves its lane at once (flows/lane.py). One difference: a ``relay worker``
that stops first lets its runs in their fast lane end by themselves, Completed
(``_let_its_lane_end``), and stops only what is left.

The template imports the code on disk when the serving process starts it: code changed later
is picked up by restarting the worker (or ``relay serve``), not by the next run. Where the
platform has no fork (Windows) or the template cannot start, each run starts Prefect's normal
way, with a warning.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

# What the template imports: Prefect's engine and every flow a deployment of ours runs.
PRELOAD = [
    "relay",  # the offline Prefect defaults, before Prefect
    "prefect.engine",
    "prefect.flow_engine",
    "flows.tick",
    "flows.campaign",
    "flows.report",
    "flows.restore",
    "relay.warm",
    "relay._numpy",  # DuckDB imports it at every build's first create_function: once, here
]

logger = logging.getLogger("relay.warm")
_warned: set[str] = set()


def available() -> bool:
    """Whether runs can be forked from a template on this platform."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def _context(extra: list[str] | None = None):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, *(extra or [])])
    return context


def start_template(extra: list[str] | None = None) -> bool:
    """Start the template and wait until it has imported ``PRELOAD`` (and ``extra``) and forked
    a first, empty process: runs then start at once, and a template that cannot work is found
    here, once. False (with a warning) where runs must start Prefect's way."""
    if not available():
        fallback("this platform has no fork")
        return False
    try:
        ready = _context(extra).Process(target=_ready, name="relay-warm-check")
        ready.start()
        ready.join(timeout=300)
    except (OSError, EOFError) as exc:
        fallback(f"the template process did not start ({type(exc).__name__}: {exc})")
        return False
    if ready.exitcode != 0:
        fallback(f"the template's first process ended with {ready.exitcode}")
        return False
    return True


def _ready() -> None:
    """The template's first process: it exists, so the imports are done."""


def fallback(why: str) -> None:
    """Say once per reason that runs start Prefect's normal way (a new Python each)."""
    if why not in _warned:
        _warned.add(why)
        warnings.warn(
            f"relay: warm start unavailable ({why}); each run starts a new Python instead",
            RuntimeWarning,
            stacklevel=3,
        )
        logger.warning("warm start unavailable (%s); each run starts a new Python", why)


# --- in the run's process ---------------------------------------------------------------------


def _become(env: Mapping[str, str], cwd: str | None, quiet: bool = False) -> None:
    """Make this forked process what a fresh one started by Prefect would be."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    if quiet:  # the job's stream_output: false
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    import prefect.context
    from prefect.logging.configuration import setup_logging

    # Settings and logging were read from the template's environment at import: read again.
    prefect.context.refresh_global_settings_context()
    setup_logging(incremental=False)


def _run_engine(env: dict[str, str], cwd: str, quiet: bool, new_session: bool) -> None:
    """What ``python -m prefect.engine`` does, in this process made fresh."""
    try:
        if new_session:  # as Prefect isolates a worker's run from the worker's signals
            os.setsid()
        _become(env, cwd, quiet)
        sys.argv = ["prefect.engine"]  # the run's id comes from PREFECT__FLOW_RUN_ID
        _run_main("prefect.engine")
    finally:
        atexit._run_exitfuncs()


def _run_main(module: str) -> None:
    """``python -m module`` in this process. The template imported the module already, which is
    the point; runpy's warning about it ("found in sys.modules ... unpredictable behaviour") went
    to the worker's output once per run, so it is silenced here, in the run's own process."""
    import runpy

    warnings.filterwarnings(
        "ignore", message=f"'{module}' found in sys.modules", category=RuntimeWarning
    )
    runpy.run_module(module, run_name="__main__", alter_sys=False)


# --- in the serving process -------------------------------------------------------------------


async def run_process_in_template(
    command: list[str],
    *,
    stream_output: Any = False,
    task_status: Any = None,
    task_status_handler: Any = None,
    **kwargs: Any,
):
    """``prefect.utilities.processutils.run_process`` as EngineCommandStarter calls it, with
    ``python -m prefect.engine`` forked from the template (the same environment, directory,
    output and session); any other command, or a template that fails, goes to Prefect's."""
    import anyio
    import anyio.to_thread
    from prefect.utilities.processutils import get_sys_executable, run_process

    # Only Prefect's own engine command (not a command of a deployment's job variables).
    engine = list(command) == [get_sys_executable(), "-m", "prefect.engine"]
    if (
        not engine
        or set(kwargs) - {"env", "cwd", "start_new_session"}
        or stream_output
        not in (
            True,
            False,
        )
    ):
        return await run_process(
            command,
            stream_output=stream_output,
            task_status=task_status,
            task_status_handler=task_status_handler,
            **kwargs,
        )
    env = {k: v for k, v in (kwargs.get("env") or os.environ).items() if v is not None}
    start = partial(
        start_engine,
        env,
        str(kwargs.get("cwd") or os.getcwd()),
        quiet=not stream_output,
        new_session=bool(kwargs.get("start_new_session")),
    )
    try:
        process = await anyio.to_thread.run_sync(start)
    except (OSError, EOFError) as exc:
        fallback(f"the template process failed ({type(exc).__name__}: {exc})")
        return await run_process(
            command,
            stream_output=stream_output,
            task_status=task_status,
            task_status_handler=task_status_handler,
            **kwargs,
        )
    try:
        if task_status is not None:
            task_status.started(
                task_status_handler(process) if task_status_handler else process.pid
            )
        await anyio.to_thread.run_sync(process.join, abandon_on_cancel=True)
    finally:
        if process.is_alive():  # cancelled: its worker is stopping
            await _let_its_lane_end(process, env)
        if process.is_alive():  # as Prefect's open_process, stop it
            process.terminate()
    return process


async def _let_its_lane_end(process: Any, env: Mapping[str, str]) -> None:
    """A run in its fast lane (its steps done), of a worker that names its stop file: told that
    its worker is stopping, and given ``WORKER_GRACE`` seconds to end by itself (flows/lane.py),
    shielded from the worker's own shutdown. Any other run is stopped at once, as before."""
    import multiprocessing.connection

    import anyio
    import anyio.to_thread

    from flows.lane import WORKER_GRACE, WORKER_STOP

    stop = env.get(WORKER_STOP)
    if not stop or not os.path.exists(stop + ".lane"):
        return
    try:
        open(stop, "a").close()
    except OSError:
        return
    with anyio.CancelScope(shield=True):
        # its sentinel, not join: the cancelled join's thread still waits on the process
        await anyio.to_thread.run_sync(
            multiprocessing.connection.wait, [process.sentinel], WORKER_GRACE
        )


def install(extra: list[str] | None = None) -> bool:
    """Make the Runners and workers of this process fork their runs from the template, and
    start the template now. The seam Prefect documents (patch the module to override):
    ``EngineCommandStarter``'s ``run_process`` (a Runner's deployments, as ``prefect.serve``
    adds them for ``relay serve`` and the benchmarks, and a worker's runs). A flow served as
    such (``flow.serve``, Prefect's ``run_flow_in_subprocess``) still starts Prefect's way:
    nothing of ours serves one. False, with a warning, where runs keep Prefect's start."""
    if not start_template(extra):
        return False
    import prefect.runner._starter_engine as engine

    engine.run_process = run_process_in_template  # type: ignore[assignment]
    return True


def start_engine(env: dict[str, str], cwd: str, quiet: bool = False, new_session: bool = False):
    """Fork a run from the template that does what ``python -m prefect.engine`` does, with
    exactly ``env`` as its environment and ``cwd`` as its directory. Returns the started
    process (pid, exitcode, join); raises OSError or EOFError if the template failed."""
    process = _context().Process(target=_run_engine, args=(env, cwd, quiet, new_session))
    process.start()
    return process
