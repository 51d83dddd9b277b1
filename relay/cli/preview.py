"""See before switching on: a trigger's calendar, a segment's members, one patient's message.
Reads only; writes nothing but the rendered files."""

from __future__ import annotations

import typer

preview_app = typer.Typer(
    help="See before switching on: who would get what, and when. Reads only; writes nothing.",
    no_args_is_help=True,
)


@preview_app.command("trigger")
def preview_trigger_command(
    name: str = typer.Argument(..., help="The trigger's name under triggers: in clinic.yaml."),
    days: float = typer.Option(7, min=0.1, help="How many days ahead to show (0.5: twelve hours)."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(100, min=0, help="At most this many rows of the calendar (0: all)."),
    sql: bool = typer.Option(False, "--sql", help="Print the trigger's query instead, to read."),
) -> None:
    """The calendar of a trigger's messages: when, to whom, about which appointment, and whether
    it would go or be skipped (and why). A trigger that is not live yet is shown as if switched
    on now. Names and addresses are shown on this terminal only. With --sql, the query itself
    (no database needed)."""
    if sql:
        from tasks.config import load_clinic
        from tasks.triggers.preview import trigger_sql

        typer.echo(trigger_sql(load_clinic(clinic), name))
        return
    config, trigger = _clinic_and_trigger(clinic, name)
    _print_calendar(config, trigger, days, limit)


def _clinic_and_trigger(clinic: str, name: str):
    """The clinic's configuration and its trigger ``name``; an unknown name lists the known ones."""
    from tasks.config import load_clinic
    from tasks.triggers.preview import trigger_named

    config = load_clinic(clinic)
    return config, trigger_named(config, name)


def _print_calendar(config, trigger, days: float, limit: int) -> None:
    """The trigger's messages over the next ``days``, as if it were live now."""
    from collections import Counter
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from relay.cli.columns import cut, pad
    from tasks import tick
    from tasks.messages.templates import template_warnings
    from tasks.models import runner as models
    from tasks.triggers import preview as planning
    from tasks.warehouse import open_db

    now = datetime.now(UTC)
    zone = ZoneInfo(config.time_zone)
    with open_db(config.database_path, read_only=True) as con:
        models.require_good_build(con)
        went_live, rows = planning.preview(con, trigger, now, days)
        typos = planning.unknown_references(con, trigger)
        held = tick.trigger_held(con, trigger)
    if went_live < now:
        state = "live"
    elif trigger.enabled:
        state = "enabled: goes live at the next tick (shown as if now)"
    else:
        state = "not enabled: shown as if switched on now"
    width = _width()
    typer.secho(
        _wrap(
            f"Trigger {trigger.name}: {trigger.channel} '{trigger.template}' ({trigger.purpose}), "
            f"{trigger.event}, {trigger.timing}; {state}",
            width,
        ),
        bold=True,
    )
    typer.echo(f"  went live   {went_live.astimezone(zone):%Y-%m-%d %H:%M} {config.time_zone}")
    if held:  # the calendar below would otherwise read as what the next tick sends
        typer.secho(
            _wrap(
                f"  held: {held}: each tick plans and sends none of it until this is put right; "
                "below, what it does then",
                width,
                4,
            ),
            fg=typer.colors.RED,
        )
    for typo in typos:
        typer.secho(_wrap(f"  warning: {typo}", width, 4), fg=typer.colors.YELLOW)
    for warning in template_warnings(config, trigger):
        typer.secho(_wrap(f"  warning: {warning}", width, 4), fg=typer.colors.YELLOW)
    decisions = Counter(r.decision.split(":")[0].split(" (")[0] for r in rows)
    typer.echo(
        _wrap(
            f"  next {days:g} days: {len(rows)} messages"
            + (f" ({', '.join(f'{n} {d}' for d, n in decisions.most_common())})" if rows else ""),
            width,
            4,
        )
    )
    if decisions["waiting"]:
        typer.echo(
            _wrap(
                "  waiting: not sent now for a reason that can change; sent if it clears before "
                "its grace window ends, else skipped with the reason",
                width,
                4,
            )
        )
    # Two lines a message: when, who and where first (a long name or address cut with '…'),
    # then what about and the decision, wrapped under it (a reason is never cut).
    for r in rows[: limit or None]:
        c = r.candidate
        who = (
            f"{c['preferred_first_name'] or c['first_name'] or '?'} {c['last_name'] or ''}".strip()
        )
        about = (
            f"{c['appointment_type_name']} {c['starts_at'].astimezone(zone):%a %d %b %H:%M}"
            if c["starts_at"] is not None
            else "no appointment"
        )
        head = f"  {r.due_at.astimezone(zone):%a %d %b %H:%M}  patient {r.patient_id:<19}  "
        rest = max(width - len(head), 20)
        typer.echo(
            head
            + pad(cut(who, rest // 2 - 1), rest // 2 - 1)
            + " "
            + cut(str(c["address"] or "-"), rest - rest // 2)
        )
        typer.echo(_wrap(f"{' ' * _INDENT}{about}: {r.decision}", width, _INDENT + 2))
    if limit and len(rows) > limit:
        typer.echo(f"  ... {len(rows) - limit} more (--limit 0 shows all)")
    typer.echo(
        "Nothing was written." + ("" if trigger.enabled else " Switch it on with enabled: true.")
    )


_INDENT = 20  # a message's second line starts under "patient"


def _width() -> int:
    """The terminal's width (COLUMNS when set), never under 80: what the calendar is fitted to."""
    import shutil

    return max(shutil.get_terminal_size((100, 24)).columns, 80)


def _wrap(text: str, width: int, indent: int = 2) -> str:
    """``text`` wrapped at ``width``, continuation lines indented by ``indent``."""
    import textwrap

    lead = len(text) - len(text.lstrip(" "))
    return textwrap.fill(
        text.strip(),
        width,
        initial_indent=" " * lead,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
    )


@preview_app.command("segment")
def preview_segment_command(
    name: str = typer.Argument(..., help="The segment: sql/segments/<name>.sql (or that path)."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    sample: int = typer.Option(10, min=0, help="How many members to show."),
) -> None:
    """A segment's size, who would join or leave it compared with the last build, and a sample,
    from its file as it stands now. Nothing is written; names and emails stay on this terminal."""
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.models.holds import holds, latest_build
    from tasks.models.preview import preview_segment
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with open_db(config.database_path, read_only=True) as con:
        # Any build will do, a failed one too: the preview reads the last good tables.
        if latest_build(con) is None:
            raise UserFacingError("The models have never been built. Run `relay models build`.")
        p = preview_segment(con, name, sample_size=sample)
        stale = holds(con).why(p.reads)
    if stale:
        typer.secho(f"  compared with the last good tables: {stale}", fg=typer.colors.YELLOW)
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
    from tasks.messages.templates import Templates, render_to_file, size_note
    from tasks.models import runner as models
    from tasks.triggers import preview as planning
    from tasks.warehouse import open_db

    config, trigger = _clinic_and_trigger(clinic, trigger_name)
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
    if trigger.channel == "sms":
        size = Templates(config.folder).render_sms(trigger.template, context, marketing=marketing)
        typer.secho(
            f"  SMS: {size_note(size.size)}",
            fg=typer.colors.YELLOW if size.size.segments > 1 else None,
        )
