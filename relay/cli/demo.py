"""The sandbox and the demo: a generated Cliniko clinic served locally, and the whole pipeline
against it with no accounts."""

from __future__ import annotations

import typer

from relay.cli.pipeline import print_sync


def demo_command(
    patients: int = typer.Option(500, help="Size of the generated sandbox clinic."),
    seed: int = typer.Option(1, help="Seed of the generated clinic (same seed, same clinic)."),
) -> None:
    """The whole pipeline against the built-in Cliniko sandbox (no accounts needed).

    Nothing leaves this machine; the demo database and its outbox start afresh each time."""
    import os
    from datetime import timedelta

    from flows.sync import cliniko_sync
    from relay.cli import flowrun
    from tasks.cliniko.resources import RESOURCES
    from tasks.config import load_clinic
    from tasks.providers.outbox import outbox_dir, start_run
    from tasks.warehouse import open_db

    flowrun.prepare()
    demo_rate = 1200  # requests/min: Cliniko allows 200; the demo need not wait that long
    config = load_clinic("demo")
    for stale in (config.database_path, config.database_path.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    # The outbox goes with the database: its messages are this run's (the index says which run).
    start_run(
        outbox_dir(config.clinic),
        f"relay demo --seed {seed} --patients {patients}",
        time_zone=config.time_zone,
    )

    typer.secho(f"1. Generating a sandbox Cliniko clinic ({patients} patients)", bold=True)
    clinic, server = demo_sandbox(seed, patients, demo_rate)
    with server:
        typer.echo(f"   serving it at {server.base_url} (its clock moves when the demo says)")
        os.environ.update(
            CLINIKO_API_KEY=clinic.api_key,
            CLINIKO_BASE_URL=server.base_url,
            CLINIKO_CONTACT="demo@localhost",
            CLINIKO_REQUESTS_PER_MINUTE=str(demo_rate),
        )

        typer.secho("2. Full sync into DuckDB (first run: every row)", bold=True)
        print_sync(cliniko_sync(clinic="demo"))

        changes = clinic.advance(timedelta(minutes=5))
        happened = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in changes.items() if n)
        typer.secho("3. Five minutes later in the clinic: " + (happened or "nothing"), bold=True)

        typer.secho("4. A tick: the whole pipeline once, as the schedule runs it", bold=True)
        from flows.tick import clinic_tick, report

        typer.echo(report(clinic_tick(clinic="demo", return_state=True)))

        _demo_sending(clinic)

    with open_db(config.database_path, read_only=True) as con:
        held = {
            r.name: con.execute(
                f"SELECT count(*) FROM {r.table} WHERE removed_at IS NULL"
            ).fetchone()[0]
            for r in RESOURCES
        }
    typer.secho(f"Done. {config.database_path} now holds:", bold=True)
    typer.echo("  " + ", ".join(f"{n} {name}" for name, n in held.items()))


def demo_sandbox(seed: int, patients: int, requests_per_minute: int):
    """The demo's Cliniko: the same seed gives the same clinic (and first sync) run after run.

    No start: the clinic is generated as of 00:00 UTC today with its clock at now, the same all
    day. No auto-advance: its clock moves only where the demo says (5 minutes, an hour); a clock
    following real time would change rows while the first sync reads them."""
    from sandbox.cliniko import RateLimit, SandboxClinic, SandboxServer

    clinic = SandboxClinic.generate(seed=seed, patients=patients)
    limit = RateLimit(per_window=requests_per_minute, window_seconds=60.0)
    return clinic, SandboxServer(clinic, rate_limit=limit)


def _demo_sending(clinic) -> None:
    """The demo's last step: the triggers went live in the tick; an hour of the (sandbox)
    clinic later, what has come due is planned and sent to the local outbox."""
    from datetime import timedelta

    from flows.dispatch import dispatch_messages
    from flows.journeys import run_journeys
    from flows.models import build_models
    from flows.plan import plan_messages
    from flows.sync import cliniko_sync
    from tasks.config import load_clinic
    from tasks.providers.outbox import outbox_dir
    from tasks.warehouse import open_db

    _front_desk_tags_a_patient(clinic)
    clinic.advance(timedelta(hours=1))
    later = clinic.now
    typer.secho("5. An hour later in the clinic: sync, models, plan, send what is due", bold=True)
    cliniko_sync(clinic="demo")
    build_models(clinic="demo")
    planned = plan_messages(clinic="demo", now=later)
    journeyed = run_journeys(clinic="demo", now=later)["journeys"]
    sent = dispatch_messages(clinic="demo", now=later)
    typer.echo(f"   planning: {planned['totals'] or 'nothing new'}; sending: {sent['counts']}")
    typer.echo(
        f"   journeys: {', '.join(f'{j} {c}' for j, c in journeyed.items() if c) or 'no entries yet'}"
    )
    config = load_clinic("demo")
    with open_db(config.database_path, read_only=True) as con:
        counts = con.execute(
            "SELECT source_name, status, count(*) FROM state.messages GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    for name, status, n in counts:
        typer.echo(f"   {name:<26} {status:<10} {n:>5}")
    typer.echo(f"   the outbox: {outbox_dir(config.clinic) / 'index.html'} (relay outbox lists it)")


def _front_desk_tags_a_patient(clinic) -> None:
    """The front desk adds the medical alert "Insurance patient" (what the demo's
    welcome-insurance-alert trigger fires on) to one patient with an email who has none yet."""
    from tasks.config import load_clinic
    from tasks.warehouse import open_db

    with open_db(load_clinic("demo").database_path, read_only=True) as con:
        row = con.execute(
            "SELECT patient_id FROM marts.patients WHERE NOT is_archived AND email_is_valid "
            "AND patient_id NOT IN (SELECT patient_id FROM staging.medical_alerts "
            "WHERE name_normalised = 'insurance patient') ORDER BY patient_id LIMIT 1"
        ).fetchone()
    if row is not None:
        clinic.add_medical_alert(row[0], "Insurance patient")


def sandbox_command(
    port: int = typer.Option(
        8765, min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one)."
    ),
    seed: int = typer.Option(1, help="Same seed and size, same clinic (all day; --start: always)."),
    patients: int = typer.Option(500, min=0, help="Size of the generated clinic."),
    start: str = typer.Option(
        None,
        help="The clinic's clock start, ISO UTC (default: as of 00:00 UTC today, clock at now).",
    ),
    speed: float = typer.Option(
        None, min=0, help="Run the clinic's clock at this many times real time."
    ),
    rate_limit: int = typer.Option(
        200, min=0, help="Requests per minute per key, 429 past it, as Cliniko (200); 0: no limit."
    ),
) -> None:
    """Serve a generated Cliniko clinic (the sandbox API) until Ctrl-C."""
    from sandbox.cliniko.__main__ import serve

    def announce(server) -> None:
        typer.echo(f"Cliniko sandbox: {server.base_url}")
        typer.echo(f"API key:         {server.clinic.api_key}")
        typer.echo(f"Admin:           {server.admin_url}/stats, /advance?seconds=N, /faults (POST)")
        typer.echo("Ctrl-C stops it.")

    from datetime import datetime

    from tasks.errors import UserFacingError

    try:
        begin = datetime.fromisoformat(start) if start else None
    except ValueError:
        raise UserFacingError(
            f"--start {start!r} is not an ISO time, e.g. 2026-03-02T09:00:00Z"
        ) from None
    if begin is not None and begin.tzinfo is None:
        raise UserFacingError(f"--start {start!r} needs an offset, e.g. 2026-03-02T09:00:00Z")
    from relay.serve import port_in_use

    if port and port_in_use(port):  # 8765 is also `relay serve`'s unsubscribe endpoint
        raise UserFacingError(
            f"Port {port} on 127.0.0.1 is in use (another sandbox, or `relay serve`'s "
            "unsubscribe endpoint): pick another with --port N, or --port 0 for a free one."
        )
    serve(
        announce, port=port, seed=seed, patients=patients, start=begin, speed=speed,
        rate_limit=rate_limit,
    )  # fmt: skip
