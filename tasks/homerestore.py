"""The last step of moving a clinic, on the machine it goes to: ``restore_home``.

``relay clinic restore`` by hand, or the ``clinic-restore`` flow (flows/restore.py) that
``relay clinic move`` starts on that machine's work queue, both run it. It reads the home, checks
the move's copy, puts it in place and writes the new home under the clinic's claim lock
(tasks/homeclaim.py), whole: a claim or a move of the clinic on another machine meanwhile used to
be overwritten by its write (a `relay clinic claim --fresh` that said the clinic lived with it,
its database generation n + 1 live beside the restored one), or to overwrite it. Now the one that
comes second finds the home changed and fails naming it, and a restore that finds the clinic no
longer moving here writes nothing, not even the database. No personal data.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import UserFacingError
from tasks.home import Home, HomeStore, queue_for
from tasks.homequeue import onto_queue


def restore_home(
    config,
    *,
    backup_root: Path,
    echo,
    machine: str | None = None,
    store: HomeStore | None = None,
) -> Home:
    """The last step of a move, on the machine it goes to (``relay clinic restore``, or the
    ``clinic-restore`` flow that ``relay clinic move`` starts on that machine's queue): check the
    move's copy, put it in place as generation n + 1, record this machine as the home, resume the
    deployments the move paused, on its queue; all of it under the clinic's claim lock. Refuses
    on any machine but the move's ``moving_to``. Idempotent: after a crash it resumes where it
    stopped."""
    from tasks.home import PrefectHomes, this_machine  # looked up here: tests stand in for them
    from tasks.homeclaim import claim_lock

    machine, store = machine or this_machine(), store or PrefectHomes()
    with claim_lock(config.clinic):
        return _restore(config, backup_root, echo, machine, store)


def _restore(config, backup_root: Path, echo, machine: str, store: HomeStore) -> Home:
    from prefect.client.orchestration import get_client

    from tasks.home import restore_database, shared_server

    clinic = config.clinic
    home = store.read(clinic)
    if home is None:
        raise UserFacingError(f"{clinic} has no home yet: nothing to restore.")
    if home.moving_to is None:
        if home.machine != machine:
            raise UserFacingError(
                f"{clinic} is not being moved: it lives on '{home.machine}'. Run "
                f"`relay clinic move {clinic} --to {machine}` there first."
            )
        new = home  # restored already; perhaps not resumed yet
    elif home.moving_to != machine:
        raise UserFacingError(
            f"{clinic} is being moved to '{home.moving_to}', not to this machine ('{machine}'): "
            f"its restore must run there (a worker serving '{queue_for(home.moving_to)}', or "
            f"`relay clinic restore {clinic}` on '{home.moving_to}')."
        )
    elif not home.backup:
        raise UserFacingError(
            f"{clinic}: the move has not backed the database up yet: run `relay clinic move "
            f"{clinic} --to {machine}` again on '{home.machine}'."
        )
    else:
        generation = home.generation + 1
        identity = restore_database(
            backup_root / home.backup,
            config.database_path,
            config.clinic,
            generation=generation,
            machine=machine,
            checksum=home.backup_sha256,
        )
        new = Home(
            machine=machine,
            generation=generation,
            moved_at=datetime.now(UTC).isoformat(timespec="seconds"),
            database=identity.database_id,
            paused=home.paused,
        )
        store.write(config.clinic, new)  # from here on ticks run here, and only here
        echo(f"restored {config.database_path} as generation {generation} of {clinic}")
    if new.paused or shared_server():
        with get_client(sync_client=True) as client:  # on its queue: a move may have died before
            onto_queue(client, clinic, queue_for(machine), echo)  # its step 3 (tasks/homequeue.py)
            for deployment_id in new.paused or []:
                client.resume_deployment(deployment_id)
    if new.paused:
        echo(f"resumed {len(new.paused)} deployment(s)")
        new = replace(new, paused=None)
        store.write(config.clinic, new)
    echo(f"{clinic} lives on '{machine}', generation {new.generation}.")
    return new
