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


def main() -> None:
    from tasks.errors import UserFacingError

    try:
        app()
    except UserFacingError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
