"""``relay clinic``: where a clinic's state lives (its home, tasks/home.py) and moving it.

    relay clinic home CLINIC                  # the home the server records, and this database's identity
    relay clinic claim CLINIC [--fresh]       # make this machine the home (first time, or start over)
    relay clinic move CLINIC --to MACHINE     # on the old home: the whole move, restore included
    relay clinic restore CLINIC               # by hand on the new home, if the move could not
    relay clinic backup CLINIC --to DIR       # a whole, CHECKPOINTed copy of the database, any time

A move is a small state machine kept in the home record on the Prefect server, so each step is
idempotent and a crash anywhere resumes by running the same command again:

1. ``move`` records ``moving_to`` (from then on every tick of the clinic, anywhere, refuses) and
   which deployments it pauses, pauses them, and waits for a running tick to end (or gives the
   clinic back to its home, resumed, and says so); a run whose slot's lease ran out (its machine
   was lost: flows/lost.py) is marked Crashed instead of waited for;
2. it backs the database up (its current copy only: else as in 1) under its lock, CHECKPOINTed,
   to ``<backup dir>/<clinic>/<clinic>-generation-<n>.duckdb`` and records the file and its sha256;
3. it puts the clinic's deployments on the new machine's work queue (``machine-<name>``);
4. it starts a run of the pool's ``clinic-restore/<pool>`` deployment (flows/restore.py) on that
   queue, once per backup, and waits for it (``--no-wait``: not). That run, on the new machine,
   does what ``relay clinic restore`` does (tasks.homerestore.restore_home): checks the copy,
   puts it in place as generation n + 1 (a database already restored as n + 1 is kept; a
   different file there is set aside, never deleted), records the new home, then resumes the
   deployments it paused. If no worker takes the run up in time, the command says so: the
   clinic stays paused and the run queued, and it completes when the worker starts.

Every write of the home (a claim's, a move step's, a restore's) is under the clinic's claim lock,
only if the home is as the writer last saw it (tasks/homeclaim.py): a move that finds it changed
(a claim elsewhere) stops there, naming where the clinic is now."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import typer

clinic_app = typer.Typer(help="A clinic's home machine: show it, claim it, move it.")

RUNNING = ["RUNNING", "PENDING", "CANCELLING"]
RESTORE_WAIT = 300.0  # seconds `relay clinic move` waits for the restore on the new machine


def _need_server() -> None:
    from tasks.home import shared_server

    if not shared_server():
        raise typer.BadParameter(
            "set PREFECT_API_URL to the Prefect server every machine uses: a clinic's home "
            "is recorded there"
        )


def clinic_deployments(client, clinic: str) -> list:
    """The clinic's deployments: those whose parameters name it."""
    return [d for d in client.read_deployments() if (d.parameters or {}).get("clinic") == clinic]


def _running(client, deployments: list) -> list:
    from prefect.client.schemas import filters

    if not deployments:
        return []
    return client.read_flow_runs(
        flow_run_filter=filters.FlowRunFilter(
            deployment_id=filters.FlowRunFilterDeploymentId(any_=[d.id for d in deployments]),
            state=filters.FlowRunFilterState(type=filters.FlowRunFilterStateType(any_=RUNNING)),
        )
    )


def wait_for_ticks(
    client, clinic: str, machine: str, deployments: list, seconds: float, echo, every: float = 1.0
) -> list:
    """Wait up to ``seconds`` for the clinic's runs still Pending, Running or Cancelling to end;
    returns those still going then. A run that holds a slot whose lease ran out
    (flows/lost.py, ``lost_holders``: its process is gone, it would never end) is marked Crashed
    at once, said by name and id, and not waited for; a live one is."""
    from flows.lost import crash_lost_holders

    why = (
        f"Its process was lost: it still held {clinic}'s slot after the slot's lease ran out "
        f"(marked by `relay clinic move` on '{machine}'; the clinic's next tick catches up)."
    )
    deadline, told = time.monotonic() + seconds, False
    while True:
        for deployment in deployments:
            for run in crash_lost_holders(client, deployment.id, why):
                echo(f"marked Crashed {run.name} ({run.id}): its slot's lease ran out, its "
                     "process is gone")  # fmt: skip
        running = _running(client, deployments)
        if not running or time.monotonic() >= deadline:
            return running
        if not told:
            told = True
            echo(
                f"waiting for {', '.join(f'{r.name} ({r.state_name})' for r in running)} to end "
                f"(up to {seconds:.0f} s; a run whose machine was lost is marked Crashed once "
                "its slot's lease runs out, within 5 minutes)"
            )
        time.sleep(every)


def drop_stale_schedule(client, deployments: list, queue: str) -> tuple[list, list]:
    """The clinic's runs still waiting to start on another queue than ``queue`` (a run keeps the
    queue it was made on: Prefect cannot move it). The scheduler's own (Scheduled, Late,
    AwaitingConcurrencySlot) are deleted, as Prefect deletes a paused deployment's future ones:
    left there, the old home's worker would start them (each refused, each an alert) and the
    new home's fast lane, seeing a tick overdue, would stop at once. The deployment's schedule
    makes new ones on ``queue`` when it is resumed. Runs a person made are kept and returned."""
    from prefect.client.schemas import filters

    if not deployments:
        return [], []
    waiting = client.read_flow_runs(
        flow_run_filter=filters.FlowRunFilter(
            deployment_id=filters.FlowRunFilterDeploymentId(any_=[d.id for d in deployments]),
            state=filters.FlowRunFilterState(
                type=filters.FlowRunFilterStateType(any_=["SCHEDULED"])
            ),
        )
    )
    dropped, kept = [], []
    for run in waiting:
        if run.work_queue_name == queue or run.state_name == "AwaitingRetry":
            continue
        if run.auto_scheduled:
            client.delete_flow_run(run.id)
            dropped.append(run)
        else:
            kept.append(run)
    return dropped, kept


def put_on_queue(client, deployments: list, queue: str) -> tuple[list, list]:
    """The clinic's deployments on ``queue`` (its home's, ``machine-<name>``), and the scheduled
    runs they left on other queues dropped (``drop_stale_schedule``): what a clinic's deployments
    need whenever its home changes machine (``relay clinic move``, ``relay clinic claim``).
    Returns the runs dropped and those a person made, kept."""
    from prefect.client.schemas.actions import DeploymentUpdate

    for deployment in deployments:
        if deployment.work_pool_name:
            _ensure_queue(client, deployment.work_pool_name, queue)
            client.update_deployment(deployment.id, DeploymentUpdate(work_queue_name=queue))
    return drop_stale_schedule(client, deployments, queue)


def _ensure_queue(client, pool: str, queue: str) -> None:
    from prefect.exceptions import ObjectAlreadyExists

    with contextlib.suppress(ObjectAlreadyExists):
        client.create_work_queue(name=queue, work_pool_name=pool)


def move(
    clinic: str,
    to: str,
    *,
    backup_root: Path,
    wait_seconds: float,
    echo,
    restore_wait: float | None = RESTORE_WAIT,
) -> None:
    """A whole move, from the clinic's home machine (see the module's docstring): steps 1-3
    here, then step 4 started on ``to``'s work queue, waited for up to ``restore_wait`` seconds
    (None: not waited for). Each write of the home, with what goes with it, is made under the
    clinic's claim lock only if the home is still what the move last read or wrote
    (tasks/homeclaim.py, ``unchanged``): a claim, move or restore elsewhere meanwhile stops it."""
    from prefect.client.orchestration import get_client

    from relay.cli import restore_run
    from relay.cli.restore_run import start_restore, wait_for_restore, withdraw_restore
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.home import PrefectHomes, backup_database, queue_for, sha256, this_machine
    from tasks.homeclaim import unchanged
    from tasks.homecopy import HomeRefused, left_behind, require_moved_copy
    from tasks.homequeue import machine_problem, onto_queue

    if problem := machine_problem(to):  # before anything is recorded or paused
        raise UserFacingError(f"--to: {problem}. Nothing was moved.")
    config = load_clinic(clinic)
    store, machine = PrefectHomes(), this_machine()
    again = f"relay clinic move {clinic} --to {to}"
    home = store.read(config.clinic)
    if home is None:
        raise UserFacingError(
            f"{clinic} has no home yet: its first tick claims one (or run `relay clinic claim "
            f"{clinic}` where its database is); then move it."
        )
    if home.moving_to is None and home.machine == to:
        if home.paused:  # its restore recorded the new home, then stopped before resuming
            with unchanged(store, config.clinic, home, again=again):
                with get_client(sync_client=True) as client:
                    onto_queue(client, config.clinic, queue_for(to), echo)
                    for deployment_id in home.paused:
                        client.resume_deployment(deployment_id)
                store.write(config.clinic, replace(home, paused=None))
            echo(
                f"resumed {len(home.paused)} deployment(s) of {clinic} that the move had paused "
                f"(its restore on '{to}' stopped before resuming them)"
            )
        echo(f"{clinic} already lives on '{to}' (generation {home.generation}).")
        left_behind(config.database_path, config.clinic, store, echo)
        return
    if home.machine != machine:
        raise UserFacingError(
            f"{clinic}'s database is on '{home.machine}', and this is '{machine}': run "
            f"`relay clinic move {clinic} --to {to}` on '{home.machine}' (set RELAY_MACHINE "
            "if its host name is not its machine name)."
        )
    if not config.database_path.exists():
        raise UserFacingError(
            f"{clinic}'s home is this machine, but its database is not at "
            f"{config.database_path}: check `database:` in its clinic.yaml and RELAY_DATA_DIR."
        )
    with get_client(sync_client=True) as client:
        deployments = clinic_deployments(client, config.clinic)
        with unchanged(store, config.clinic, home, again=again):  # step 1
            if home.moving_to not in (None, to):  # another target (a mistyped --to): withdrawn
                withdrawn = withdraw_restore(client, config.clinic, home)
                echo(
                    f"0/4 the move to '{home.moving_to}' is withdrawn"
                    + (
                        f" (its restore run {', '.join(r.name for r in withdrawn)} deleted)"
                        if withdrawn
                        else ""
                    )
                    + f"; moving to '{to}' instead"
                )
                home = replace(home, moving_to=to)
                store.write(config.clinic, home)  # a restore on the old target now refuses
            if home.moving_to is None:
                paused = [str(d.id) for d in deployments if not d.paused]
                home = replace(home, moving_to=to, paused=paused, backup=None, backup_sha256=None)
                store.write(config.clinic, home)  # from here on every tick of the clinic refuses
            for deployment_id in home.paused or []:
                client.pause_deployment(deployment_id)
        echo(f"1/4 paused {len(home.paused or [])} deployment(s) of {clinic}")
        running = wait_for_ticks(client, clinic, machine, deployments, wait_seconds, echo)
        name = f"{config.clinic}/{config.clinic}-generation-{home.generation}.duckdb"
        dest = backup_root / name
        backed_up = home.backup == name and dest.exists() and sha256(dest) == home.backup_sha256
        try:  # a run still going, or not the clinic's current copy here: it stays home, resumed
            if running:
                raise restore_run.still_going(clinic, running, wait_seconds, machine)
            require_moved_copy(path := config.database_path, config.clinic, home)  # backed up too
            checksum = home.backup_sha256 if backed_up else backup_database(path, dest)
        except HomeRefused:
            restore_run.stay_home(client, store, config.clinic, home, again, echo)
            raise
        queue = queue_for(to)
        pools = [d.work_pool_name for d in deployments if d.work_pool_name]
        with unchanged(store, config.clinic, home, again=again):  # steps 2-4, as recorded
            if not backed_up:
                home = replace(home, backup=name, backup_sha256=checksum)
                store.write(config.clinic, home)
            echo(f"2/4 {'kept the backup' if backed_up else f'backed up {path} to'} {dest}")
            dropped, kept = put_on_queue(client, deployments, queue)
            deleted = f"; {len(dropped)} scheduled run(s) left on the old queue deleted"
            echo(
                f"3/4 {clinic}'s deployments are on work queue '{queue}', paused"
                + (deleted if dropped else "")
            )
            restore_run.started_by_hand(kept, echo)
            run = start_restore(client, config.clinic, home, pools[0], to) if pools else None
        if run is None:
            echo(
                f"{clinic} has no deployment in a work pool to start its restore from: on '{to}' "
                f"run `relay clinic restore {clinic}` (with RELAY_BACKUP_DIR, or --backup-dir, "
                "where this backup directory is mounted there)."
            )
            return
        echo(f"4/4 started the restore on '{to}': flow run '{run.name}' on '{queue}'")
        if restore_wait is None:
            echo(
                f"Not waiting: {clinic} stays paused until that run ends (`prefect flow-run inspect "
                f"{run.id}`); then run this move again (it marks the copy left here as an old one)."
            )
            return
        wait_for_restore(client, clinic, run, to, pools[0], restore_wait, echo)
        # The restore resumes what the move paused; a move run again pauses them (1/4) and may
        # do so just after a restore that had already ended: resumed here too (it is idempotent)
        for deployment_id in home.paused or []:
            client.resume_deployment(deployment_id)
    left_behind(config.database_path, config.clinic, store, echo)  # an old copy from now on


def restore(clinic: str, *, backup_root: Path, echo) -> None:
    """Step 4 of a move, by hand on the new home machine: the same code as the clinic-restore
    flow the move starts there (tasks.homerestore.restore_home)."""
    from tasks.config import load_clinic
    from tasks.homerestore import restore_home

    restore_home(load_clinic(clinic), backup_root=backup_root, echo=echo)


def _backup_root(backup_dir: Path | None) -> Path:
    from tasks.home import backup_dir as default

    return backup_dir or default()


BACKUP_DIR = typer.Option(
    None, help="The backup directory both machines read (default RELAY_BACKUP_DIR, else "
    "<data>/backups)."
)  # fmt: skip
OLD_COPY = typer.Option(
    False, "--old-copy", help="Claim this database though it is an old copy (a newer generation "
    "went live elsewhere, `relay clinic home` says): only when that one is lost for good."
)  # fmt: skip


@clinic_app.command("move")
def move_command(
    clinic: str = typer.Argument(..., help="Clinic name (clinics/<name>/clinic.yaml)."),
    to: str = typer.Option(..., "--to", help="The machine (its RELAY_MACHINE) to move it to."),
    backup_dir: Path | None = BACKUP_DIR,
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="Wait for the restore on the new machine and say how it "
        "ended (--no-wait: return once it is started; the clinic stays paused until it ends).",
    ),
    timeout: float = typer.Option(
        RESTORE_WAIT,
        help="Seconds to wait for the restore (with --wait) before saying no "
        "worker took it up; it stays queued.",
    ),
    tick_wait: float = typer.Option(600, help="Seconds to wait for a running tick to end."),
) -> None:
    """On the clinic's home: pause it, wait for its tick, back its database up, put its
    deployments on the new machine's queue, and start the restore there (a clinic-restore run
    on that queue): one command moves the clinic."""
    _need_server()
    move(
        clinic, to, backup_root=_backup_root(backup_dir), wait_seconds=tick_wait,
        echo=typer.echo, restore_wait=timeout if wait else None,
    )  # fmt: skip


@clinic_app.command("restore")
def restore_command(
    clinic: str = typer.Argument(..., help="Clinic name (clinics/<name>/clinic.yaml)."),
    backup_dir: Path | None = BACKUP_DIR,
) -> None:
    """On the machine a move goes to, by hand (the move starts this there itself): restore the
    backup, bump the generation, resume."""
    _need_server()
    restore(clinic, backup_root=_backup_root(backup_dir), echo=typer.echo)


@clinic_app.command("backup")
def backup_command(
    clinic: str = typer.Argument(..., help="Clinic name (clinics/<name>/clinic.yaml)."),
    to: Path = typer.Option(..., "--to", help="The folder the copy goes in."),
    wait: float = typer.Option(600, help="Seconds to wait for a running tick to let go."),
) -> None:
    """Copy the clinic's database (its ledger cannot be synced again from Cliniko) into a folder,
    whole: under the lock the ticks take (a tick that comes due waits), after a CHECKPOINT, as
    <clinic>-<UTC time>.duckdb; prints the copy and its sha256. Refuses an old copy."""
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.home import backup_database
    from tasks.homecopy import check_backup

    config = load_clinic(clinic)
    if not config.database_path.exists():
        raise UserFacingError(
            f"{clinic} has no database on this machine ({config.database_path}): back it up on "
            f"its home (`relay clinic home {clinic}` says which machine that is)."
        )
    if warning := check_backup(config.database_path, config.clinic, wait_seconds=wait):
        typer.echo(warning, err=True)
    dest = to / f"{config.clinic}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.duckdb"
    checksum = backup_database(config.database_path, dest, wait_seconds=wait)
    typer.echo(f"{dest} (sha256 {checksum})")


@clinic_app.command("home")
def home_command(
    clinic: str = typer.Argument(..., help="Clinic name (clinics/<name>/clinic.yaml)."),
) -> None:
    """The clinic's home as the server records it, and what this machine's database says."""
    from tasks.config import load_clinic
    from tasks.home import read_home, read_identity, this_machine
    from tasks.warehouse import open_db

    _need_server()
    config = load_clinic(clinic)
    typer.echo(f"this machine: {this_machine()}")
    home = read_home(config.clinic)
    typer.echo(f"home: {home.describe() if home else 'none yet (the first tick claims it)'}")
    if config.database_path.exists():
        with open_db(config.database_path, read_only=True, wait_seconds=30) as con:
            identity = read_identity(con)
        said = identity.describe() if identity else "no identity yet (the first tick writes it)"
        typer.echo(f"database {config.database_path}: {said}")
    else:
        typer.echo(f"database {config.database_path}: none here")


@clinic_app.command("claim")
def claim_command(
    clinic: str = typer.Argument(..., help="Clinic name (clinics/<name>/clinic.yaml)."),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start over on purpose: this machine's database becomes the "
        "clinic's (a new generation), whatever the home says; every other copy is refused.",
    ),
    old_copy: bool = OLD_COPY,
) -> None:
    """Make this machine the clinic's home: when it has none, or (--fresh) to start over."""
    import uuid

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.home import (
        Home,
        Identity,
        PrefectHomes,
        forget_identity,
        read_identity,
        this_machine,
        write_identity,
    )
    from tasks.homeclaim import claim_lock, claimed_since, lost
    from tasks.homecopy import old_copy_claimed
    from tasks.warehouse import open_db

    _need_server()
    config = load_clinic(clinic)
    store, machine = PrefectHomes(), this_machine()
    home = store.read(config.clinic)
    if home is not None and not fresh:
        raise UserFacingError(
            f"{clinic} already lives on '{home.machine}' (generation {home.generation}): move "
            f"it with `relay clinic move`, or start over on purpose with --fresh."
        )
    with claim_lock(config.clinic):  # one claim of the clinic at a time (tasks/homeclaim.py)
        now = store.read(config.clinic)
        if claimed_since(home, now):  # another machine's claim came first: nothing written
            raise lost(config.clinic, now, machine, fresh=fresh)
        home = now
        with open_db(config.database_path) as con:
            identity = read_identity(con)
            if identity and identity.superseded_by and not old_copy:
                raise old_copy_claimed(config.clinic, identity)  # before anything is written
            named = identity is None  # this claim names the database: unnamed again if it loses
            generation = (home.generation + 1) if home else (identity.generation if identity else 1)
            if identity is None or home is not None:
                lineage = identity.database_id if identity and home is None else uuid.uuid4().hex
                identity = Identity(config.clinic, lineage, generation, machine)
                write_identity(con, identity)
            new = Home(machine=machine, generation=generation, database=identity.database_id,
                       moved_at=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
            if home is None:
                won = store.create(config.clinic, new)
                if won.database != new.database or won.machine != machine:  # a first tick's
                    if named:  # claim, elsewhere, came first (ticks take no claim lock)
                        forget_identity(con, config.clinic)
                    raise lost(config.clinic, won, machine, fresh=fresh)
            else:
                store.write(config.clinic, new)
        typer.echo(f"{clinic} lives on '{new.machine}', generation {new.generation}.")
        follow_home(config.clinic, new.machine, home, typer.echo)


def follow_home(clinic: str, machine: str, before, echo) -> None:
    """After a claim: the clinic's deployments (if deployed) go on its home's queue, where its
    ticks run and nowhere else, and those a move had paused (``before.paused``: a claim --fresh
    in the middle of one) are resumed. Without this, a clinic claimed afresh on a new machine
    after its old one was lost (docs/scaling.md, A lost machine) kept its deployments on the
    lost machine's queue and never ticked again."""
    from prefect.client.orchestration import get_client

    from relay.cli.restore_run import started_by_hand
    from tasks.home import queue_for

    queue = queue_for(machine)
    with get_client(sync_client=True) as client:
        deployments = clinic_deployments(client, clinic)
        elsewhere = [d for d in deployments if d.work_queue_name != queue]
        if elsewhere:
            dropped, kept = put_on_queue(client, deployments, queue)
            echo(
                f"its deployments are on work queue '{queue}' now (were on "
                f"{', '.join(sorted({str(d.work_queue_name) for d in elsewhere}))})"
                + (f"; {len(dropped)} scheduled run(s) left there deleted" if dropped else "")
            )
            started_by_hand(kept, echo)
        for deployment_id in (before.paused or []) if before else []:
            client.resume_deployment(deployment_id)
        if before and before.paused:
            echo(f"resumed {len(before.paused)} deployment(s) the move had paused")
