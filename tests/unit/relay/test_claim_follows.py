"""`relay clinic claim --fresh` on a new machine, after the old one was lost with its disk
(docs/scaling.md, A lost machine), puts the clinic's deployments on the new home's queue. Issue
14's operator walk: the claim said "south lives on 'a', generation 3" and left its deployments on
the lost machine's queue, so the clinic never ticked again and nothing said why."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tasks.home import Home

from .homes import D1, D2, Store, as_machine, deployments_on


class FakeClient:
    def __init__(self, deployments, runs):
        self.deployments = deployments
        self.runs = {r.id: r for r in runs}
        self.queues, self.resumed = {}, []

    def read_deployments(self):
        return self.deployments

    def create_work_queue(self, name, work_pool_name):
        pass

    def update_deployment(self, deployment_id, update):
        self.queues[deployment_id] = update.work_queue_name

    def read_flow_runs(self, flow_run_filter=None, limit=None):
        return list(self.runs.values())

    def delete_flow_run(self, run_id):
        del self.runs[run_id]

    def resume_deployment(self, deployment_id):
        self.resumed.append(deployment_id)


@pytest.fixture
def claim(monkeypatch, tmp_path):
    """`relay clinic claim` on machine 'a' of south, whose home record names machine `b`;
    south's two deployments on `b`'s queue, with a tick scheduled there."""

    store = Store(Home(machine="b", generation=2, database="lineage"))
    deployments = deployments_on("machine-b")
    tick = SimpleNamespace(id=uuid.uuid4(), name="late-tick", work_queue_name="machine-b",
                           state_name="Late", auto_scheduled=True)  # fmt: skip
    client = FakeClient(deployments, [tick])
    as_machine(monkeypatch, "a", store, lambda name: tmp_path / f"{name}.duckdb", client=client,
               shared=True)  # fmt: skip

    def run(*args):
        from relay.cli.clinic import clinic_app

        return CliRunner().invoke(clinic_app, ["claim", "south", *args])

    return SimpleNamespace(run=run, store=store, client=client, tick=tick)


def test_a_clinic_claimed_afresh_ticks_on_its_new_home(claim):
    result = claim.run("--fresh")

    assert result.exit_code == 0, result.output
    assert claim.store.home.machine == "a" and claim.store.home.generation == 3
    assert claim.client.queues == {D1: "machine-a", D2: "machine-a"}  # north's stays
    assert claim.tick.id not in claim.client.runs  # b's worker, back, would start it: refused
    assert "work queue 'machine-a'" in result.output, result.output


def test_a_claim_in_the_middle_of_a_move_resumes_what_the_move_paused(claim):
    claim.store.home = Home(machine="b", generation=2, moving_to="x", paused=[str(D1), str(D2)])

    result = claim.run("--fresh")

    assert result.exit_code == 0, result.output
    assert claim.store.home.moving_to is None and claim.store.home.machine == "a"
    assert claim.client.resumed == [str(D1), str(D2)]
