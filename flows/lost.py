"""Runs of a tick deployment whose process is gone, and how one is marked Crashed without taking
a slot from a live run.

Each tick deployment has a concurrency limit of 1 (relay deploy, ``relay.serve.tick_deployment``):
Prefect gives a run the deployment's one slot when it goes Pending, under a lease its process
renews, and takes the slot back when the run ends. So while a tick of a clinic runs, no other
run of its deployment can be Pending, Running or Cancelling with a live process: Prefect gave
this tick the slot because the other run's lease ran out. Most lost runs are marked Crashed
within about a minute by the lost-run automation (relay/alerts.py, from their heartbeats), but
two kinds are not watched by it: a run killed before its first heartbeat soon after a deploy
and before ``announce_scheduled`` (below) ran, and a run lost while Pending, before its worker said Submitting. ``crash_lost_runs`` marks those
Crashed at the start of the clinic's next tick, saying which tick found them, so a lost run never
stays "Running" for good and the "a run failed or crashed" alert names it.

The first kind is made rare by ``announce_scheduled``, at the start of every tick: Prefect links a
run's state event to the one before it when the two are less than 5 minutes apart (``follows``,
prefect.server.models.events), and its triggers hold a linked event until the one it follows has
been seen, for up to 15 minutes. A run the scheduler makes gets a Scheduled state but no event for
it, so a run started within 5 minutes of being made (the first ticks after a deploy, a resume or a
move) has its Pending, Running and Submitting events held for 15 minutes, and the lost-run
automation cannot open its watch before the run's first heartbeat. The event Prefect would have
sent carries the state's id as its own: the tick sends it, for its own run and for its
deployment's runs made in the last 5 minutes that are due soon, and the held events go through at
once (an event already seen, for a run that had its Scheduled event, is ignored by id).

Outside a tick (``relay clinic move``, which must not wait for a run that will never end) the rule
is read from the deployment's limit: ``lost_holders``. Prefect keeps a run's lease on the server
only (in memory, in files under the server's PREFECT_HOME, or in Redis; no API reads it), and when
a lease expires the server's repossessor takes its slot back from the limit's ``active_slots``
(every 15 s). So a limit counting fewer taken slots than runs holding one has lost runs among
them: all of them when it counts none, and with a limit of 1 all but the run that took the slot
last (each run took it when no lease was left, so the earlier ones' leases had run out).

``crash`` is the one place a run is marked Crashed by relay (also ``relay serve``'s start-up and
housekeeping, relay/slots.py). A Crashed state gives a slot back (Prefect's
ReleaseFlowConcurrencySlots): the run's lease's, or, when its lease has run out, one of the
deployment's limit anyway. So that the second case takes nothing from a live run, the limit is
first given one to give back whenever it counts fewer taken slots than runs that hold one.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

HOLDING = ["PENDING", "RUNNING", "CANCELLING"]
# Prefect links state events less than this apart (prefect.server.models.events._timing_is_tight)
TIGHT = timedelta(minutes=5)


def runs_of(client, deployment_id: UUID, states: list[str]) -> list[Any]:
    from prefect.client.schemas import filters

    return client.read_flow_runs(
        flow_run_filter=filters.FlowRunFilter(
            deployment_id=filters.FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=filters.FlowRunFilterState(type=filters.FlowRunFilterStateType(any_=states)),
        ),
        limit=200,
    )


def limit_of(client, deployment_id: UUID) -> Any:
    """The deployment's concurrency limit as it is now (None: it has none)."""
    return client.read_deployment(deployment_id).global_concurrency_limit


def set_active(client, name: str, slots: int) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=slots))


def crash(client, deployment_id: UUID, run_id: UUID, why: str) -> None:
    """Mark the run Crashed; it gives back only the slot it held (see the module's docstring)."""
    from prefect.states import Crashed

    limit = limit_of(client, deployment_id)
    if limit is not None and limit.active_slots < len(runs_of(client, deployment_id, HOLDING)):
        # Its lease is gone (the count no longer includes it): Crashed gives a slot back, so
        # give the limit one to give back rather than take a live run's or be refused.
        set_active(client, limit.name, limit.active_slots + 1)
    client.set_flow_run_state(run_id, Crashed(message=why), force=True)


def crash_lost_runs(run: Any) -> list[str]:
    """At the start of a tick (``run``: its flow run, holding its deployment's one slot): mark
    Crashed every other run of the deployment still Pending, Running or Cancelling. Returns
    their names. Nothing is done for a run without a deployment, or a deployment whose limit is
    not 1 (then another run may hold a slot of its own)."""
    if run.deployment_id is None:
        return []
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        # best effort: refused, the runs' events are seen 15 minutes late, as before
        with contextlib.suppress(httpx.HTTPError, PrefectHTTPStatusError):
            announce_scheduled(client, run)
        others = [r for r in runs_of(client, run.deployment_id, HOLDING) if r.id != run.id]
        if not others:
            return []
        limit = limit_of(client, run.deployment_id)
        if limit is None or limit.limit != 1:
            return []
        for other in others:
            crash(
                client, run.deployment_id, other.id,
                f"Its process was lost: it was still {other.state_name} when the clinic's next "
                f"tick, {run.name} ({run.id}), had the deployment's one slot (marked by that "
                "tick; it catches up on what the lost run did not do).",
            )  # fmt: skip
        return [other.name for other in others]


def slot_taken_at(client, run: Any) -> datetime:
    """When the run last took its deployment's slot: the first state of its last unbroken stretch
    of Pending, Running or Cancelling states (Prefect secures the slot on the way into Pending and
    releases it on the way out of the three)."""
    states = sorted(client.read_flow_run_states(run.id), key=lambda st: st.timestamp)
    taken = states[-1].timestamp if states else datetime.min.replace(tzinfo=UTC)
    for state in reversed(states):
        if state.type.value not in HOLDING:
            break
        taken = state.timestamp
    return taken


def lost_holders(client, deployment_id: UUID) -> list[Any]:
    """The runs of the deployment still Pending, Running or Cancelling whose slot's lease ran out
    (see the module's docstring): all of them when the limit counts no taken slot, and with a
    limit of 1 all but the one that took the slot last. None when it cannot be told (no limit, or
    a limit over 1 with slots taken)."""
    holders = runs_of(client, deployment_id, HOLDING)
    if not holders:
        return []
    limit = limit_of(client, deployment_id)  # read after the runs: a run found took its slot before
    if limit is None or limit.active_slots >= len(holders):
        return []
    if limit.active_slots == 0:
        return holders
    if limit.limit != 1:
        return []
    last = max(holders, key=lambda run: slot_taken_at(client, run))
    return [run for run in holders if run.id != last.id]


def crash_lost_holders(client, deployment_id: UUID, why: str) -> list[Any]:
    """Mark Crashed the deployment's ``lost_holders``; returns the runs marked. A run whose state
    changed since it was read (it ended, so its slot came back) is left as it is."""
    marked = []
    for run in lost_holders(client, deployment_id):
        now = client.read_flow_run(run.id)
        if now.state is None or run.state is None or now.state.id != run.state.id:
            continue
        crash(client, deployment_id, run.id, why)
        marked.append(run)
    return marked


def announce_scheduled(client, run: Any, now: datetime | None = None) -> int:
    """Send the ``prefect.flow-run.Scheduled`` events the scheduler did not (see the module's
    docstring), with the state's id as the event's: for ``run`` (a tick, now Running) when it was
    made less than two TIGHT ago, and for its deployment's Scheduled runs made less than TIGHT ago
    and due within TIGHT. Returns how many were sent."""
    from prefect.client.schemas import filters

    now = now or datetime.now(UTC)
    found: list[tuple[Any, Any]] = []
    if run.created is not None and now - run.created < 2 * TIGHT:
        found += [
            (run, st) for st in client.read_flow_run_states(run.id)
            if st.type.value == "SCHEDULED" and now - st.timestamp < 2 * TIGHT
        ]  # fmt: skip
    upcoming = client.read_flow_runs(
        flow_run_filter=filters.FlowRunFilter(
            deployment_id=filters.FlowRunFilterDeploymentId(any_=[run.deployment_id]),
            state=filters.FlowRunFilterState(
                type=filters.FlowRunFilterStateType(any_=["SCHEDULED"])
            ),
            expected_start_time=filters.FlowRunFilterExpectedStartTime(before_=now + TIGHT),
        ),
        limit=20,
    )
    found += [
        (other, other.state) for other in upcoming
        if other.state is not None and now - other.state.timestamp < TIGHT
    ]  # fmt: skip
    if not found:
        return 0
    events = [scheduled_event(flow_run, st) for flow_run, st in found]
    client.request("POST", "/events", json=events)
    return len(events)


def scheduled_event(flow_run: Any, state: Any) -> dict:
    """The event Prefect sends for a run's Scheduled state, as prefect.server.models.events
    makes it (its id is the state's); names and ids only."""
    return {
        "id": str(state.id),
        "occurred": state.timestamp.isoformat(),
        "event": f"prefect.flow-run.{state.name}",
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
            "prefect.resource.name": flow_run.name,
            "prefect.state-name": state.name,
            "prefect.state-type": state.type.value,
            "prefect.state-timestamp": state.timestamp.isoformat(),
        },
        "related": [
            {
                "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                "prefect.resource.role": "deployment",
            },
            {
                "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
                "prefect.resource.role": "flow",
            },
        ],  # fmt: skip
        "payload": {"intended": {"from": None, "to": state.type.value}},
    }
