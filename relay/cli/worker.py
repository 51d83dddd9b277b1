"""``relay worker``: a machine's worker, each run forked from a warm template (relay/worker.py)."""

from __future__ import annotations

import typer


def worker_command(
    pool: str = typer.Option("local", "--pool", help="Work pool (relay deploy's: local)."),
    queue: list[str] = typer.Option(
        None,
        "--queue",
        help="Work queue(s) to serve (default: this machine's, machine-<RELAY_MACHINE or host name>).",
    ),
    limit: int = typer.Option(None, "--limit", help="At most this many runs at once."),
    name: str = typer.Option(None, "--name", help="The worker's name (default: Prefect's)."),
    preload: list[str] = typer.Option(
        None, "--preload", help="Another module the template imports (your own flows)."
    ),
) -> None:
    """Serve the pool's queue like `prefect worker start --type process`, but start each run
    by forking a template that has imported Prefect and the flows once (not a new Python per
    run). Restart it to run code changed on disk. Needs PREFECT_API_URL; Ctrl-C or SIGTERM
    stops it."""
    import asyncio

    from relay.cli.flowrun import need_api_url

    api = need_api_url("the worker takes its runs from there")
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS

    from relay.worker import RelayWorker, Stopping
    from tasks.home import queue_for, this_machine

    # Never every queue of the pool: a worker serving another machine's queue takes that
    # machine's ticks, which then refuse (not their home) instead of running there.
    queues = queue or [queue_for(this_machine())]
    typer.echo(f"Serving {pool}/{', '.join(queues)}")
    worker = RelayWorker(
        name=name,
        work_pool_name=pool,
        work_queues=queues,
        limit=limit,
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
        preload=preload or [],
    )
    # SIGTERM stops it as Ctrl-C does (Prefect's own worker ignores it for a long while), and
    # runs that outstay the grace are killed (relay/worker.py, Stopping).
    stopping = Stopping(typer.echo, running=worker.running, api=api)

    async def serve() -> None:
        stopping.take_signals(asyncio.get_running_loop(), asyncio.current_task())
        await worker.start(printer=typer.echo)

    try:
        asyncio.run(serve())
    except asyncio.CancelledError:
        if stopping.at is None:
            raise
    finally:
        stopping.finish()
    if stopping.at is not None:
        stopping.say(f"Worker {worker.name!r} stopped on {stopping.signal_name}.")
