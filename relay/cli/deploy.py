"""``relay deploy``: every clinic's deployments, generated from ``clinics/``, onto a work pool.

For each clinic folder (the demo only with ``--demo``):

- ``clinic-tick/<clinic>-tick``: the whole pipeline every ``schedule.tick_every_minutes`` (5), and
  the nightly tick with ``reconcile: true`` at ``schedule.nightly_reconcile`` (03:00) in the
  clinic's own ``time_zone``; one run at a time (limit 1, ENQUEUE: DuckDB has one writer);
- ``campaign/<clinic>-campaign``: a one-off campaign, on demand;
- ``owner-report/<clinic>-report``: weekly, on clinic.yaml's ``report.weekday`` at ``report.at``
  in the clinic's time zone, when clinic.yaml has a ``report:`` section (the owner's address);
  deleted by the next deploy once the section is gone.

and once per pool ``clinic-restore/<pool>`` (flows/restore.py), on demand: ``relay clinic move``
starts its runs on the work queue of the machine a clinic moves to.

All of them go on the clinic's home machine's work queue (``machine-<name>``): the home record
(Prefect Variable ``relay_home_<clinic>``), or, for a clinic without one, ``--home`` or this
machine (said in the output). Running it again changes only what changed (relay/deployments.py:
an unchanged deployment is not written, so its schedules and their next runs stay as they were),
and leaves what someone paused in Prefect (a deployment, or one of its schedules) paused, saying
so on one line each with how to resume it; ``--resume-paused`` resumes them instead. A clinic being moved (``relay clinic
move``) is skipped, saying so, and the command exits 1 after deploying the others.

No deploy-time path is baked in. The entrypoints are module paths (``flows.tick.clinic_tick``)
and there are no pull steps: Prefect 3.8.8's process worker starts each run in a fresh temporary
directory (``working_dir`` unset) and the engine imports a module-path entrypoint from the
worker's own Python, i.e. the checkout the worker's ``.venv`` was installed from (``make install``
installs this project editable). ``tasks/paths.py`` finds clinics and data from that checkout
(or ``RELAY_CLINICS_DIR`` / ``RELAY_DATA_DIR`` in the worker's environment), never from the
directory the run starts in. Each run's environment sets its heartbeat
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``) so the lost-run automation of relay/alerts.py works with
no setup on the worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import typer

from relay.deployments import apply, current


class BeingMoved(Exception):
    """The clinic is in the middle of ``relay clinic move``: its deployments are the move's."""


def machine_for(clinic: str, home, fallback: str, chosen: bool) -> tuple[str, str]:
    """The machine whose queue the clinic's deployments go on, and why (for the output): the
    home record's machine (tasks/home.py), or ``fallback`` for a clinic without one. A clinic
    being moved is left to the move (BeingMoved): the move paused its deployments and put them
    on the new machine's queue, and its restore resumes them there; deploying them would put
    them back on the old home's queue (and ``--resume-paused`` resume them there), where every
    tick is refused until the move is done, and after it the new home would never see a tick."""
    if home is None:
        return fallback, f"no home recorded: assigned to {fallback}" + (
            "" if chosen else " (this machine; --home to choose)"
        )
    if home.moving_to is not None:
        raise BeingMoved(
            f"{clinic}: being moved from '{home.machine}' to '{home.moving_to}': its deployments "
            "were left as the move set them (paused until the restore there resumes them). "
            f"Finish the move (`relay clinic move {clinic} --to {home.moving_to}` again on "
            f"'{home.machine}'; `relay clinic home {clinic}` shows where it stands), then run "
            "relay deploy again."
        )
    return home.machine, f"home {home.machine}"


def twins(clinics: list[str]) -> str | None:
    """Why clinics that differ only in '-' and '_' cannot be deployed together, or None: both
    names are valid, but their home records on the Prefect server are one Variable
    (tasks.home.variable_name), so each would read the other's home: refused as the other's
    copy, told it "already lives" where the other does, or moved and claimed with it."""
    from tasks.home import variable_name

    pairs = _sharing((variable_name(clinic), clinic) for clinic in clinics)
    if not pairs:
        return None
    return "; ".join(
        f"clinics {' and '.join(names)} would share one home record ({var})" for var, names in pairs
    ) + (
        ": each would take the other's home (its ticks refused as the other's, moved or claimed "
        "with it). Rename one clinic (its folder and its clinic: line) so that the names differ "
        "in more than '-' and '_'."
    )


def _sharing(keyed: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Of (key, clinic) pairs, each key two or more clinics have, with those clinics."""
    named: dict[str, list[str]] = {}
    for key, clinic in keyed:
        named.setdefault(key, []).append(clinic)
    return [(key, names) for key, names in named.items() if len(names) > 1]


def shared_databases(configs: list) -> str | None:
    """Why clinics naming one database file (`database:` in clinic.yaml) cannot be deployed
    together, or None: each clinic's state is its own file. A folder copied with its
    `database:` line had its ticks refused (the file holds the other clinic), but its
    `relay sync` and steps run alone wrote into the other clinic's file."""
    shared = _sharing((str(c.database_path.resolve()), c.clinic) for c in configs)
    if not shared:
        return None
    return "; ".join(
        f"clinics {' and '.join(names)} name one database file, {path}" for path, names in shared
    ) + (
        ": each clinic needs its own (its ledger, lists and Cliniko rows). Give each its own "
        "`database:` in its clinic.yaml, or leave the line out (data/<clinic>.duckdb)."
    )


@dataclass(frozen=True)
class Planned:
    """One deployment to create: which flow, its name, parameters and schedules."""

    flow: object
    name: str
    parameters: dict
    schedules: list  # DeploymentScheduleCreate
    description: str
    one_at_a_time: bool = False


def plan_clinic(config) -> list[Planned]:
    """The deployments of one clinic, from its clinic.yaml."""
    from datetime import timedelta

    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    from flows.campaign import send_campaign
    from flows.tick import clinic_tick

    clinic, tz, sched = config.clinic, config.time_zone, config.schedule
    every = sched.tick_every_minutes
    schedules = [
        DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(minutes=every)),
            slug=f"every-{every:g}-minutes",
        )
    ]
    if sched.nightly_reconcile:
        hour, minute = (int(x) for x in sched.nightly_reconcile.split(":"))
        schedules.append(
            DeploymentScheduleCreate(
                schedule=CronSchedule(cron=f"{minute} {hour} * * *", timezone=tz),
                slug="nightly-reconcile",
                # A reconcile tick may start late (a long tick before it) and still run.
                parameters={"clinic": clinic, "reconcile": True, "max_lateness_minutes": 120},
            )
        )
    planned = [
        Planned(
            clinic_tick, f"{clinic}-tick",
            {"clinic": clinic, "max_lateness_minutes": sched.max_lateness_minutes}, schedules,
            f"{config.name}: the whole pipeline every {every:g} minutes"
            + (f"; the nightly reconcile at {sched.nightly_reconcile} {tz}"
               if sched.nightly_reconcile else ""),
            one_at_a_time=True,
        ),
        Planned(
            send_campaign, f"{clinic}-campaign", {"clinic": clinic, "confirm": False}, [],
            f"{config.name}: a one-off campaign, run by a person (campaign, confirm=true)",
        ),
    ]  # fmt: skip
    if config.report is not None:  # the owner's weekly report, when clinic.yaml names an owner
        from flows.report import owner_report

        rep = config.report
        planned.append(
            Planned(
                owner_report, f"{clinic}-report", {"clinic": clinic},
                [DeploymentScheduleCreate(schedule=CronSchedule(cron=rep.cron, timezone=tz),
                                          slug="weekly")],
                f"{config.name}: the owner's weekly report, {rep.weekday}s at {rep.at:%H:%M} {tz}",
            )
        )  # fmt: skip
    return planned


def plan_restore(pool: str) -> Planned:
    """The pool's one ``clinic-restore/<pool>`` deployment (flows/restore.py): on demand, no
    schedule; ``relay clinic move`` starts its runs on the target machine's queue."""
    from flows.restore import clinic_restore

    return Planned(
        clinic_restore, pool, {}, [],
        "The last step of `relay clinic move`, started by it on the machine the clinic moves to",
    )  # fmt: skip


def drop_report(client, clinic: str) -> str | None:
    """The clinic's report deployment, deleted when its clinic.yaml has no ``report:`` section
    (any more): left from an earlier deploy, it would fail every week asking for the section
    back. Its name, when there was one."""
    from flows.report import owner_report

    name = f"{owner_report.name}/{clinic}-report"
    before = current(client, name)
    if before is None:
        return None
    client.delete_deployment(before.id)
    return name


def orphans(client, clinics: set[str]) -> list[str]:
    """The deployments (flow/name) of a clinic with no folder among ``clinics`` any more: one
    that left. Never deleted here (a mistyped --clinics would take every clinic's); their ticks
    fail, each with an alert, until a person deletes them."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows.campaign import send_campaign
    from flows.report import owner_report
    from flows.tick import clinic_tick

    return [
        f"{flow.name}/{deployment.name}"
        for flow in (clinic_tick, send_campaign, owner_report)
        for deployment in client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow.name]))
        )
        if deployment.parameters.get("clinic") not in clinics
    ]


def ensure_pool(client, pool: str) -> bool:
    """Create a process work pool of that name if there is none; True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(pool)
        return False
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        return True


def deploy_command(
    clinics: Path = typer.Option(
        None, "--clinics", help="Folder of clinic folders (default: RELAY_CLINICS_DIR or clinics/)."
    ),
    pool: str = typer.Option("local", help="Work pool (a process pool is created if missing)."),
    home: str = typer.Option(
        None, help="Machine for clinics without a home record (default: this machine)."
    ),
    demo: bool = typer.Option(False, "--demo", help="Deploy the demo clinic too."),
    resume_paused: bool = typer.Option(
        False,
        "--resume-paused",
        help="Resume the deployments and schedules someone paused in "
        "Prefect (by default they are left paused, each said in the output).",
    ),
) -> None:
    """Deploy every clinic in clinics/: its tick (clinic.yaml's schedule:), its nightly reconcile
    in its own time zone, a campaign on demand and the weekly owner's report, on its home
    machine's work queue. Needs PREFECT_API_URL (a running server). Safe to repeat: what someone
    paused in Prefect stays paused (unless --resume-paused), saying so."""
    from relay.cli.flowrun import need_api_url

    need_api_url("deployments live on the server")
    from tasks.homequeue import machine_problem

    if home is not None and (problem := machine_problem(home)):
        raise typer.BadParameter(f"--home: {problem}")
    from prefect.client.orchestration import get_client

    from relay.env import clinics_dir
    from tasks.config import ConfigError, load_clinic
    from tasks.paths import misnamed

    folder = Path(clinics or clinics_dir())
    paths = sorted(folder.glob("*/clinic.yaml"))
    configs = [load_clinic(p) for p in paths if demo or p.parent.name != "demo"]
    for config in configs:  # a run finds its clinic by the folder's name (tasks/paths.py)
        if config.source and (problem := misnamed(config.source, config.clinic, folder)):
            raise ConfigError(problem)
    shared = twins([c.clinic for c in configs]) or shared_databases(configs)
    if shared:
        raise ConfigError(shared)
    if not configs:
        raise ConfigError(
            f"No clinic to deploy in {folder}"
            + (" (the demo is deployed only with --demo)." if paths else ".")
            + " Add clinics/<clinic>/clinic.yaml (relay connect <clinic>)."
        )
    from relay.alerts import quiet_window_warnings
    from tasks.home import queue_for, read_home, this_machine

    fallback = home or this_machine()
    moving = []
    with get_client(sync_client=True) as client:
        if ensure_pool(client, pool):
            typer.echo(f"created the process work pool '{pool}'")
        for config in configs:
            try:
                machine, where = machine_for(
                    config.clinic, read_home(config.clinic), fallback, home is not None
                )
            except BeingMoved as skipped:
                typer.echo(f"skipped {skipped}", err=True)
                moving.append(config.clinic)
                continue
            queue = queue_for(machine)
            for planned in plan_clinic(config):
                paused = apply(client, planned, pool, queue, resume_paused)
                typer.echo(f"{config.clinic}: {planned.flow.name}/{planned.name}")
                if paused:
                    typer.echo(paused.line(config.clinic))
            if config.report is None and (dropped := drop_report(client, config.clinic)):
                typer.echo(
                    f"{config.clinic}: deleted {dropped} (clinic.yaml has no report: section)"
                )
            typer.echo(f"{config.clinic}: on {pool}/{queue} ({where})")
        restore = plan_restore(pool)  # its runs go to a move's target queue, never this one
        paused = apply(client, restore, pool, "default", resume_paused)
        typer.echo(f"{pool}: {restore.flow.name}/{restore.name} (run by relay clinic move)")
        if paused:
            typer.echo(paused.line(pool))
        every = {c.clinic: c.schedule.tick_every_minutes for c in configs}
        for warning in quiet_window_warnings(client, every):
            typer.echo(warning, err=True)
        if left := orphans(client, {p.parent.name for p in paths}):
            typer.echo(
                f"no folder in {folder} for the clinic of {', '.join(left)}: a clinic that left? "
                "Its ticks fail until you delete them: prefect deployment delete <flow/name>",
                err=True,
            )
    typer.echo(
        f"Start a worker on each machine: relay worker --pool {pool} (from its own checkout; "
        f"it serves {queue_for('<machine>')}, RELAY_MACHINE or the host name)"
    )
    if moving:  # the others are deployed; a script must not take this run for a complete one
        typer.echo(f"not deployed (being moved): {', '.join(moving)}", err=True)
        raise typer.Exit(1)
