"""The ``relay`` command: one entry point, a subcommand per job.

Imports of Prefect, DuckDB and the sandbox happen inside each command so ``relay --help`` is instant.
Errors meant for a person (bad config, bad key, busy database) are printed without a traceback.
"""

from __future__ import annotations

import sys

import typer

import relay  # noqa: F401  (applies the offline Prefect defaults first)

app = typer.Typer(
    name="relay",
    help="Cliniko -> DuckDB -> lists and segments -> reminders and campaigns, on Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Cliniko -> DuckDB -> lists and segments -> reminders and campaigns, on Prefect."""


@app.command("clinics")
def clinics_command() -> None:
    """List the configured clinics and check each configuration file."""
    from tasks.config import ConfigError, list_clinics, load_clinic

    failed = False
    for name in list_clinics():
        try:
            cfg = load_clinic(name)
        except ConfigError as exc:
            failed = True
            typer.secho(f"{name}: {exc}", fg=typer.colors.RED)
            continue
        typer.echo(f"{cfg.clinic}: {cfg.name} ({cfg.time_zone}) -> {cfg.database_path}")
    if failed:
        raise typer.Exit(2)


@app.command("sync")
def sync_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    reconcile: bool = typer.Option(
        False, "--reconcile", help="Also list every id and mark rows deleted in Cliniko."
    ),
) -> None:
    """Bring the clinic's DuckDB copy of Cliniko up to date (the cliniko-sync flow)."""
    from flows.sync import cliniko_sync

    _print_sync(cliniko_sync(clinic=clinic, reconcile=reconcile))


def _print_sync(counts: dict[str, dict]) -> None:
    """Counts per resource: never a record's content."""
    typer.echo(f"  {'resource':<24}{'new':>8}{'updated':>9}{'quarant.':>9}{'removed':>9}"
               f"{'requests':>10}{'429s':>6}  watermark")  # fmt: skip
    for name, c in counts.items():
        typer.echo(
            f"  {name:<24}{c['new']:>8}{c['updated']:>9}{c['quarantined']:>9}{c['removed']:>9}"
            f"{c['requests']:>10}{c['rate_limited']:>6}  {c['watermark'] or '-'}"
        )
    typer.echo(f"  {sum(c['requests'] for c in counts.values())} requests in all")


@app.command("serve")
def serve_command(
    port: int = typer.Option(4200, help="Port of the Prefect server and its UI on 127.0.0.1."),
    every: float = typer.Option(2.0, help="Minutes between the demo clinic's ticks."),
    patients: int = typer.Option(500, help="Size of the generated sandbox clinic."),
    seed: int = typer.Option(1, help="Seed of the generated clinic."),
    speed: float = typer.Option(10.0, help="How much faster than real time the sandbox runs."),
) -> None:
    """Prefect server + UI, the sandbox Cliniko with its clock running, and the demo clinic's
    ticks on a schedule: open the UI and watch. Starts from a fresh demo database; Ctrl-C stops
    everything."""
    from relay.serve import serve_demo

    serve_demo(port, every, patients, seed, speed, typer.echo)


alerts_app = typer.Typer(help="Notifications when runs fail or the data goes stale.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("create")
def alerts_create_command(
    webhook_url: str = typer.Option(
        ..., help="Where notifications are POSTed as JSON {subject, body} (Slack, ntfy, ...)."
    ),
    block: str = typer.Option("relay-alerts", help="Name of the notification block to save."),
    quiet_minutes: int = typer.Option(30, help="Alert when no tick completed for this long."),
) -> None:
    """Create (or replace) the Prefect automations that notify on failed or crashed runs, on a
    stale or failed sync, and when ticks stop. Needs PREFECT_API_URL (a running server)."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        raise typer.BadParameter(
            "set PREFECT_API_URL to your Prefect server (e.g. http://127.0.0.1:4200/api); "
            "automations live on the server"
        )
    from relay.alerts import create_alerts

    for name in create_alerts(webhook_url, block, quiet_minutes):
        typer.echo(f"created automation: {name}")
    typer.echo(f"notifications go through the CustomWebhookNotificationBlock '{block}'")


@app.command("demo")
def demo_command(
    patients: int = typer.Option(500, help="Size of the generated sandbox clinic."),
    seed: int = typer.Option(1, help="Seed of the generated clinic (same seed, same clinic)."),
) -> None:
    """The whole pipeline against the built-in Cliniko sandbox (no accounts needed).

    Nothing leaves this machine; the demo database starts afresh each time."""
    import os
    from datetime import UTC, datetime, timedelta

    from flows.sync import cliniko_sync
    from sandbox.cliniko import RateLimit, SandboxClinic, SandboxServer
    from tasks.cliniko.resources import RESOURCES
    from tasks.config import load_clinic
    from tasks.warehouse import open_db

    demo_rate = 1200  # requests/min: Cliniko allows 200; the demo need not wait that long
    config = load_clinic("demo")
    for stale in (config.database_path, config.database_path.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)

    typer.secho(f"1. Generating a sandbox Cliniko clinic ({patients} patients)", bold=True)
    clinic = SandboxClinic.generate(
        seed=seed, patients=patients, start=datetime.now(UTC).replace(second=0, microsecond=0)
    )
    limit = RateLimit(per_window=demo_rate, window_seconds=60.0)
    with SandboxServer(clinic, rate_limit=limit, auto_advance_speed=60) as server:
        typer.echo(f"   serving it at {server.base_url} (its clock runs 60x real time)")
        os.environ.update(
            CLINIKO_API_KEY=clinic.api_key,
            CLINIKO_BASE_URL=server.base_url,
            CLINIKO_CONTACT="demo@localhost",
            CLINIKO_REQUESTS_PER_MINUTE=str(demo_rate),
        )

        typer.secho("2. Full sync into DuckDB (first run: every row)", bold=True)
        _print_sync(cliniko_sync(clinic="demo"))

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


@app.command("outbox")
def outbox_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    limit: int = typer.Option(20, help="How many of the newest messages to list."),
    open_: str = typer.Option(
        None, "--open", help="Open one message: its send key (or the start of its file name)."
    ),
) -> None:
    """List the messages the local outbox holds (newest first), or open one."""
    import webbrowser

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.providers.outbox import list_messages, outbox_dir, write_index

    folder = outbox_dir(load_clinic(clinic).clinic)
    messages = list_messages(folder)
    if open_:
        match = [m for m in messages if m["send_key"] == open_ or m["stem"].startswith(open_)]
        if len(match) != 1:
            raise UserFacingError(
                f"{len(match)} outbox messages match {open_!r}; give a full send key "
                "(listed by 'relay outbox')."
            )
        path = folder / match[0]["file"]
        typer.echo(str(path))
        webbrowser.open(path.as_uri())
        return
    index = write_index(folder)
    # Send keys and file names only: subjects and addresses stay in the files.
    for m in messages[:limit]:
        typer.echo(
            f"{m['written_at'][:19]}  {m['channel']:5}  {m['send_key']}  {folder / m['file']}"
        )
    typer.echo(f"{len(messages)} messages in {folder}; all of them: {index}")


@app.command("sandbox")
def sandbox_command(
    port: int = typer.Option(8765, help="Port on 127.0.0.1 (0 picks a free one)."),
    seed: int = typer.Option(1, help="Same seed and size, same clinic."),
    patients: int = typer.Option(500, help="Size of the generated clinic."),
    speed: float = typer.Option(None, help="Run the clinic's clock at this many times real time."),
    rate_limit: int = typer.Option(None, help="Requests per minute per key (Cliniko: 200)."),
) -> None:
    """Serve a generated Cliniko clinic (the sandbox API) until Ctrl-C."""
    from sandbox.cliniko.__main__ import serve

    def announce(server) -> None:
        typer.echo(f"Cliniko sandbox: {server.base_url}")
        typer.echo(f"API key:         {server.clinic.api_key}")
        typer.echo(f"Admin:           {server.admin_url}/stats, /advance?seconds=N, /faults (POST)")
        typer.echo("Ctrl-C stops it.")

    serve(announce, port=port, seed=seed, patients=patients, speed=speed, rate_limit=rate_limit)


campaign_app = typer.Typer(
    help="One-off marketing sends to a segment: preview, then send with --confirm.",
    no_args_is_help=True,
)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("preview")
def campaign_preview_command(
    name: str = typer.Argument(..., help="The campaign's name under campaigns: in clinic.yaml."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    sample: int = typer.Option(5, help="How many recipients to show."),
) -> None:
    """Who would get it, and how it reads. Nothing is queued or written. The sample is shown on
    this terminal only."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from tasks.config import load_clinic
    from tasks.marketing import campaigns
    from tasks.messages.gate import Gate
    from tasks.messages.templates import RenderedEmail
    from tasks.models import runner as models
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    campaign = campaigns.find(config, name)
    with open_db(config.database_path) as con:
        models.require_good_build(con)
        p = campaigns.preview(con, config, name, datetime.now(UTC), sample_size=sample)
    local = p.send_at.astimezone(ZoneInfo(config.time_zone))
    minutes = -(-p.audience // campaign.per_minute)
    typer.secho(f"Campaign {p.campaign}: {p.channel} '{p.template}' to segment {p.segment}", bold=True)  # fmt: skip
    typer.echo(f"  send at     {local:%Y-%m-%d %H:%M} {config.time_zone} ({p.send_at:%H:%M} UTC)")
    typer.echo(f"  segment     {p.segment_size} patients")
    typer.echo(f"  not on the {p.channel} marketing list: {p.not_on_list}; suppressed since: {p.suppressed}")  # fmt: skip
    typer.echo(f"  audience    {p.audience} messages, at most {campaign.per_minute} a minute "
               f"(about {minutes} min); the frequency cap may hold some back")  # fmt: skip
    typer.echo(f"  status      {p.status}" + (f"; messages: {p.ledger}" if p.ledger else ""))
    if p.channel == "sms" and Gate.from_config(config).is_quiet(p.send_at):
        typer.secho(
            "  send_at is in the quiet hours: every message waits for their end and then goes "
            "at once; schedule an SMS campaign in the day to keep its throttle.",
            fg=typer.colors.YELLOW,
        )
    if p.sample:
        typer.secho("Sample (this terminal only):", bold=True)
        for patient_id, first_name, address in p.sample:
            typer.echo(f"  patient {patient_id:<10} {first_name:<16} {address}")
    if p.template_problem:
        typer.secho(f"The template does not render: {p.template_problem}", fg=typer.colors.RED)
    elif isinstance(p.rendered, RenderedEmail):
        typer.echo(f"  subject     {p.rendered.subject}")
    elif p.rendered is not None:
        typer.echo(f"  text        {p.rendered.text}")
    if p.status == "draft":
        typer.echo(f"To send it: relay campaign send {name} --clinic {clinic} --confirm")


@campaign_app.command("send")
def campaign_send_command(
    name: str = typer.Argument(..., help="The campaign's name under campaigns: in clinic.yaml."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    confirm: bool = typer.Option(
        False, "--confirm", help="Required: yes, send this campaign (once; it cannot be undone)."
    ),
) -> None:
    """Confirm a campaign: its audience is frozen into the ledger at its send time (now if that
    has passed) and dispatch sends it, throttled. A campaign is confirmed once."""
    if not confirm:
        typer.secho(
            f"Nothing sent. Check it with `relay campaign preview {name} --clinic {clinic}`, "
            "then add --confirm to send it.",
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(1)
    from flows.campaign import send_campaign

    result = send_campaign(clinic=clinic, campaign=name, confirm=True)
    typer.echo(
        f"Confirmed {name} ({result['confirmation_id']}): {result['audience']} recipients; "
        + (
            f"{result['queued']} messages queued; dispatch sends them, "
            f"throttled, from the next tick."
            if result["queued"] is not None
            else f"the audience is frozen and sent from {result['preview']['send_at']}."
        )
    )


@campaign_app.command("cancel")
def campaign_cancel_command(
    name: str = typer.Argument(...),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
) -> None:
    """Stop a confirmed campaign: nothing more of it goes (what went, went)."""
    from datetime import UTC, datetime

    from tasks.config import load_clinic
    from tasks.marketing import campaigns
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path) as con:
        cancelled = campaigns.cancel(con, name, datetime.now(UTC))
    typer.echo(f"Cancelled {name}: {cancelled} planned messages will not be sent.")


@app.command("feedback")
def feedback_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
) -> None:
    """Pull bounces, provider suppressions, STOP/START replies and unsubscribe clicks now (the
    feedback flow; the tick runs it every time)."""
    from flows.feedback import pull_feedback

    counts = pull_feedback(clinic=clinic)
    for name, n in sorted(counts.items()):
        typer.echo(f"  {name:<36}{n:>8}")
    typer.echo("  nothing new" if not counts else f"  {sum(counts.values())} items recorded")


@app.command("serve-unsubscribe")
def serve_unsubscribe_command(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (put HTTPS in front)."),
    port: int = typer.Option(8765, help="Port; providers.unsubscribe_url must reach it."),
    clinic: list[str] = typer.Option(None, help="Clinics to serve (repeat); default: all."),
) -> None:
    """The unsubscribe endpoint marketing email links to: a confirmation page (GET) and RFC 8058
    one-click unsubscribe (POST). Ctrl-C stops it."""
    import uvicorn

    from tasks.config import list_clinics, load_clinic
    from tasks.unsubscribe.app import create_app

    configs = {c.clinic: c for c in (load_clinic(name) for name in clinic or list_clinics())}
    for config in configs.values():
        typer.echo(f"  {config.clinic}: links {config.providers.unsubscribe_url}/<token>")
    typer.echo(f"Serving unsubscribes on http://{host}:{port}")
    uvicorn.run(create_app(configs), host=host, port=port, log_level="warning", access_log=False)


@app.command("import-unsubscribes")
def import_unsubscribes_command(
    file: str = typer.Argument(..., help="CSV file, e.g. a Mailchimp 'unsubscribed' export."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Import the valid addresses even if some are invalid."
    ),
) -> None:
    """Unsubscribe every address in the file's email column from marketing email. All or
    nothing: an invalid address stops the import (its line is named) unless --skip-invalid."""
    from datetime import UTC, datetime
    from pathlib import Path

    from tasks.config import load_clinic
    from tasks.feedback_import import import_unsubscribes
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path) as con:
        result = import_unsubscribes(con, Path(file), datetime.now(UTC), skip_invalid=skip_invalid)
    typer.echo(f"  email column: {result.column}")
    for name, n in result.as_dict().items():
        typer.echo(f"  {name.replace('_', ' '):<22}{n:>8}")
    if result.invalid_lines:
        typer.echo(f"  invalid on lines: {', '.join(map(str, result.invalid_lines[:20]))}")


@app.command("report")
def report_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    days: int = typer.Option(30, min=1, max=3650, help="Days up to and including today."),
    out: str = typer.Option("report.html", help="HTML file to write (open it in a browser)."),
) -> None:
    """Messages per trigger, journey and campaign per day; sent, bounced, failed, skipped and
    why; list growth and churn; suppressions. Counts only, with charts."""
    from datetime import UTC, datetime
    from pathlib import Path

    import duckdb

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.reports import build_report, render_html
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    now = datetime.now(UTC)
    if not config.database_path.exists():
        raise UserFacingError(f"No database at {config.database_path}: run a tick or a sync first.")
    with open_db(config.database_path, read_only=True) as con:
        try:
            report = build_report(con, config.clinic, config.time_zone, days, now)
        except duckdb.CatalogException:
            raise UserFacingError(
                f"{config.database_path} lacks the feedback tables (it predates them): run "
                f"`relay feedback --clinic {config.clinic}` once, then the report."
            ) from None
    path = Path(out)
    path.write_text(render_html(report, config.name, now), encoding="utf-8")
    totals = report.per_day()
    sent = sum(d["sent"] for d in totals.values())
    typer.echo(f"  {report.first_day} to {report.last_day}: {sent} sent, "
               f"{sum(d['bounced'] for d in totals.values())} bounced, "
               f"{sum(d['failed'] for d in totals.values())} failed, "
               f"{sum(d['skipped'] for d in totals.values())} skipped")  # fmt: skip
    typer.echo(f"  wrote {path.resolve()}")


preview_app = typer.Typer(
    help="See before switching on: who would get what, and when. Reads only; writes nothing.",
    no_args_is_help=True,
)
app.add_typer(preview_app, name="preview")


@preview_app.command("trigger")
def preview_trigger_command(
    name: str = typer.Argument(..., help="The trigger's name under triggers: in clinic.yaml."),
    days: float = typer.Option(7, help="How many days ahead to show."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(100, help="At most this many rows of the calendar (0: all)."),
) -> None:
    """The calendar of a trigger's messages: when, to whom, about which appointment, and whether
    it would go or be skipped (and why). A trigger that is not live yet is shown as if switched
    on now. Names and addresses are shown on this terminal only."""
    from collections import Counter
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.models import runner as models
    from tasks.triggers import plan as planning
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    trigger = next((t for t in config.triggers if t.name == name), None)
    if trigger is None:
        known = ", ".join(t.name for t in config.triggers) or "none"
        raise UserFacingError(f"No trigger '{name}' in {config.source}. Triggers: {known}.")
    now = datetime.now(UTC)
    zone = ZoneInfo(config.time_zone)
    with open_db(config.database_path, read_only=True) as con:
        models.require_good_build(con)
        went_live, rows = planning.preview(con, trigger, now, days)
        typos = planning.unknown_references(con, trigger)
    if went_live < now:
        state = "live"
    elif trigger.enabled:
        state = "enabled: goes live at the next tick (shown as if now)"
    else:
        state = "not enabled: shown as if switched on now"
    typer.secho(
        f"Trigger {trigger.name}: {trigger.channel} '{trigger.template}' ({trigger.purpose}), "
        f"{trigger.event}, {trigger.timing}; {state}",
        bold=True,
    )
    typer.echo(f"  went live   {went_live.astimezone(zone):%Y-%m-%d %H:%M} {config.time_zone}")
    for typo in typos:
        typer.secho(f"  warning: {typo}", fg=typer.colors.YELLOW)
    decisions = Counter(r.decision.split(":")[0].split(" (")[0] for r in rows)
    typer.echo(
        f"  next {days:g} days: {len(rows)} messages"
        + (f" ({', '.join(f'{n} {d}' for d, n in decisions.most_common())})" if rows else "")
    )
    for r in rows[: limit or None]:
        c = r.candidate
        who = (
            f"{c['preferred_first_name'] or c['first_name'] or '?'} {c['last_name'] or ''}".strip()
        )
        about = (
            f"{c['appointment_type_name']} {c['starts_at'].astimezone(zone):%a %d %b %H:%M}"
            if c["starts_at"] is not None
            else "-"
        )
        typer.echo(
            f"  {r.due_at.astimezone(zone):%a %d %b %H:%M}  patient {r.patient_id:<19} "
            f"{who[:22]:<22} {str(c['address'] or '-')[:28]:<28} {about[:44]:<44} {r.decision}"
        )
    if limit and len(rows) > limit:
        typer.echo(f"  ... {len(rows) - limit} more (--limit 0 shows all)")
    typer.echo(
        "Nothing was written." + ("" if trigger.enabled else " Switch it on with enabled: true.")
    )


@app.command("render")
def render_command(
    trigger_name: str = typer.Argument(..., metavar="TRIGGER", help="A trigger in clinic.yaml."),
    patient: int = typer.Option(..., "--patient", help="The patient's Cliniko id."),
    appointment: int = typer.Option(
        None,
        "--appointment",
        help="Which of their appointments (default: the next one the "
        "trigger applies to, else the latest).",
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    out: str = typer.Option(None, help="Folder for the files (default: data/previews/<clinic>)."),
) -> None:
    """Render a trigger's message for one patient into files a person can open (.eml and .html
    for email, .txt for SMS). Nothing is sent or recorded."""
    from datetime import UTC, datetime
    from email.utils import formataddr
    from pathlib import Path

    from relay.env import data_dir
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.messages.templates import Templates, render_to_file
    from tasks.models import runner as models
    from tasks.triggers import plan as planning
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    trigger = next((t for t in config.triggers if t.name == trigger_name), None)
    if trigger is None:
        known = ", ".join(t.name for t in config.triggers) or "none"
        raise UserFacingError(f"No trigger '{trigger_name}' in {config.source}. Triggers: {known}.")
    with open_db(config.database_path, read_only=True) as con:
        models.require_good_build(con)
        address, context, used = planning.context_for_patient(
            con, config, trigger, patient, datetime.now(UTC), appointment
        )
    marketing = trigger.purpose == "marketing"
    if marketing and trigger.channel == "email":
        context["unsubscribe_url"] = config.providers.unsubscribe_url.rstrip("/") + "/PREVIEW"
    sender = config.providers.sender
    path = render_to_file(
        Templates(config.folder),
        trigger.template,
        trigger.channel,
        context,
        Path(out) if out else data_dir() / "previews" / config.clinic,
        marketing=marketing,
        to=address or f"(no {'email' if trigger.channel == 'email' else 'mobile'} on file)",
        sender=formataddr((sender.name or config.name, sender.email))
        if trigger.channel == "email"
        else sender.name or config.name,
    )
    typer.echo(f"Rendered {trigger.name} for patient {patient}, {used}:")
    typer.echo(f"  {path.resolve()}")


models_app = typer.Typer(
    help="The SQL models in sql/: build them into the clinic's database, and test them.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("build")
def models_build_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    full_refresh: bool = typer.Option(
        False, "--full-refresh", help="Rebuild incremental models from all raw rows."
    ),
) -> None:
    """Build every model, run the data tests and record who joined or left each list and
    segment: all or nothing. A failure names the file and keeps the last good models."""
    from tasks.config import load_clinic
    from tasks.models import runner as models
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path) as con:
        result = models.build(
            con, models.ListSettings.from_config(config), full_refresh=full_refresh
        )
        statuses = con.execute(
            "SELECT status, count(*) FROM marts.email_marketing_list GROUP BY ALL ORDER BY 2 DESC"
        ).fetchall()
        by_limit = con.execute(
            "SELECT active_patient_limit, list_size, is_current_setting "
            "FROM marts.list_size_by_limit"
        ).fetchall()
    typer.echo(
        f"Built {len(result.rows)} models for {clinic} ({result.build_id}); "
        f"{result.tests_passed} data tests passed."
    )
    typer.echo("Email marketing list: " + ", ".join(f"{s} {n}" for s, n in statuses))
    typer.echo(
        "  size under each active-patient limit (months): "
        + ", ".join(f"{limit}{'*' if current else ''} {size}" for limit, size, current in by_limit)
        + "   (* = clinic.yaml)"
    )
    typer.echo("Audience sizes, joined and left since the last build:")
    for audience, counts in result.audiences.items():
        typer.echo(f"  {audience:<45} {counts['size']:>8}  +{counts['joined']} -{counts['left']}")


@models_app.command("test")
def models_test_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
) -> None:
    """Run sql/tests/*.sql against the models as last built (reads only)."""
    from tasks.config import load_clinic
    from tasks.models import runner as models
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path, read_only=True) as con:
        failures = models.run_tests(con)
    for file, rows in failures.items():
        if rows:
            typer.secho(f"FAIL {file}: {rows} offending row(s)", fg=typer.colors.RED)
        else:
            typer.echo(f"ok   {file}")
    if any(failures.values()):
        raise typer.Exit(1)


@preview_app.command("segment")
def preview_segment_command(
    name: str = typer.Argument(..., help="The segment: sql/segments/<name>.sql."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    sample: int = typer.Option(10, help="How many members to show."),
) -> None:
    """A segment's size, who would join or leave it compared with the last build, and a sample,
    from its file as it stands now. Nothing is written; names and emails stay on this terminal."""
    from tasks.config import load_clinic
    from tasks.models import runner as models
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path, read_only=True) as con:
        models.require_good_build(con)
        p = models.preview_segment(con, name, sample_size=sample)
    typer.secho(f"{p.relation}: {p.size} patients", bold=True)
    typer.echo(f"  on the email marketing list {p.on_email_list}; on the SMS list {p.on_sms_list}")
    if p.recorded:
        typer.echo(f"  since the last build: {p.joined} would join, {p.left} would leave")
    else:
        typer.echo("  new segment: its first build records these as initial members (no entries)")
    if p.sample:
        typer.secho("Sample (this terminal only):", bold=True)
        for patient_id, greeting, email in p.sample:
            typer.echo(f"  patient {patient_id:<12} {greeting or '':<16} {email or ''}")


def main() -> None:
    from tasks.errors import UserFacingError

    try:
        app()
    except UserFacingError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
