"""Waiting out the Prefect server's task-run backlog before writing to it again.

A Prefect server on SQLite records task-run states from events, in the background. An API write
that lands while it does (a subflow, an artifact) can fail with "database is locked" (HTTP 503),
and Prefect's client then sleeps 2 s before trying again. The tick's next step after one that
ran a few dozen tasks (a task per resource, a task per model) met that wait almost every time:
an idle tick on the 20,000-patient clinic took 9.0 s (median of 4) without ``settle`` and 4.9 s
with it. Reads never conflict, so ``settle`` reads until the server has caught up, then the tick
goes on. On Postgres (docs/scaling.md) the first reads already agree: two small queries.

What to wait for is known, not guessed: the step's own task run. Its states are the last events
the client sent for the step (its inner task runs finished inside it), and the client sends
events, and the server records them, in order; once the server has the step's final state it has
the rest. A number of task runs merely holding still between two reads was not enough: on a busy
machine a read saw 20 of 40 task runs, all final, twice (CI, stop 36).
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def settle(
    last: UUID | None,
    flow_run_id: UUID | None = None,
    timeout: float = 3.0,
    every: float = 0.05,
) -> float:
    """Read (at most ``timeout`` seconds) until the server knows the ``last`` task run the
    caller ran and every task run it knows of the flow run (default: the current one) is
    final. Returns the seconds waited (none without a task run or a flow run). Never raises:
    it is only a wait."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.context import FlowRunContext

    started = time.monotonic()
    if last is None:
        return 0.0
    if flow_run_id is None:
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return 0.0
        flow_run_id = context.flow_run.id
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    try:
        with get_client(sync_client=True) as client:
            while time.monotonic() - started < timeout:
                known = {t.id: t.state_type for t in client.read_task_runs(flow_run_filter=runs)}
                if last in known and all(
                    s is not None and s.value in FINAL for s in known.values()
                ):
                    break
                time.sleep(every)
    except Exception as exc:  # noqa: BLE001 - a failed read only means no wait
        logging.getLogger(__name__).debug("settle: %s", type(exc).__name__)
    return time.monotonic() - started
