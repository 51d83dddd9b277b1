"""The analyst's commands: ``relay sql`` (read-only SQL, one statement or a prompt) and
``relay patients find`` (a patient's id for ``relay render``, without their other details)."""

from __future__ import annotations

import typer

patients_app = typer.Typer(
    help="Find patients' ids (for relay render) without printing their details.",
    no_args_is_help=True,
)

_WIDTH = 100  # what a terminal shows without wrapping


def sql_command(
    words: list[str] = typer.Argument(
        None, metavar="SQL", help="One SQL statement (quoted or not); without it, a prompt."
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(50, help="At most this many rows are printed."),
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

    config = load_clinic(clinic)
    statement = " ".join(words or ())
    if statement:
        _run(config.database_path, statement, limit, wait)
        return
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
    from tasks.analyst import query

    table = query(db_path, statement, limit=limit, wait_seconds=wait)
    if not table.columns:
        typer.echo("(no result)")
        return
    typer.echo(format_table(table.columns, table.rows))
    more = f" (first {limit}; --limit shows more)" if table.truncated else ""
    typer.echo(f"{len(table.rows)} row{'s' if len(table.rows) != 1 else ''}{more}")


def format_table(columns: list[str], rows: list[tuple], width: int = _WIDTH) -> str:
    """A plain table that fits ``width`` columns: long values are cut with '…', and when there
    are more columns than fit, the last ones are left out and named below the table."""
    cells = [["" if v is None else str(v).replace("\n", " ") for v in row] for row in rows]
    widths = [min(max([len(c)] + [len(r[i]) for r in cells]), 40) for i, c in enumerate(columns)]
    shown, used = 0, 0
    for w in widths:
        if shown and used + w + 2 > width:
            break
        used += w + 2
        shown += 1

    def cut(text: str, w: int) -> str:
        return text if len(text) <= w else text[: w - 1] + "…"

    lines = ["  ".join(cut(c, widths[i]).ljust(widths[i]) for i, c in enumerate(columns[:shown]))]
    lines.append("  ".join("-" * widths[i] for i in range(shown)))
    for r in cells:
        lines.append("  ".join(cut(r[i], widths[i]).ljust(widths[i]) for i in range(shown)))
    if shown < len(columns):
        lines.append(
            f"({len(columns) - shown} more columns not shown: {', '.join(columns[shown:])})"
        )
    return "\n".join(line.rstrip() for line in lines)


@patients_app.command("find")
def patients_find_command(
    text: str = typer.Argument(..., help="Part of a name, an email address or a mobile number."),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    limit: int = typer.Option(20, help="At most this many patients."),
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
