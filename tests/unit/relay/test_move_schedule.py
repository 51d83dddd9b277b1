"""`relay clinic move` leaves no tick of the clinic waiting on the old home's queue: a run keeps
the queue it was made on, so the scheduler's runs there are deleted (the resumed schedule makes
new ones on the new queue) and a run a person made is named, not deleted."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from relay.cli.clinic import drop_stale_schedule


def run(name: str, queue: str, state_name: str = "Late", auto: bool = True):
    return SimpleNamespace(
        id=uuid.uuid4(), name=name, work_queue_name=queue, state_name=state_name,
        auto_scheduled=auto,
    )  # fmt: skip


class FakeClient:
    def __init__(self, runs):
        self.runs = {r.id: r for r in runs}
        self.filters = []

    def read_flow_runs(self, flow_run_filter, limit=None):
        self.filters.append(flow_run_filter)
        return list(self.runs.values())

    def delete_flow_run(self, run_id):
        del self.runs[run_id]


def test_the_old_queues_scheduled_ticks_go_and_a_persons_run_is_named():
    late = run("late-tick", "machine-a")
    waiting = run("awaiting-slot", "machine-a", "AwaitingConcurrencySlot")
    by_hand = run("campaign-by-hand", "machine-a", "Scheduled", auto=False)
    retrying = run("retrying", "machine-a", "AwaitingRetry")
    on_new = run("new-tick", "machine-b", "Scheduled")
    client = FakeClient([late, waiting, by_hand, retrying, on_new])
    deployments = [SimpleNamespace(id=uuid.uuid4())]

    dropped, kept = drop_stale_schedule(client, deployments, "machine-b")

    assert {r.name for r in dropped} == {"late-tick", "awaiting-slot"}
    assert kept == [by_hand]
    assert set(client.runs) == {by_hand.id, retrying.id, on_new.id}
    (asked,) = client.filters  # only the clinic's deployments, only runs yet to start
    assert asked.deployment_id.any_ == [deployments[0].id]
    assert asked.state.type.any_ == ["SCHEDULED"]


def test_a_clinic_without_deployments_asks_nothing():
    client = FakeClient([run("late-tick", "machine-a")])
    assert drop_stale_schedule(client, [], "machine-b") == ([], [])
    assert client.filters == []
