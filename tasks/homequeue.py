"""A clinic's deployments on its home's work queue, once a restore has made that machine home.

``relay clinic move`` puts the deployments on the new machine's queue (its step 3) before it
starts the restore there. A move whose old home died after its backup and before that step
leaves them on the old home's queue, and ``relay clinic restore`` by hand (docs/scaling.md: for
a move that could not start its restore) then resumed them there: every tick went to the dead
machine's queue (or, if it came back, was refused there), and the clinic never ticked on its new
home. The restore now puts them on its own queue itself; after a whole move it changes nothing.

A machine's name must make a queue: ``machine_problem`` checks a name given on the command line
(``relay clinic move --to``, ``relay deploy --home``) before anything is written.
"""

from __future__ import annotations

import contextlib

# What Prefect refuses in a work queue's name (prefect.types.names.BANNED_CHARACTERS).
_NOT_IN_A_QUEUE = "/%&><"


def machine_problem(name: str) -> str | None:
    """Why ``name`` cannot be a machine's name (None: it can): empty or blank (an unset shell
    variable: a move to '' recorded a move no tick saw, and the clinic went on sending beside
    the backup its move later restored), padded with spaces, or with a character Prefect
    refuses in the name of its work queue, ``machine-<name>``."""
    if not name.strip():
        return "a machine's name (its RELAY_MACHINE, or its host name) cannot be empty"
    if name != name.strip():
        return f"'{name}' has spaces around it; a machine's name is its RELAY_MACHINE exactly"
    if bad := sorted({c for c in name if c in _NOT_IN_A_QUEUE}):
        return (
            f"'{name}' holds {' '.join(bad)}, which Prefect refuses in a work queue's name "
            f"('machine-{name}'); give the machine a RELAY_MACHINE without it"
        )
    return None


def onto_queue(client, clinic: str, queue: str, echo) -> list[str]:
    """Put every deployment of ``clinic`` (those whose parameters name it) that is in a work pool
    on ``queue``, creating it in that pool if missing, and say so; returns the queues of those
    it moved."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectAlreadyExists

    moved = []
    for deployment in client.read_deployments():
        if (deployment.parameters or {}).get("clinic") != clinic or not deployment.work_pool_name:
            continue
        if deployment.work_queue_name == queue:
            continue
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_queue(name=queue, work_pool_name=deployment.work_pool_name)
        client.update_deployment(deployment.id, DeploymentUpdate(work_queue_name=queue))
        moved.append(str(deployment.work_queue_name))
    if moved:
        echo(f"put {len(moved)} deployment(s) of {clinic} on '{queue}' (were on {moved[0]})")
    return moved
