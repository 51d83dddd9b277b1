"""`relay clinic restore` by hand after a move whose old home died between its backup (step 2)
and putting the deployments on the new queue (step 3): the restore resumed them on the dead
machine's queue, so the clinic never ticked on its new home (found re-checking issue 14). The
restore now puts the clinic's deployments on its own machine's queue (tasks/homequeue.py)."""

from __future__ import annotations

import contextlib

from tasks import home
from tasks.home import Home, Identity, write_identity
from tasks.homerestore import restore_home
from tasks.warehouse import open_db

from .homes import D1, D2, Store, deployments_on
from .test_claim_follows import FakeClient


def test_a_restore_by_hand_puts_the_deployments_on_its_own_queue(tmp_path, monkeypatch):
    import prefect.client.orchestration

    import tasks.homeclaim
    from tasks.config import load_clinic

    source = tmp_path / "b" / "south.duckdb"
    with open_db(source) as con:
        write_identity(con, Identity("south", "l" * 32, 3, "b"))
    checksum = home.backup_database(source, tmp_path / "backups" / "south" / "g3.duckdb")
    yaml = tmp_path / "south" / "clinic.yaml"
    yaml.parent.mkdir()
    target = tmp_path / "a" / "south.duckdb"
    yaml.write_text(
        f"clinic: south\nname: South\ndatabase: {target}\ncliniko:\n  account: south\n",
        encoding="utf-8",
    )
    store = Store(Home("b", 3, database="l" * 32, moving_to="a", backup="south/g3.duckdb",
                       backup_sha256=checksum, paused=[str(D1), str(D2)]))  # fmt: skip
    deployments = deployments_on("machine-b")
    client = FakeClient(deployments, [])
    monkeypatch.setattr(
        prefect.client.orchestration,
        "get_client",
        lambda sync_client=False: contextlib.nullcontext(client),
    )
    # the claim lock is tests/flows/test_move_race.py's (it asks this fake client otherwise,
    # whenever the environment names a shared server, as under the whole suite)
    monkeypatch.setattr(tasks.homeclaim, "claim_lock", lambda clinic, **_: contextlib.nullcontext())
    said: list[str] = []
    done = restore_home(
        load_clinic(yaml), backup_root=tmp_path / "backups", echo=said.append, machine="a",
        store=store,
    )  # fmt: skip

    assert (done.machine, done.generation) == ("a", 4)
    assert client.queues == {D1: "machine-a", D2: "machine-a"}  # north's is not south's
    assert client.resumed == [str(D1), str(D2)]
    assert "put 2 deployment(s) of south on 'machine-a' (were on machine-b)" in said
