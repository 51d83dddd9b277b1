"""`relay clinic move` sends a move elsewhere when its restore has not begun (issue 14's operator
walk: `--to x`, a typo, left the clinic paused for good: "already being moved to 'x': finish that
move (`relay clinic restore` there)", on a machine that does not exist). The restore waiting on
the old target's queue is deleted, so no worker there ever starts it; one that has begun is let
finish."""

from __future__ import annotations

import contextlib
import uuid
from types import SimpleNamespace

import pytest

from tasks.errors import UserFacingError
from tasks.home import Home, Identity, write_identity
from tasks.warehouse import open_db

from .homes import Store, as_machine


def restore_run(clinic: str, queue: str, state: str = "SCHEDULED", name: str = "restore"):
    return SimpleNamespace(
        id=uuid.uuid4(), name=name, work_queue_name=queue, parameters={"clinic": clinic},
        state=SimpleNamespace(type=SimpleNamespace(value=state), name=state.title()),
    )  # fmt: skip


class FakeClient:
    def __init__(self, runs):
        self.runs = {r.id: r for r in runs}
        self.asked = []

    def read_flow_runs(self, flow_filter=None, flow_run_filter=None, limit=None):
        self.asked.append((flow_filter, flow_run_filter))
        return list(self.runs.values())

    def delete_flow_run(self, run_id):
        del self.runs[run_id]

    def pause_deployment(self, deployment_id):
        pass

    def update_deployment(self, deployment_id, update):
        pass


@pytest.fixture
def moving(monkeypatch, tmp_path):
    """north, at home on 'b', being moved to 'x' (its backup made); this process is 'b'."""
    import prefect.client.orchestration

    import relay.cli.clinic as cli
    import relay.cli.restore_run as restoring
    import tasks.home

    database = tmp_path / "north.duckdb"
    with open_db(database) as con:  # the home's copy (the move checks it is, before its backup)
        write_identity(con, Identity("north", "l" * 32, 2, "b"))
    store = Store(
        Home(machine="b", generation=2, moving_to="x", backup="north/north-generation-2.duckdb",
             backup_sha256="abc", paused=["d1"])
    )  # fmt: skip
    started = []
    as_machine(monkeypatch, "b", store, database)
    monkeypatch.setattr(tasks.home, "backup_database", lambda db, dest: "abc")
    monkeypatch.setattr(tasks.home, "sha256", lambda path: "abc")
    monkeypatch.setattr(cli, "clinic_deployments", lambda client, clinic: [])
    monkeypatch.setattr(cli, "wait_for_ticks", lambda *args: [])
    monkeypatch.setattr(
        restoring, "start_restore",
        lambda client, clinic, home, pool, to: started.append(to) or None,
    )  # fmt: skip

    def move(to, runs):
        client = FakeClient(runs)
        monkeypatch.setattr(
            prefect.client.orchestration, "get_client",
            lambda sync_client=False: contextlib.nullcontext(client),
        )  # fmt: skip
        said: list[str] = []
        cli.move("north", to, backup_root=tmp_path, wait_seconds=1, echo=said.append,
                 restore_wait=None)  # fmt: skip
        return client, said

    return SimpleNamespace(move=move, store=store, started=started)


def test_a_move_sent_to_a_mistyped_machine_goes_to_the_right_one(moving):
    waiting = restore_run("north", "machine-x", name="lilac-shark")
    others = [
        restore_run("south", "machine-x"),  # another clinic's move: not ours to withdraw
        restore_run("north", "machine-x", "FAILED"),  # ended: nothing to withdraw
    ]
    client, said = moving.move("a", [waiting, *others])

    assert waiting.id not in client.runs  # no worker on 'x' can ever start it
    assert all(r.id in client.runs for r in others)
    assert moving.store.home.moving_to == "a"  # a restore on 'x' now refuses
    assert moving.store.home.paused == ["d1"]  # still resumed by the restore on 'a'
    assert any("move to 'x' is withdrawn" in line and "lilac-shark" in line for line in said)
    (flows, _), *_ = client.asked  # restore runs only
    assert flows.name.any_ == ["clinic-restore"]


def test_a_restore_that_has_begun_is_let_finish(moving):
    running = restore_run("north", "machine-x", "RUNNING", name="busy-restore")
    with pytest.raises(UserFacingError, match="its restore there has begun.*busy-restore"):
        moving.move("a", [running])
    assert moving.store.home.moving_to == "x"
    assert moving.started == []
