"""`relay clinic move` does not wait for a run that will never end: a run still Pending, Running
or Cancelling whose slot's lease ran out (the server took the slot back from the deployment's
limit) is marked Crashed, by name and id, and the move goes on; a run that still holds its lease
is waited for. The rule is flows/lost.py's; the client here is a fake that keeps Prefect's
books as the server does (a slot taken on the way into Pending, given back on the way out)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prefect.client.schemas.objects import StateType

from relay.cli.clinic import wait_for_ticks

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
HOLDING = {"PENDING", "RUNNING", "CANCELLING"}


def state(kind: str, at: datetime, name: str | None = None):
    return SimpleNamespace(
        id=uuid.uuid4(), type=StateType(kind), name=name or kind.title(), timestamp=at,
        message=None,
    )  # fmt: skip


class FakeServer:
    """One tick deployment with a limit of 1 and its runs, as the Prefect client sees them."""

    def __init__(self, active_slots: int):
        self.deployment = SimpleNamespace(id=uuid.uuid4(), name="north-tick")
        self.limit = SimpleNamespace(name="deployment:north", limit=1, active_slots=active_slots)
        self.runs: dict = {}
        self.history: dict = {}
        self.ends_after: dict = {}  # run id -> reads of the runs after which it completes

    def add(self, name: str, *states) -> uuid.UUID:
        run_id = uuid.uuid4()
        self.history[run_id] = list(states)
        self.runs[run_id] = SimpleNamespace(
            id=run_id, name=name, deployment_id=self.deployment.id, state=states[-1],
            state_name=states[-1].name,
        )  # fmt: skip
        return run_id

    def _set(self, run_id, new) -> None:
        run = self.runs[run_id]
        if run.state.type.value in HOLDING and new.type.value not in HOLDING:
            self.limit.active_slots = max(0, self.limit.active_slots - 1)  # the slot comes back
        run.state, run.state_name = new, new.name
        self.history[run_id].append(new)

    # -- the client's methods the code calls --

    def read_flow_runs(self, flow_run_filter, limit=None):
        for run_id in list(self.ends_after):
            self.ends_after[run_id] -= 1
            if self.ends_after[run_id] <= 0:
                del self.ends_after[run_id]
                self._set(run_id, state("COMPLETED", T0 + timedelta(minutes=9)))
        kinds = {getattr(k, "value", k) for k in flow_run_filter.state.type.any_}
        wanted = set(flow_run_filter.deployment_id.any_)
        return [
            r for r in self.runs.values()
            if r.deployment_id in wanted and r.state.type.value in kinds
        ]  # fmt: skip

    def read_deployment(self, deployment_id):
        return SimpleNamespace(global_concurrency_limit=SimpleNamespace(**vars(self.limit)))

    def update_global_concurrency_limit(self, name, update):
        self.limit.active_slots = update.active_slots

    def read_flow_run(self, run_id):
        return self.runs[run_id]

    def read_flow_run_states(self, run_id):
        return list(self.history[run_id])

    def set_flow_run_state(self, run_id, new, force=False):
        self._set(run_id, new)


def wait(server: FakeServer, seconds: float = 3.0):
    said: list[str] = []
    left = wait_for_ticks(
        server, "north", "a", [server.deployment], seconds, said.append, every=0.01
    )
    return left, said


def test_a_run_whose_lease_ran_out_is_crashed_by_name_and_the_move_goes_on():
    # machine a died with north's tick Running; the server took its slot back when the lease
    # ran out, so the limit counts no slot taken while the run still says Running
    server = FakeServer(active_slots=0)
    lost = server.add(
        "tick-north-lost", state("SCHEDULED", T0), state("PENDING", T0), state("RUNNING", T0)
    )
    left, said = wait(server)

    assert left == []  # nothing to wait for: the move goes on at once
    assert server.runs[lost].state.type == StateType.CRASHED
    assert "lease ran out" in server.runs[lost].state.message
    assert any("tick-north-lost" in line and str(lost) in line for line in said), said
    assert server.limit.active_slots == 0  # no slot taken from anyone


def test_a_run_that_holds_its_lease_is_waited_for_not_crashed():
    server = FakeServer(active_slots=1)
    live = server.add("tick-north-live", state("PENDING", T0), state("RUNNING", T0))
    server.ends_after[live] = 5  # it completes while the move waits

    left, said = wait(server, seconds=30)

    assert left == []
    assert server.runs[live].state.type == StateType.COMPLETED
    assert not any(line.startswith("marked Crashed") for line in said), said
    assert any("waiting for tick-north-live" in line for line in said), said


def test_with_one_slot_taken_only_the_run_that_took_it_last_can_hold_it():
    # a tick lost Submitting (its lease ran out), then the next tick took the slot and runs
    server = FakeServer(active_slots=1)
    lost = server.add(
        "tick-north-submitting",
        state("PENDING", T0), state("PENDING", T0 + timedelta(seconds=1), "Submitting"),
    )  # fmt: skip
    live = server.add(
        "tick-north-next",
        state("SCHEDULED", T0), state("SCHEDULED", T0 + timedelta(minutes=1), "AwaitingConcurrencySlot"),
        state("PENDING", T0 + timedelta(minutes=6)), state("RUNNING", T0 + timedelta(minutes=6)),
    )  # fmt: skip

    left, said = wait(server, seconds=0)

    assert server.runs[lost].state.type == StateType.CRASHED
    assert [r.id for r in left] == [live]  # still waited for (its time is up here)
    assert server.runs[live].state.type == StateType.RUNNING
    assert server.limit.active_slots == 1  # the live tick keeps its slot


def test_a_run_that_ended_between_the_reads_is_left_as_it_ended():
    # the limit counts no slot because the run completed just after it was read as Running
    server = FakeServer(active_slots=0)
    done = server.add("tick-north-done", state("PENDING", T0), state("RUNNING", T0))
    read = server.read_flow_runs

    def then_it_completes(**kwargs):
        found = read(**kwargs)
        if done in {r.id for r in found}:
            server._set(done, state("COMPLETED", T0 + timedelta(minutes=1)))
            found = [SimpleNamespace(**vars(r)) for r in found]
            for r in found:  # what was read: the run as it was
                r.state = server.history[r.id][-2]
        return found

    server.read_flow_runs = then_it_completes  # type: ignore[method-assign]
    left, _ = wait(server, seconds=0)

    assert server.runs[done].state.type == StateType.COMPLETED
