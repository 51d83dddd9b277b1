"""The analyst's commands: ``relay sql`` (read-only SQL: statements, or a prompt) and
``relay patients find`` (a patient's id for ``relay render``, without their other details); and
``relay patients opt-in``, the one write here: an operator records that a patient opted in again
after an unsubscribe, a bounce or a complaint (tasks/feedback_optin.py)."""

from __future__ import annotations

import textwrap

import typer

patients_app = typer.Typer(
    help="Find patients' ids (for relay render) without printing their details; record a "
    "patient's fresh opt-in.",
    no_args_is_help=True,
)

_WIDTH = 100  # what a terminal shows without wrapping


def sql_command(
    words: list[str] = typer.Argument(
        None,
        metavar="SQL",
        help="SQL (quoted or not): one statement, or several separated by ';' (a table each); "
        "without it, a prompt.",
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(50, min=1, help="At most this many rows are printed."),
    wait: float = typer.Option(
        30.0,
        help="Seconds to wait for a tick's steps or a sync to let go of the database "
        "(a tick's fast lane lets the read in between its polls).",
    ),
) -> None:
    """Read the clinic's database with SQL, read-only (nothing can be changed from here).

    Example: relay sql "SELECT count(*) FROM marts.email_marketing_list WHERE status = 'subscribed'"
    """
    from tasks.config import load_clinic

    for word in words or ():  # an option click did not know, not a statement ("--limt")
        if word.startswith("-") and not any(c.isspace() for c in word):
            raise typer.BadParameter(
                f"{word} is not an option of relay sql (a statement that begins with a SQL "
                'comment is quoted whole: relay sql "-- ...")',
                param_hint="SQL",
            )
    config = load_clinic(clinic)
    statement = " ".join(words or ())
    if statement:
        _run(config.database_path, statement, limit, wait)
        return
    if not config.database_path.exists():  # not a prompt every statement of which fails
        from tasks.warehouse import NoDatabase

        raise NoDatabase(config.database_path)
    typer.echo(
        f"{config.database_path} (read-only). End a statement with ';'. "
        "Ctrl-D or .quit leaves. Schemas: raw, staging, marts, segments, state."
    )
    buffer: list[str] = []
    while True:
        try:
            line = input("sql> " if not buffer else "...> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("")
            return
        if not buffer and line.strip() in (".quit", ".exit", "quit", "exit"):
            return
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if text.endswith(";"):
            buffer.clear()
            try:
                _run(config.database_path, text.rstrip(";"), limit, wait)
            except Exception as exc:  # a person's typo keeps the prompt going
                from tasks.errors import UserFacingError

                if not isinstance(exc, UserFacingError):
                    raise
                typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)


def _run(db_path, statement: str, limit: int, wait: float) -> None:
    from relay.cli.columns import cut
    from tasks.analyst import queries

    tables = queries(db_path, statement, limit=limit, wait_seconds=wait)
    for n, table in enumerate(tables, 1):
        if len(tables) > 1:  # which statement each table answers
            said = " ".join(table.statement.split())
            head = f"-- statement {n} of {len(tables)}: "
            typer.echo(("\n" if n > 1 else "") + head + cut(said, _WIDTH - len(head)))
        if not table.columns:
            typer.echo("(no result)")
            continue
        typer.echo(format_table(table.columns, table.rows))
        more = f" (first {limit}; --limit shows more)" if table.truncated else ""
        typer.echo(f"{len(table.rows)} row{'s' if len(table.rows) != 1 else ''}{more}")


def format_table(columns: list[str], rows: list[tuple], width: int = _WIDTH) -> str:
    """A plain table that fits ``width`` columns: long values are cut with '…', and when there
    are more columns than fit, the last ones are left out and named below the table."""
    from relay.cli.columns import cut, pad
    from relay.cli.columns import width as w_

    cells = [["" if v is None else str(v).replace("\n", " ") for v in row] for row in rows]
    widths = [min(max([w_(c)] + [w_(r[i]) for r in cells]), 40) for i, c in enumerate(columns)]
    shown, used = 0, 0
    for w in widths:
        if shown and used + w + 2 > width:
            break
        used += w + 2
        shown += 1

    lines = ["  ".join(pad(cut(c, widths[i]), widths[i]) for i, c in enumerate(columns[:shown]))]
    lines.append("  ".join("-" * widths[i] for i in range(shown)))
    for r in cells:
        lines.append("  ".join(pad(cut(r[i], widths[i]), widths[i]) for i in range(shown)))
    if shown < len(columns):
        left = len(columns) - shown
        said = f"({left} more column{'s' if left != 1 else ''} not shown: "
        lines += textwrap.wrap(
            said + ", ".join(columns[shown:]) + ")", width, break_on_hyphens=False
        )
    return "\n".join(line.rstrip() for line in lines)


@patients_app.command("find")
def patients_find_command(
    text: str = typer.Argument(
        ..., help="Part of a name, or a first and last name; an email address or a mobile number."
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(20, min=1, help="At most this many patients."),
) -> None:
    """Patient ids whose name, email or mobile contains TEXT, and which field matched; their
    details are not printed (open one with relay render TRIGGER --patient ID)."""
    from tasks.analyst import find_patients
    from tasks.config import load_clinic

    config = load_clinic(clinic)
    found = find_patients(config.database_path, text, limit=limit)
    if not found:
        typer.echo("No patient matches.")
        return
    for m in found:
        note = "  (archived)" if m.archived else ""
        typer.echo(f"patient {m.patient_id:<10} matched on {', '.join(m.fields)}{note}")
    if len(found) == limit:
        typer.echo(f"(first {limit}; narrow the text or raise --limit)")


@patients_app.command("opt-in")
def patients_opt_in_command(
    address: str = typer.Argument(
        ..., help="The email address, or the mobile number in E.164, the patient opted in with."
    ),
    channel: str = typer.Option(..., help="email or sms."),
    clinic: str = typer.Option(..., help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    evidence: str = typer.Option(
        ..., help="What the patient said, how and when (stored with the lift; nothing more)."
    ),
    deliverable: bool = typer.Option(
        False,
        "--deliverable",
        help="Also lift a bounce or invalid-address suppression: the patient confirmed the "
        "address receives messages again.",
    ),
    despite_complaint: bool = typer.Option(
        False,
        "--despite-complaint",
        help="Also lift a spam complaint: the patient asked in writing for our email again.",
    ),
    by: str = typer.Option(None, help="Who records it (default: your login name)."),
) -> None:
    """Record that a patient opted in again to marketing on ADDRESS after an unsubscribe (our
    link, Postmark's, a CSV import) or a suppression: what stops marketing to it is lifted, with
    the evidence. A bounce or a spam complaint needs its flag; an SMS STOP only ends when the
    patient texts START. With Postmark, its own suppressions of the address are reactivated
    first. Marketing still needs the patient's consent in Cliniko (accepted_email_marketing or
    accepted_sms_marketing, as the clinic's lists require): the output says if it is missing."""
    import getpass
    from datetime import UTC, datetime

    from tasks import feedback_optin as optin
    from tasks.config import load_clinic
    from tasks.errors import UserFacingError
    from tasks.homecopy import require_current_copy
    from tasks.messages.ledger import Channel
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    if channel not in ("email", "sms"):
        raise UserFacingError("--channel is email or sms.")
    ch: Channel = "email" if channel == "email" else "sms"
    wanted = optin.check_address(ch, address)
    optin.check_evidence(evidence)
    flags = {"deliverable": deliverable, "despite_complaint": despite_complaint}
    with open_db(config.database_path, read_only=True) as con:
        require_current_copy(con, config.clinic)  # the home would never read it (nor Postmark's)
        held = optin.held(con, ch, wanted)
    why = optin.refusal(ch, [h.reason for h in held], **flags)
    if why:
        raise optin.OptInRefused(why)
    reactivated = _reactivate_at_postmark(config, wanted, flags) if ch == "email" else []
    with open_db(config.database_path, create=False) as con:
        lifted, recorded = optin.record(
            con, ch, wanted, evidence=evidence, by=by or getpass.getuser(), now=datetime.now(UTC),
            provider_scopes=frozenset(h.scope for h in reactivated), **flags,
        )  # fmt: skip
        consent = optin.consent(con, ch, wanted)
    if lifted:
        typer.echo(f"Opt-in recorded in {config.clinic}; lifted for this {channel} address:")
        for h in lifted:
            typer.echo(f"  {h.describe()}")
    else:
        typer.echo(f"This {channel} address had no suppression in {config.clinic}"
                   + (": the opt-in is recorded." if recorded else ": nothing recorded."))  # fmt: skip
    for hold in reactivated:
        typer.echo(
            f"  Postmark: reactivated on stream {hold.stream!r} (was {hold.postmark_reason})"
        )
    _say_consent(channel, consent, config.marketing_list.honour_cliniko_email_opt_in)
    if recorded:
        typer.echo("The marketing list takes it at the next model build (every tick).")


def _reactivate_at_postmark(config, address: str, flags: dict) -> list:
    """When the clinic sends email through Postmark: its suppressions of the address
    (``postmark_suppressions.StreamHold``), each deleted. Refused (nothing recorded here) when
    Postmark keeps one or cannot be asked."""
    from blocks.resolve import providers_for
    from tasks import feedback_optin as optin
    from tasks.providers import postmark_suppressions as pm
    from tasks.providers.postmark import PostmarkProvider

    provider = providers_for(config)["email"]
    if not isinstance(provider, PostmarkProvider):
        return []
    try:
        holds = pm.holds(provider, address)
        why = optin.refusal("email", [h.reason for h in holds], **flags)
        if why:
            raise optin.OptInRefused(f"Postmark: {why}")
        kept = sorted({h.stream for h in holds if not h.deletable})
        if kept:
            raise optin.OptInRefused(
                f"Postmark keeps a spam complaint for this address on stream {', '.join(kept)}, "
                "which its API cannot remove: ask Postmark support to, then run this again. "
                "Nothing recorded."
            )
        done: list[str] = []
        for stream in sorted({h.stream for h in holds}):
            problem = pm.reactivate(provider, stream, address)
            if problem:
                raise pm.PostmarkUnreachable(
                    f"Postmark did not reactivate this address on stream {stream!r}: {problem}. "
                    "Nothing recorded here: run this again, or reactivate it in Postmark (the "
                    "stream's Suppressions) first."
                    + (f" Reactivated: {', '.join(done)}." if done else "")
                )
            done.append(stream)
        return holds
    finally:
        provider.close()


def _say_consent(channel: str, consent, honour_email_opt_in: bool) -> None:
    field = "accepted_email_marketing" if channel == "email" else "accepted_sms_marketing"
    required = channel == "sms" or honour_email_opt_in
    if consent is None:
        typer.echo(f"Cliniko consent ({field}) not checked: no model build yet.")
        return
    if not consent:
        typer.echo("No patient has this address in the last model build: marketing goes only to "
                   "a patient's address.")  # fmt: skip
    for c in consent:
        note = "  (archived in Cliniko: no marketing)" if c.archived else ""
        if c.accepted:
            typer.echo(f"patient {c.patient_id}: {field} is true in Cliniko{note}")
        elif required:
            typer.secho(
                f"patient {c.patient_id}: {field} is not true in Cliniko: no marketing goes to "
                f"them until it is ticked in Cliniko{note}",
                fg=typer.colors.YELLOW,
            )
        else:
            typer.echo(f"patient {c.patient_id}: {field} is not true in Cliniko (this clinic's "
                       f"email list does not require it){note}")  # fmt: skip
