"""What was sent and what came back: the local outbox, campaigns, messages in doubt (the
ledger), unsubscribes and the report."""

from __future__ import annotations

import math
from datetime import datetime

import typer


def clinic_time(at: datetime | str, time_zone: str) -> str:
    """A moment as the clinic reads it, then in UTC with its date (which may be the day before)."""
    from datetime import UTC
    from zoneinfo import ZoneInfo

    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    local, utc = moment.astimezone(ZoneInfo(time_zone)), moment.astimezone(UTC)
    return f"{local:%Y-%m-%d %H:%M} {time_zone} ({utc:%Y-%m-%d %H:%M} UTC)"


def outbox_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    limit: int = typer.Option(20, min=1, help="How many of the newest messages to list."),
    open_: str = typer.Option(
        None, "--open", help="Open one message: its send key (or the start of its file name)."
    ),
) -> None:
    """List the messages the local outbox holds (newest first), or open one."""
    import webbrowser

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.providers.outbox import (
        list_messages,
        local_time,
        outbox_dir,
        read_run,
        write_index,
    )

    config = load_clinic(clinic)
    folder = outbox_dir(config.clinic)
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
    if not folder.is_dir():  # not made here: an empty folder said an outbox was in use
        typer.echo(
            f"No outbox at {folder}: nothing has been sent through the local outbox for "
            f"{config.clinic} yet (it sends there while clinic.yaml's providers are 'outbox', "
            "the default)."
        )
        return
    index = write_index(folder, time_zone=config.time_zone)
    if run := read_run(folder):
        typer.echo(
            f"Run: {run['label']}, started {local_time(run['started_at'], config.time_zone)}"
        )
    # Times in the clinic's zone, the sender (trigger, journey or campaign), send keys and file
    # names only: subjects and addresses stay in the files.
    for m in messages[:limit]:
        typer.echo(
            f"{local_time(m['written_at'], config.time_zone)}  {m['channel']:5}  "
            f"{m['source']:<34}  {m['send_key']}  {folder / m['file']}"
        )
    typer.echo(
        f"{len(messages)} messages in {folder} (times in {config.time_zone}); all of them: {index}"
    )


campaign_app = typer.Typer(
    help="One-off marketing sends to a segment: preview, then send with --confirm.",
    no_args_is_help=True,
)


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
    now = datetime.now(UTC)
    with open_db(config.database_path, create=False) as con:
        models.require_good_build(con)
        p = campaigns.preview(con, config, name, now, sample_size=sample)
    local = p.send_at.astimezone(ZoneInfo(config.time_zone))
    minutes = -(-p.audience // p.per_minute)
    late = campaigns.past_send_at(config, campaigns.find(config, name), now)
    from_confirmation = p.status == "draft" and late is not None  # frozen when confirmed
    start = "the confirmation (send_at has passed)" if from_confirmation else "send_at"
    typer.secho(f"Campaign {p.campaign}: {p.channel} '{p.template}' to segment {p.segment}", bold=True)  # fmt: skip
    typer.echo(f"  send at     {clinic_time(p.send_at, config.time_zone)}")
    typer.echo(f"  segment     {p.segment_size} patients")
    typer.echo(f"  not on the {p.channel} marketing list: {p.not_on_list}; suppressed since: {p.suppressed}")  # fmt: skip
    typer.echo(f"  audience    {p.audience} messages, due {p.per_minute} a minute from {start} "
               f"(about {minutes} min); the frequency cap may hold some back")  # fmt: skip
    if p.audience > p.per_minute:  # dispatch runs once a tick: what came due since goes together
        every = config.schedule.tick_every_minutes
        typer.echo(f"  pace        each tick (every {every:g} min) sends what has come due: up to "
                   f"{math.ceil(p.per_minute * every)} together")  # fmt: skip
    typer.echo(f"  status      {p.status}" + (f"; messages: {p.ledger}" if p.ledger else ""))
    if p.frozen_at is not None:
        typer.echo(f"  frozen      at {p.frozen_at:%Y-%m-%d %H:%M} UTC: the audience is fixed; "
                   "leavers since are skipped at send time, joiners are not added")  # fmt: skip
    else:
        at = "at confirmation" if from_confirmation else f"at send_at ({local:%Y-%m-%d %H:%M})"
        typer.echo(f"  frozen      not yet: the audience is counted again {at}; the numbers "
                   "above are as of now")  # fmt: skip
    for change in p.changed_since_confirm:
        typer.secho(f"  changed in clinic.yaml since confirmation (not sent): {change}",
                    fg=typer.colors.YELLOW)  # fmt: skip
    if p.status == "draft" and late:
        typer.secho(f"  {late}: `send` needs --force for that.", fg=typer.colors.YELLOW)
    if p.channel == "sms" and Gate.from_config(config).is_quiet(p.send_at):
        typer.secho(
            "  send_at is in the quiet hours: the messages wait for their end and then go at "
            f"the same pace ({p.per_minute} a minute).",
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
        force = " --force" if late else ""  # past send_at: send refuses without it
        typer.echo(f"To send it: relay campaign send {name} --clinic {clinic} --confirm{force}")


@campaign_app.command("send")
def campaign_send_command(
    name: str = typer.Argument(..., help="The campaign's name under campaigns: in clinic.yaml."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    confirm: bool = typer.Option(
        False, "--confirm", help="Required: yes, send this campaign (once; it cannot be undone)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Send now although the campaign's send_at has already passed."
    ),
) -> None:
    """Confirm a campaign: its segment, channel, template and throttle are recorded as they are
    now (later edits to clinic.yaml change nothing of it), its audience is frozen into the ledger
    at its send time, and dispatch sends it, throttled. A campaign is confirmed once; a send_at
    already past is refused without --force."""
    if not confirm:
        typer.secho(
            f"Nothing sent. Check it with `relay campaign preview {name} --clinic {clinic}`, "
            "then add --confirm to send it.",
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(1)
    from flows.campaign import send_campaign
    from relay.cli import flowrun
    from tasks.config import load_clinic

    flowrun.prepare()
    result = send_campaign(clinic=clinic, campaign=name, confirm=True, force=force)
    send_at = clinic_time(result["preview"]["send_at"], load_clinic(clinic).time_zone)
    typer.echo(
        f"Confirmed {name} ({result['confirmation_id']}): {result['audience']} recipients; "
        + (
            f"{result['queued']} messages queued; dispatch sends them, "
            f"throttled, from the next tick."
            if result["queued"] is not None
            else f"the audience is frozen and sent from {send_at}."
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
    from tasks.homecopy import require_current_copy
    from tasks.marketing import campaigns
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path, create=False) as con:
        require_current_copy(con, config.clinic)  # an old copy's cancel stops nothing
        said = campaigns.cancel_said(con, name, datetime.now(UTC))
    typer.echo(said)


ledger_app = typer.Typer(
    help="The message ledger: what is waiting and why; messages in doubt, settled by hand.",
    no_args_is_help=True,
)


@ledger_app.command("waiting")
def ledger_waiting_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
) -> None:
    """Messages planned but not sent yet for a reason that can change (no address, archived,
    reminder preference, off the marketing list, frequency cap, quiet hours): each goes if its
    reason clears before its grace window ends, else it is skipped with the reason. Then how
    many messages are in each state. No names or addresses shown."""
    from datetime import UTC, datetime

    from tasks.config import load_clinic
    from tasks.messages import waiting
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    now = datetime.now(UTC)
    with open_db(config.database_path, read_only=True) as con:
        rows = waiting.rows_waiting(con, now)
        states = waiting.state_counts(con, now)
    for r, why in rows:
        until = f"{r.expires_at:%Y-%m-%d %H:%M} UTC" if r.expires_at else "no grace window"
        typer.echo(f"{r.send_key}  {r.channel:5}  due {r.due_at:%Y-%m-%d %H:%M} UTC, "
                   f"until {until}: {why}")  # fmt: skip
    typer.echo(
        f"{len(rows)} waiting messages in {config.clinic}. By state: "
        + (", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none")
    )


@ledger_app.command("unknown")
def ledger_unknown_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
) -> None:
    """Messages whose request may have reached the provider but whose outcome nobody knows
    (a timeout after sending, or a run that died mid-request, not found at the provider). Check
    each in the provider's account, then `relay ledger resolve`. No names or addresses shown."""
    from tasks.config import load_clinic
    from tasks.messages import ledger
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path, read_only=True) as con:
        rows = ledger.in_status(con, "unknown")
    for r in rows:
        when = f"{r.sending_at:%Y-%m-%d %H:%M:%S} UTC" if r.sending_at else "?"
        why = r.status_reason or "no reason recorded"
        code = f" (error {r.error_code})" if r.error_code else ""
        typer.echo(f"{r.send_key}  {r.channel:5}  {r.provider or '?':8}  tried {when}, "
                   f"attempt {r.attempts}: {why}{code}")  # fmt: skip
    typer.echo(
        f"{len(rows)} unknown messages in {config.clinic}."
        + (
            f" Settle each: relay ledger resolve SEND_KEY --sent|--resend --clinic {config.clinic}"
            if rows
            else ""
        )
    )


@ledger_app.command("resolve")
def ledger_resolve_command(
    send_key: str = typer.Argument(..., help="The message's send key (`relay ledger unknown`)."),
    sent: bool = typer.Option(False, "--sent", help="It went: the provider's account shows it."),
    resend: bool = typer.Option(
        False, "--resend", help="It did not go: send it again (re-checked first, like any send)."
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    by: str = typer.Option(None, help="Who decides (default: your login name)."),
    note: str = typer.Option(None, help="Why, in a few words (no patient details)."),
) -> None:
    """Settle one unknown message by hand, recorded in the ledger: who, when, what and why."""
    import getpass
    from datetime import UTC, datetime

    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.messages import ledger
    from tasks.warehouse import open_db, transaction

    if sent == resend:
        raise UserFacingError(
            f"Say what happened to {send_key}: --sent (the provider's account shows it) or "
            "--resend (it did not go), one of the two."
        )
    from tasks.homecopy import require_current_copy

    config = load_clinic(clinic)
    now = datetime.now(UTC)
    with open_db(config.database_path, create=False) as con, transaction(con):
        require_current_copy(con, config.clinic)  # settled on an old copy, the home still doubts
        try:
            row = ledger.resolve(con, send_key, "sent" if sent else "resend",
                                 by or getpass.getuser(), now, note)  # fmt: skip
        except (LookupError, ledger.IllegalTransition) as exc:
            raise UserFacingError(f"{config.clinic}: {exc}") from None
    typer.echo(f"{send_key}: {row.status} ({row.status_reason})")
    if resend and row.expires_at is not None and row.expires_at < now:
        typer.secho(
            f"  its grace window ended at {row.expires_at:%Y-%m-%d %H:%M} UTC: dispatch will skip "
            "it rather than send it late.",
            fg=typer.colors.YELLOW,
        )


def serve_unsubscribe_command(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (put HTTPS in front)."),
    port: int = typer.Option(8765, help="Port; providers.unsubscribe_url must reach it."),
    clinic: list[str] = typer.Option(None, help="Clinics to serve (repeat); default: all."),
) -> None:
    """The unsubscribe endpoint marketing email links to: a confirmation page (GET) and RFC 8058
    one-click unsubscribe (POST); and Twilio's status callbacks for clinics whose TwilioAccount
    sets status_callback_url. Ctrl-C stops it."""
    import uvicorn

    from blocks.resolve import providers_for
    from tasks.config import ConfigError, list_clinics, load_clinic
    from tasks.unsubscribe import tokens
    from tasks.unsubscribe.app import create_app, endpoint_events

    configs = {c.clinic: c for c in (load_clinic(name) for name in clinic or list_clinics())}
    sms = {}
    for config in configs.values():
        typer.echo(f"  {config.clinic}: links {config.providers.unsubscribe_url}/<token>")
        try:
            sms[config.clinic] = providers_for(config)["sms"]
        except ConfigError as exc:  # the links still work; delivery is polled by the tick
            typer.echo(f"  {config.clinic}: no Twilio status callbacks ({exc})")
            continue
        callback = getattr(getattr(sms[config.clinic], "settings", None), "status_callback_url", "")
        if callback:
            typer.echo(f"  {config.clinic}: Twilio status callbacks {callback}")
    # The key now, not at the first click: without it (a fleet's machine missing the shared
    # key) every click would be a 500 to the patient, the reason in a traceback here.
    key = tokens.secret_key()
    events = endpoint_events()
    typer.echo(
        "Clicks go to the Prefect server as relay.unsubscribe events (each clinic's tick records "
        "them; spooled here while the server is unreachable)"
        if events
        else "Clicks are recorded in each clinic's database on this machine (no PREFECT_API_URL)"
    )
    for config in configs.values() if events is None else ():
        if not config.database_path.exists():  # its clicks wait in the inbox, unrecorded
            typer.secho(
                f"  {config.clinic}: no database at {config.database_path}: its clicks wait "
                "beside it until it is here (run this on the clinic's home machine, or set "
                "PREFECT_API_URL)",
                fg=typer.colors.YELLOW,
            )
    typer.echo(f"Serving unsubscribes on http://{host}:{port}")
    app = create_app(configs, key=key, sms_providers=sms, events=events)
    if events is None:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    with events.retrying():
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


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
    from tasks.homecopy import require_current_copy
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path) as con:
        require_current_copy(con, config.clinic)  # the home would never read them here
        result = import_unsubscribes(con, Path(file), datetime.now(UTC), skip_invalid=skip_invalid)
    typer.echo(f"  email column: {result.column}")
    for name, n in result.as_dict().items():
        typer.echo(f"  {name.replace('_', ' '):<22}{n:>8}")
    if result.invalid_lines:
        typer.echo(f"  invalid on lines: {', '.join(map(str, result.invalid_lines[:20]))}")


def report_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    days: int = typer.Option(30, min=1, max=3650, help="Days up to and including today."),
    out: str = typer.Option(
        "report.html", help="HTML file to write, its folder made (open it in a browser)."
    ),
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

    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UserFacingError(
            f"--out {out}: the report is an HTML page (its charts included); name the file "
            ".html, e.g. --out report.html, and open it in a browser."
        )
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report, config.name, now), encoding="utf-8")
    except OSError as exc:
        raise UserFacingError(f"Cannot write the report to {path}: {exc.strerror}.") from None
    totals = report.per_day()
    sent = sum(d["sent"] for d in totals.values())
    typer.echo(f"  {report.first_day} to {report.last_day}: {sent} sent, "
               f"{sum(d['bounced'] for d in totals.values())} bounced, "
               f"{sum(d['failed'] for d in totals.values())} failed, "
               f"{sum(d['skipped'] for d in totals.values())} skipped")  # fmt: skip
    typer.echo(f"  wrote {path.resolve()}")
