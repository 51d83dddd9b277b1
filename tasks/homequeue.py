"""A clinic's deployments on its home's work queue, once a restore has made that machine home.

``relay clinic move`` puts the deployments on the new machine's queue (its step 3) before it
starts the restore there. A move whose old home died after its backup and before that step
leaves them on the old home's queue, and ``relay clinic restore`` by hand (docs/scaling.md: for
a move that could not start its restore) then resumed them there: every tick went to the dead
machine's queue (or, if it came back, was refused there), and the clinic never ticked on its new
home. The restore now puts them on its own queue itself; after a whole move it changes nothing.
"""

from __future__ import annotations

import contextlib


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
