"""Stand-ins the claim and move tests share: a clinic's home record on the Prefect server
(``Store``) and this process as one machine of the fleet (``as_machine``; the server's claim
lock, tasks/homeclaim.py, always free: tests/flows/test_claim_race.py takes the real one)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

# south's two deployments and north's one (a clinic the tests leave alone)
D1, D2, NORTH = (uuid.uuid4() for _ in range(3))


def deployments_on(queue: str) -> list[SimpleNamespace]:
    """South's two deployments and north's one, all on work queue ``queue`` of pool 'local'."""
    return [
        SimpleNamespace(id=d, parameters={"clinic": clinic}, work_pool_name="local",
                        work_queue_name=queue)
        for d, clinic in ((D1, "south"), (D2, "south"), (NORTH, "north"))
    ]  # fmt: skip


class Store:
    """The server's home record of one clinic (tasks.home.PrefectHomes' read, create, write)."""

    def __init__(self, home):
        self.home = home

    def read(self, clinic):
        return self.home

    def create(self, clinic, home):
        self.home = self.home or home
        return self.home

    def write(self, clinic, home):
        self.home = home


def as_machine(
    monkeypatch,
    machine: str,
    store,
    database: Path | Callable[[str], Path],
    *,
    client=None,
    shared: bool = False,
) -> None:
    """This process is ``machine``, the home records are ``store``'s, a clinic's database is
    ``database`` (a path, or one per clinic name), Prefect's client is ``client`` (when given)
    and, with ``shared``, the Prefect server is one the machines share."""
    import prefect.client.orchestration

    import tasks.config
    import tasks.home
    import tasks.homeclaim

    path = database if callable(database) else (lambda _name: database)
    monkeypatch.setattr(
        tasks.config, "load_clinic",
        lambda name: SimpleNamespace(clinic=name, database_path=path(name)),
    )  # fmt: skip
    monkeypatch.setattr(tasks.home, "PrefectHomes", lambda: store)
    monkeypatch.setattr(tasks.home, "this_machine", lambda: machine)
    monkeypatch.setattr(tasks.homeclaim, "claim_lock", lambda clinic, **_: contextlib.nullcontext())
    if shared:
        monkeypatch.setattr(tasks.home, "shared_server", lambda: True)
    if client is not None:
        monkeypatch.setattr(
            prefect.client.orchestration, "get_client",
            lambda sync_client=False: contextlib.nullcontext(client),
        )  # fmt: skip
