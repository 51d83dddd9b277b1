"""The restore run of ``relay clinic move`` (its step 4, see relay/cli/clinic.py): a run of the
pool's ``clinic-restore`` deployment (flows/restore.py) started on the work queue of the machine
the clinic moves to, waited for, or withdrawn when the move is sent elsewhere before it began;
and ``stay_home``, for a move given up before its backup."""

from __future__ import annotations

import time

RESTORE_FLOW = "clinic-restore"  # flows/restore.py; one deployment per pool, named after it
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def stay_home(client, store, clinic: str, home, again: str, echo) -> None:
    """A move given up (a run still going; this database not the clinic's current copy): the
    home as it was, not moving, with no backup recorded (the next move makes its own), the
    clinic's deployments on the home's queue (a move run again may have put them on the
    target's), the restore waiting there withdrawn, and what the move paused resumed; written
    under the claim lock only if the home is as the move left it (tasks/homeclaim.py)."""
    from dataclasses import replace

    from tasks.home import queue_for
    from tasks.homeclaim import unchanged
    from tasks.homequeue import onto_queue

    with unchanged(store, clinic, home, again=again):
        if home.moving_to and home.backup:  # its restore may be waiting on the target's queue
            withdraw_restore(client, clinic, home)
        store.write(
            clinic, replace(home, moving_to=None, paused=None, backup=None, backup_sha256=None)
        )
        onto_queue(client, clinic, queue_for(home.machine), echo)
        for deployment_id in home.paused or []:
            client.resume_deployment(deployment_id)


def still_going(clinic: str, running: list, seconds: float, machine: str) -> Exception:
    """Why a move stops at its step 1: a run of the clinic's still going after ``seconds``."""
    from tasks.home import HomeRefused

    return HomeRefused(
        f"{clinic}: a run is still going after {seconds:.0f} s "
        f"({', '.join(r.name for r in running)}): the clinic stays on '{machine}', "
        "resumed. Try again when it has ended, or give --tick-wait more seconds."
    )


def withdraw_restore(client, clinic: str, home) -> list:
    """A move sent elsewhere before its restore began (``--to`` mistyped, or that machine is
    gone): its restore runs still waiting on the old target's queue are deleted and returned, so
    no worker there ever starts one, and the same backup's restore can be started on the new
    target (its idempotency key names the backup, not the machine). A restore that has begun is
    let finish: the clinic then lives there, and moves on from there."""
    from prefect.client.schemas import filters

    from tasks.errors import UserFacingError
    from tasks.home import queue_for

    waiting = [
        run
        for run in client.read_flow_runs(
            flow_filter=filters.FlowFilter(name=filters.FlowFilterName(any_=[RESTORE_FLOW])),
            flow_run_filter=filters.FlowRunFilter(
                work_queue_name=filters.FlowRunFilterWorkQueueName(
                    any_=[queue_for(home.moving_to)]
                ),
            ),
        )
        if (run.parameters or {}).get("clinic") == clinic
        and (run.state.type.value if run.state else "SCHEDULED") not in FINAL
    ]
    started = [r for r in waiting if r.state and r.state.type.value != "SCHEDULED"]
    if started:
        raise UserFacingError(
            f"{clinic} is already being moved to '{home.moving_to}', and its restore there has "
            f"begun (run '{started[0].name}', {started[0].state.name}): let it finish, then "
            f"move {clinic} on from '{home.moving_to}'."
        )
    for run in waiting:
        client.delete_flow_run(run.id)
    return waiting


def start_restore(client, clinic: str, home, pool: str, to: str):
    """A run of the pool's ``clinic-restore`` deployment on ``to``'s work queue (the server
    puts a run on another queue of the deployment's pool when asked). Once per backup: a move run
    again gets the same run back (an idempotency key of the backup), or a new one if that run
    failed or was cancelled."""
    from prefect.exceptions import ObjectNotFound

    from tasks.errors import UserFacingError
    from tasks.home import queue_for

    try:
        deployment = client.read_deployment_by_name(f"{RESTORE_FLOW}/{pool}")
    except ObjectNotFound:
        raise UserFacingError(
            f"{clinic} is paused and backed up, but work pool '{pool}' has no "
            f"'{RESTORE_FLOW}/{pool}' deployment to restore it with: run `relay deploy --pool "
            f"{pool}` and this move again, or run `relay clinic restore {clinic}` on '{to}'."
        ) from None
    key = f"{RESTORE_FLOW}:{clinic}:g{home.generation}:{home.backup_sha256}"
    for attempt in range(100):
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"clinic": clinic},
            work_queue_name=queue_for(to),
            idempotency_key=key if attempt == 0 else f"{key}:{attempt}",
        )
        state = run.state.type.value if run.state else "SCHEDULED"
        if state not in FINAL or state == "COMPLETED":
            return run
    raise UserFacingError(f"{clinic}: too many failed restore runs; see them in Prefect.")


def wait_for_restore(client, clinic: str, run, to: str, pool: str, seconds: float, echo) -> None:
    """Wait for the restore run and say how it ended; if no worker took it up in time, say so,
    leaving it queued (it runs when a worker serves the queue) and the clinic paused."""
    from tasks.errors import UserFacingError
    from tasks.home import queue_for

    deadline = time.monotonic() + seconds
    while True:
        run = client.read_flow_run(run.id)
        state = run.state.type.value if run.state else "SCHEDULED"
        if state in FINAL or time.monotonic() >= deadline:
            break
        time.sleep(1)
    if state == "COMPLETED":
        echo(f"{clinic} lives on '{to}' now, its deployments resumed (run '{run.name}').")
        return
    queue = queue_for(to)
    if state in FINAL:
        raise UserFacingError(
            f"{clinic}: the restore on '{to}' ended {state.lower()} (run '{run.name}'): "
            f"{run.state.message if run.state else ''} The clinic stays paused; fix that and run "
            f"this move again, or `relay clinic restore {clinic}` on '{to}'."
        )
    if state in ("SCHEDULED", "LATE"):
        raise UserFacingError(
            f"{clinic}: no worker on '{to}' took up its restore in {seconds:.0f} s: is one "
            f"serving work queue '{queue}' (`relay worker --pool {pool}` with "
            f"RELAY_MACHINE={to})? The clinic stays paused and the restore run '{run.name}' "
            "waits on that queue: it completes when the worker starts. Running this move again "
            f"is safe, and so is running it with another --to (a mistyped '{to}')."
        )
    raise UserFacingError(
        f"{clinic}: the restore on '{to}' is still {state.lower()} after {seconds:.0f} s (run "
        f"'{run.name}'): the clinic stays paused until it ends; `relay clinic home {clinic}` "
        "shows where it lives, and running this move again is safe."
    )


def started_by_hand(kept: list, echo) -> None:
    """Runs started by hand that a move of the deployments left on their old queue (Prefect
    moves scheduled runs, not those): each refused where it waits, so the operator starts it
    again."""
    for run in kept:
        echo(
            f"  {run.name} ({run.id}) was started by hand and waits on "
            f"'{run.work_queue_name}', where it will be refused: start it again"
        )
