"""`relay clinic move` run again after its restore stopped half-way (issue 14, moving a clinic's
home; docs/scaling.md: "after a crash anywhere ... the same command again resumes where it
stopped"). The restore on the new machine records the new home and then resumes what the move
paused (tasks.homerestore.restore_home); a restore killed between the two (its machine lost, its
worker killed) left the home on the new machine with the deployments still paused. The move then
said "north already lives on 'x' (generation 3)." and resumed nothing: the clinic never ticked
again and nothing said why. The same command now resumes them, on the new home's queue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasks.home import Home

from .homes import Store, as_machine


class FakeClient:
    def __init__(self):
        self.resumed: list[str] = []

    def read_deployments(self):
        return []

    def resume_deployment(self, deployment_id):
        self.resumed.append(deployment_id)


@pytest.fixture
def rerun(monkeypatch, tmp_path):
    """north moved from 'b' (this machine) to 'x': x's restore wrote the home and was killed."""

    import relay.cli.clinic as cli

    store = Store(Home(machine="x", generation=3, database="l" * 32, paused=["d1", "d2"]))
    client = FakeClient()
    as_machine(monkeypatch, "b", store, tmp_path / "north.duckdb", client=client)
    said: list[str] = []

    def move(to):
        cli.move("north", to, backup_root=tmp_path, wait_seconds=1, echo=said.append)
        return said

    return SimpleNamespace(move=move, store=store, client=client)


def test_a_move_run_again_resumes_what_a_stopped_restore_left_paused(rerun):
    said = rerun.move("x")

    assert rerun.client.resumed == ["d1", "d2"]
    assert rerun.store.home.paused is None and rerun.store.home.machine == "x"
    assert any("resumed 2 deployment(s)" in line for line in said), said


def test_a_move_run_again_after_a_whole_move_changes_nothing(rerun):
    rerun.store.home = Home(machine="x", generation=3, database="l" * 32)

    said = rerun.move("x")

    assert rerun.client.resumed == []
    assert said == ["north already lives on 'x' (generation 3)."]
