"""A tick's slot never stays taken by a run that is gone, and a tick that waits says why.

Each tick deployment has a concurrency limit of 1 (relay deploy, ``relay.serve.tick_deployment``):
Prefect gives a run the deployment's one slot when it goes Pending, under a lease its process
renews, and takes the slot back when the run ends. A run whose process was killed (a
force-stopped ``relay serve``, a crashed worker) never ends by itself: the slot stays taken until
its lease expires, and a server that keeps leases in memory (Prefect's default) forgets them when
it restarts, so after a restart nothing ever gives the slot back and every later tick waits in
AwaitingConcurrencySlot for ever.

Three things put it right, all through Prefect's own states and limits:

- ``relay serve`` starts its server with leases kept on disk (``LEASE_STORAGE``), so the server's
  repossessor still takes back an expired lease after a restart (every 15 s).
- At start-up, before anything is served, ``release_stopped_runs`` marks every run of the served
  deployments still Pending, Running or Cancelling **Crashed**: nothing of this session runs yet,
  so those runs belong to a stopped one. Crashed gives their slot back.
- On a schedule (``Housekeeper``): a tick Running while its clinic's database lock has been free
  on ``DEAD_AFTER`` passes in a row is marked Crashed (a live tick holds that lock from its first
  step to its summary, so its process is gone: ``crash_dead_ticks``); a slot taken while no run
  of its deployment is Pending, Running or Cancelling is given back (``release_unheld_slots``);
  and a tick that has waited for its slot
  longer than a tick interval gets a log line in the UI saying which run holds it and since when
  (``explain_waits``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from flows.lost import HOLDING
from flows.lost import crash as _crash
from flows.lost import limit_of as _limit
from flows.lost import runs_of as _runs
from flows.lost import set_active as _set_active

# The server keeps concurrency leases in files under PREFECT_HOME, not in memory (Prefect setting).
LEASE_STORAGE = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"
}
# A tick put back because the previous one (in its fast lane) still held the slot tries again
# after this many seconds, not Prefect's 30: the lane polls no more once its run has ended, and
# until the next tick's lane starts no booking is welcomed (Prefect setting).
SLOT_WAIT = {"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5"}
WAITING = "AwaitingConcurrencySlot"
# Passes in a row a Running tick's database lock must be seen free before the tick counts as gone.
DEAD_AFTER = 3


def release_stopped_runs(client, deployment_ids: list[UUID], why: str) -> list[str]:
    """Mark Crashed every run of these deployments that still holds (or is about to hold) a slot.

    Only for start-up, before this process serves anything: no run of it exists yet, so each such
    run belongs to a process that is gone. Returns the names of the runs marked."""
    marked = []
    for deployment_id in deployment_ids:
        for run in _runs(client, deployment_id, HOLDING):
            _crash(client, deployment_id, run.id, why)
            marked.append(run.name)
    release_unheld_slots(client, deployment_ids)
    return marked


def database_free(clinic: str) -> bool:
    """Whether no process holds the clinic's database (a live tick always does)."""
    from tasks.config import load_clinic
    from tasks.warehouse import in_use

    return not in_use(load_clinic(clinic).database_path)


def crash_dead_ticks(client, deployment_ids: list[UUID], seen_free: dict[UUID, int]) -> list[str]:
    """Mark Crashed each Running tick whose clinic's database was free on DEAD_AFTER passes in a
    row (``seen_free`` counts them, kept by the caller). Returns the names of the runs marked."""
    marked, running = [], set()
    for deployment_id in deployment_ids:
        for run in _runs(client, deployment_id, ["RUNNING"]):
            clinic = (run.parameters or {}).get("clinic")
            if not clinic:
                continue
            running.add(run.id)
            try:
                free = database_free(clinic)
            except Exception:  # a clinic this process cannot read: leave its runs be
                continue
            seen_free[run.id] = seen_free.get(run.id, 0) + 1 if free else 0
            if seen_free[run.id] >= DEAD_AFTER:
                why = (
                    f"its process is gone: {clinic}'s database stayed free for {DEAD_AFTER} "
                    "checks in a row while it was Running (a live tick holds it throughout)"
                )
                _crash(client, deployment_id, run.id, why)
                marked.append(run.name)
    for run_id in set(seen_free) - running:
        del seen_free[run_id]
    return marked


def release_unheld_slots(client, deployment_ids: list[UUID]) -> list[str]:
    """Give back the slots no run holds: a deployment's limit counts more taken slots than it has
    runs Pending, Running or Cancelling. Returns what was released, for a log line."""
    released = []
    for deployment_id in deployment_ids:
        limit = _limit(client, deployment_id)
        if limit is None or limit.active_slots == 0:
            continue
        holders = len(_runs(client, deployment_id, HOLDING))
        # Read again: a run that ended between the reads gave its slot back itself.
        taken = min(limit.active_slots, _limit(client, deployment_id).active_slots)
        if taken > holders:
            _set_active(client, limit.name, holders)
            released.append(f"{limit.name}: {taken - holders} slot(s) no run held")
    return released


def explain_waits(
    client, deployment_ids: list[UUID], longer_than: timedelta, told: dict[UUID, datetime]
) -> int:
    """Log on each run waiting for its slot longer than ``longer_than`` which run holds the slot
    and since when; again every ``longer_than`` while it waits. ``told``: when each run was last
    told (kept by the caller). Returns how many runs were told."""
    from prefect.client.schemas.actions import LogCreate

    now = datetime.now(UTC)
    logs = []
    for deployment_id in deployment_ids:
        waiting = [
            r
            for r in _runs(client, deployment_id, ["SCHEDULED"])
            if r.state_name == WAITING
            and r.expected_start_time  # when it was due, not when the scheduler made it
            and now - r.expected_start_time > longer_than
        ]
        if not waiting:
            continue
        holders = _runs(client, deployment_id, HOLDING)
        why = (
            "; ".join(
                f"run '{h.name}' ({h.id}) holds it, {h.state_name} since "
                f"{h.state.timestamp:%Y-%m-%d %H:%M:%S} UTC"
                for h in holders
                if h.state
            )
            or "no run holds it (a stopped run's slot; it is given back within a minute)"
        )
        for run in waiting:
            if run.id in told and now - told[run.id] < longer_than:
                continue
            minutes = (now - run.expected_start_time).total_seconds() / 60
            logs.append(
                LogCreate(
                    name="relay.slots",
                    level=logging.WARNING,
                    message=f"Waiting {minutes:.0f} min for this deployment's one slot: {why}. "
                    "A tick runs once the slot is free (docs/scaling.md, 'A killed tick never keeps the slot').",
                    timestamp=now,
                    flow_run_id=run.id,
                )
            )
            told[run.id] = now
    if logs:
        client.create_logs(logs)
    return len(logs)


@dataclass
class Housekeeper:
    """A thread that gives back unheld slots and explains long waits, every ``every`` seconds."""

    deployment_ids: list[UUID]
    interval: timedelta
    every: float = 30.0
    told: dict[UUID, datetime] = field(default_factory=dict)
    seen_free: dict[UUID, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run_once(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            crash_dead_ticks(client, self.deployment_ids, self.seen_free)
            release_unheld_slots(client, self.deployment_ids)
            explain_waits(client, self.deployment_ids, self.interval, self.told)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.run_once()
            except Exception:  # the server may be busy or stopping; try again next time
                logging.getLogger("relay.slots").debug("housekeeping pass failed", exc_info=True)

    def __enter__(self) -> Housekeeper:
        self._thread = threading.Thread(target=self._loop, name="relay-slots", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
