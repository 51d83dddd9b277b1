"""The fast lane in the tick (tasks/lane.py): after the summary, still holding the clinic's
database, the tick's run polls Cliniko for bookings until its next tick is due, as one task
(``fast-lane``) whose logs say what each poll that found something did (counts only).

It runs only in a deployment's run (a next tick is due: ``relay demo`` or a test calling the
flow does not wait), when ``fast_lane.enabled`` and the tick's steps all completed with the
breaker closed. It stops ``margin()`` before the next tick is due (this run's expected start +
``schedule.tick_every_minutes``, or the deployment's next scheduled run if sooner), when the run
is cancelled or its deployment paused, when the process that started the run (worker, Runner,
warm template) is gone, when clinic.yaml no longer says what the tick read (an edit: the next
tick reads it), when the last full sync's data turns older than ``sync.stale_after_minutes``
(the breaker's rule), or at its first failure (the tick then fails saying why). A
``relay worker`` that stops (a restart for new code) tells its runs in their lane so through
``WORKER_STOP`` (``Watch``): the lane stops at its next look, after a catch-up under way, and
the run ends Completed, its work done. A SIGTERM (a cancel, ``relay serve``'s Ctrl-C, a worker
whose grace ran out) ends the run at once, lane or not: Prefect's handler raises in the lane's
sleep, and a kill mid-catch-up leaves what a kill mid-tick leaves.
Between polls it steps aside for readers that ask for the database (``relay sql``, ``relay
preview`` ...: tasks/warehouse.py ``HandOver``), then opens it again and polls on; a kill while
it has stepped aside leaves what a kill between polls leaves (nothing open, nothing half done).
Its counts go into the tick's result (``lane``) and report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext

from blocks.resolve import cliniko_account, providers_for
from flows.feedback import record_unsubscribe_clicks
from tasks import lane, tick
from tasks.config import ClinicConfig, load_clinic
from tasks.tick import Summary
from tasks.warehouse import HandOver, data_out_of_errors, open_db

# The lane's run must have ended before a worker or Runner can see its next tick: they ask
# for runs due within their prefetch (10 s) and propose Pending at once, and a run that finds
# this one still holding the deployment's one slot is put back as AwaitingConcurrencySlot for
# the server's concurrency_slot_wait_seconds (30 s), a gap in which no lane runs. ENDING covers
# the last catch-up and the run's end after the lane.
ENDING = timedelta(seconds=5)
CHECK_EVERY = 10.0  # seconds between looks at the run's and the deployment's state
# `relay worker` names a file per warm run in WORKER_STOP (relay/worker.py). The lane creates
# `<file>.lane` as it starts (this run's steps are done: it can end cleanly); a worker that
# stops creates `<file>` and gives such a run WORKER_GRACE seconds to end by itself
# (relay/warm.py) before it is stopped as any run is (SIGTERM: Crashed).
WORKER_STOP = "RELAY_WORKER_STOP"
WORKER_STOPPING = "its worker is stopping"
CONFIG_CHANGED = "clinic.yaml changed since the tick read it (the next tick reads it)"
STALE = "the data is older than sync.stale_after_minutes (the next tick syncs it)"
WORKER_GRACE = 20.0


def after_tick(config: ClinicConfig, summary: Summary, result: dict) -> dict:
    """Run the lane when it should, and add its counts to the tick's ``result`` (and report)."""
    why = _not_now(config, summary)
    if why:
        return result
    run: Any = FlowRunContext.get().flow_run  # type: ignore[union-attr]  # inside the tick's run
    left = (next_tick_due(config, run) - margin() - datetime.now(UTC)).total_seconds()
    if left <= 0:  # a long tick: the next one is due already
        return result
    counts = fast_lane(config, time.monotonic() + left, str(run.id), str(run.deployment_id))
    result["lane"] = counts
    result["report"] = result.get("report", "") + (
        f"\n\n**Fast lane:** {counts['polls']} polls, {counts['found']} found changes, "
        f"{counts['sent']} messages sent ({counts['requests']} Cliniko requests; stopped: "
        f"{counts['stopped']})."
        + (
            f" It stepped aside for readers {counts['stepped_aside']} times."
            if counts.get("stepped_aside")
            else ""
        )
    )
    return result


def margin() -> timedelta:
    """How long before its next tick is due the lane stops: the prefetch of whatever starts
    the runs (a Runner's 10 s, a worker's PREFECT_WORKER_PREFETCH_SECONDS) and ENDING."""
    from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS

    prefetch = max(10.0, float(PREFECT_WORKER_PREFETCH_SECONDS.value()))
    return timedelta(seconds=prefetch) + ENDING


def _not_now(config: ClinicConfig, summary: Summary) -> str | None:
    if not config.fast_lane.enabled:
        return "off in clinic.yaml"
    if summary.failed or summary.held:
        return "the tick did not complete"
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        return "not a deployment's run: no next tick"
    return None


def next_tick_due(config: ClinicConfig, run: Any) -> datetime:
    """This run's expected start + the clinic's tick interval, or the deployment's next
    scheduled run if that comes sooner (a deployment served at another interval)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters, sorting

    expected = run.expected_start_time or datetime.now(UTC)
    due = expected + timedelta(minutes=config.schedule.tick_every_minutes)
    with get_client(sync_client=True) as client:
        scheduled = client.read_flow_runs(
            flow_run_filter=filters.FlowRunFilter(
                id=filters.FlowRunFilterId(not_any_=[run.id]),
                deployment_id=filters.FlowRunFilterDeploymentId(any_=[run.deployment_id]),
                state=filters.FlowRunFilterState(
                    type=filters.FlowRunFilterStateType(any_=["SCHEDULED", "PENDING"])
                ),
            ),
            sort=sorting.FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=1,
        )
    if scheduled and scheduled[0].expected_start_time:
        due = min(due, max(scheduled[0].expected_start_time, datetime.now(UTC)))
    return due


class Watch:
    """``should_stop`` for the lane: its worker is stopping (``WORKER_STOP``: a restart, as
    for new code; the run then ends Completed, its work done) or the process that started this
    run is gone (its worker or ``relay serve`` stopped or was killed: nobody would cancel or
    replace this run any more, and it would hold the clinic's database until its next tick,
    which a restarted worker would then find locked), both looked at before every poll (a
    catch-up under way ends first); the run cancelled, or its
    deployment paused (a Runner pauses its deployments as it shuts down) or gone, asked of the
    server at most every CHECK_EVERY seconds."""

    def __init__(
        self,
        run_id: str,
        deployment_id: str,
        config: ClinicConfig | None = None,
        stale_at: datetime | None = None,
    ) -> None:
        self.run_id, self.deployment_id = run_id, deployment_id
        self._stale_at = stale_at  # the breaker's rule (tasks/tick.py), kept while the lane runs
        self._config = config  # clinic.yaml as the tick read it
        self._read_as: tuple[int, int] | None = None  # its time and size when last found same
        self._next = time.monotonic() + CHECK_EVERY
        self._parent = os.getppid()
        self._stop = os.environ.get(WORKER_STOP) or None
        if self._stop is not None:  # its worker may let it end cleanly when it stops
            with contextlib.suppress(OSError):
                Path(self._stop + ".lane").touch()

    def __call__(self) -> str | None:
        if self._stop is not None and os.path.exists(self._stop):
            return WORKER_STOPPING
        if os.getppid() != self._parent:
            return "the process that started this run is gone"
        if self._config_changed():
            return CONFIG_CHANGED
        if self._stale_at is not None and datetime.now(UTC) >= self._stale_at:
            return STALE
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + CHECK_EVERY
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(self.run_id)).state
            if state is not None and state.type.value in ("CANCELLING", "CANCELLED"):
                return "the run was cancelled"
            try:
                if client.read_deployment(UUID(self.deployment_id)).paused:
                    return "the deployment was paused"
            except ObjectNotFound:
                return "the deployment was deleted"
        return None

    def _config_changed(self) -> bool:
        """Whether clinic.yaml says something else than the tick read: a trigger turned off or a
        sender fixed while the lane sent by the old file, until the next tick. Read again only
        when its time or size changed (a look is a stat); broken or gone counts as changed."""
        source = self._config.source if self._config is not None else None
        if source is None:
            return False
        try:
            seen = source.stat()
        except OSError:
            return True
        if (seen.st_mtime_ns, seen.st_size) == self._read_as:
            return False
        try:
            same = load_clinic(source) == self._config
        except Exception:  # noqa: BLE001 - half saved or invalid: the next tick says what
            return True
        self._read_as = (seen.st_mtime_ns, seen.st_size)
        return not same


def _record_clicks(config: ClinicConfig, warn: Callable[[str], None]):
    """The unsubscribe clicks the endpoint left as events on the Prefect server (another
    machine's, or this one's while the tick held the database), recorded before the lane sends:
    an unsubscribe stops marketing at once, as in the tick's dispatch step (flows/dispatch.py).
    A server that cannot be read is logged and sending goes on, as there."""

    def record(con: duckdb.DuckDBPyConnection) -> None:
        _, unavailable = record_unsubscribe_clicks.fn(con, config)
        if unavailable:
            warn(f"fast lane: {unavailable}")

    return record


def stale_at(config: ClinicConfig) -> datetime | None:
    """When the data the last full sync read turns older than ``sync.stale_after_minutes``: the
    breaker holds planning and sending from then, and the lane's partial syncs read only the
    watched resources (an invoice deleted since, a medical alert removed, are not seen)."""
    with open_db(config.database_path) as con:
        as_of = tick.freshness(con, datetime.now(UTC)).as_of
    return None if as_of is None else as_of + timedelta(minutes=config.sync.stale_after_minutes)


@task(cache_policy=NONE, task_run_name="fast-lane")
@data_out_of_errors()
def fast_lane(config: ClinicConfig, until: float, run_id: str, deployment_id: str) -> dict:
    """Poll Cliniko for bookings and send their welcomes and late reminders until ``until``
    (a monotonic moment); counts only."""
    logger = get_run_logger()
    path = config.database_path
    with cliniko_account(config).get_client() as client:
        counts = lane.run_lane(
            lambda: open_db(path),  # a cursor of the tick's hold, opened again after a reader
            client,
            config,
            providers_for(config),
            until=until,
            should_stop=Watch(run_id, deployment_id, config, stale_at(config)),
            log=logger.info,
            hand_over=HandOver(path),  # readers (relay sql ...) get in between polls
            before_send=_record_clicks(config, logger.warning),
        )
    return counts.as_dict()
