"""The Cliniko sync flow: Cliniko -> raw.* in the clinic's DuckDB, a task per resource (one
task for all of them when there is little to read, as on most ticks).

Thin wiring around ``tasks.cliniko.sync.run_sync`` (where the paging, the run record and
reconciliation live), the same function ``python -m tasks.cliniko.sync`` runs.
Tasks take the open connection and client, so they run with ``cache_policy=NONE`` and return
counts only: Prefect may persist results, and a result must never hold a patient's data.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from blocks.resolve import cliniko_account
from flows.artifacts import Artifact, StepOutput, artifact_key, call
from tasks.cliniko import sync as extract
from tasks.cliniko.resources import RESOURCES
from tasks.config import load_clinic
from tasks.warehouse import data_out_of_errors, open_db


@task(cache_policy=NONE)
@data_out_of_errors()
def check_access(sync: extract.Sync) -> dict[str, int]:
    """First page of every resource before any write: a bad key or permission stops us here."""
    return {name: counts.expected for name, counts in sync.open().items()}


@task(cache_policy=NONE, task_run_name="sync-{resource}")
@data_out_of_errors()
def sync_resource(sync: extract.Sync, resource: str) -> dict:
    counts = sync.sync_resource(resource)
    get_run_logger().info(
        "%s: %d new, %d updated, %d quarantined, %d removed; %d requests (%d rate-limited)",
        resource,
        counts.new,
        counts.updated,
        counts.quarantined,
        counts.removed,
        counts.requests,
        counts.rate_limited,
    )
    return asdict(counts)


@task(cache_policy=NONE, task_run_name="sync-all-resources")
@data_out_of_errors()
def sync_resources(sync: extract.Sync, resources: list[str]) -> dict:
    """Every resource in one task, for a sync with little to read (an ordinary tick's): a task
    per resource would cost the Prefect server more than the reading (docs/scaling.md)."""
    return {resource: sync_resource.fn(sync, resource) for resource in resources}


class SyncProgress:
    """A Prefect progress artifact and, on a terminal, a progress bar, both counting rows."""

    EVERY_SECONDS = 2.0  # each artifact update is an API call: not one per page
    # Below this many rows a sync takes seconds: no progress artifact or bar (three API calls
    # an incremental sync every few minutes would pay for nothing to watch).
    MIN_ROWS = 2_000

    def __init__(self, sync: extract.Sync) -> None:
        self.sync = sync
        self.expected = 0
        self.artifact: Any = None  # the progress artifact's id, once created
        self.bar: Any = None  # a rich Progress on a terminal
        self._last = 0.0

    def start(self, expected: dict[str, int]) -> None:
        self.expected = max(1, sum(expected.values()))
        if self.expected < self.MIN_ROWS:
            return
        self.artifact = create_progress_artifact(0.0, description="Cliniko sync: rows read")
        if sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress()
            self.bar.start()
            self._bar_task = self.bar.add_task("Cliniko sync", total=self.expected)

    def page(self, counts: extract.ResourceCounts) -> None:
        done = min(self.expected, sum(c.rows for c in self.sync.counts.values()))
        if self.bar:
            self.bar.update(self._bar_task, completed=done, description=counts.resource)
        now = time.monotonic()
        if self.artifact and now - self._last >= self.EVERY_SECONDS:
            self._last = now
            self._update(100.0 * done / self.expected)

    def finish(self, completed: bool) -> None:
        if self.bar:
            self.bar.stop()
        if self.artifact and completed:
            self._update(100.0)

    def _update(self, percent: float) -> None:
        """Progress is for watching, never a reason to fail or stall a sync: when the Prefect
        server cannot take an update (after its client's retries), stop updating."""
        try:
            update_progress_artifact(self.artifact, percent)
        except Exception as exc:  # noqa: BLE001 - any failure of the UI's progress bar
            self.artifact = None
            try:
                logger = get_run_logger()
            except MissingContextError:
                logger = logging.getLogger(__name__)
            logger.warning(
                "The sync's progress artifact could not be updated (%s); the sync goes on "
                "without it.",
                type(exc).__name__,
            )


def sweep_in_tasks(sync: extract.Sync, as_tasks: bool = True) -> int:
    """What ``Sync.run`` does, with a progress artifact: the first page of every path, then every
    resource (a task each when there is much to read). ``as_tasks=False`` (inside the tick's
    sync task) runs the little there is to read as plain calls. Returns the task runs made."""
    progress = SyncProgress(sync)
    sync.on_page = progress.page
    try:
        expected = call(check_access, as_tasks)(sync)
        progress.start(expected)
        names = [resource.name for resource in RESOURCES]
        if sync.full or sum(expected.values()) >= SyncProgress.MIN_ROWS:
            for name in names:  # long work: a task per resource shows where it is
                sync_resource(sync, name)
            made = len(names) + as_tasks
        else:
            call(sync_resources, as_tasks)(sync, names)
            made = 2 * as_tasks
    except BaseException:
        sync.close()
        progress.finish(completed=False)
        raise
    sync.close()
    progress.finish(completed=True)
    return made


def summary_markdown(clinic: str, kind: str, counts: dict[str, extract.ResourceCounts]) -> str:
    """Counts per resource, nothing else: this is published where anyone with the UI can read it."""
    lines = [
        f"# Cliniko sync: {clinic} ({kind})",
        "",
        "| resource | new | updated | unchanged | quarantined | removed | requests | 429s | seconds | watermark |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in counts.values():
        lines.append(
            f"| {c.resource} | {c.new} | {c.updated} | {c.unchanged} | {c.quarantined} | "
            f"{c.removed} | {c.requests} | {c.rate_limited} | {c.seconds:.1f} | {c.watermark or '-'} |"
        )
    total = sum(c.requests for c in counts.values())
    lines += ["", f"{total} requests in all."]
    return "\n".join(lines)


def sync_clinic(clinic: str, reconcile: bool = False, *, as_tasks: bool = True) -> StepOutput:
    """Bring the clinic's DuckDB copy of Cliniko up to date; reconcile ids when asked or due.
    The flow below and the tick's sync task both run this (``as_tasks``: see sweep_in_tasks)."""
    config = load_clinic(clinic)
    account = cliniko_account(config)
    made = 0

    def sweep(sync: extract.Sync) -> None:
        nonlocal made
        made = sweep_in_tasks(sync, as_tasks)

    with account.get_client() as client, open_db(config.database_path) as con:
        extract.bound_memory(con)
        full = reconcile or extract.reconcile_due(
            con, config.sync.reconcile_every_hours, datetime.now(UTC)
        )
        counts = extract.run_sync(
            con,
            client,
            overlap=timedelta(minutes=config.sync.overlap_minutes),
            reconcile=full,
            sweep=sweep,
            country=config.country,
        )
    artifact = Artifact(
        key=artifact_key("cliniko-sync", config.clinic),
        description=f"Cliniko sync of {config.clinic}: rows and requests per resource",
        markdown=summary_markdown(config.clinic, "reconcile" if full else "incremental", counts),
    )
    return StepOutput({name: asdict(c) for name, c in counts.items()}, [artifact], made)


@flow(name="cliniko-sync", flow_run_name="sync-{clinic}")
def cliniko_sync(clinic: str = "demo", reconcile: bool = False) -> dict[str, dict]:
    """Bring the clinic's DuckDB copy of Cliniko up to date; reconcile ids when asked or due."""
    with data_out_of_errors():
        return sync_clinic(clinic, reconcile).publish()
