"""The ``relay`` command: one entry point, a subcommand per job, read here as a table of contents.

The commands live by group, one module each: ``pipeline`` (clinics, sync, models, feedback: the
tick's steps by hand), ``demo`` (the sandbox and the demo), ``preview`` (see before switching on:
preview, render), ``messages`` (outbox, campaigns, the ledger's unknown messages, unsubscribes,
the report), ``analyst`` (read-only SQL, finding a patient's id), ``server`` (the Prefect server,
the demo on it, and its alerts), ``deploy`` (every clinic's deployments, from clinics/),
``worker`` (a machine's worker, its runs started warm), ``clinic`` (where a clinic's state
lives: its home machine, and moving it), ``connect`` (a real clinic's accounts, checked and
saved) and ``test_send`` (a trigger's message for a real patient, to a staff address only);
``columns`` fits their text to a terminal's columns (a wide character takes two).
A module imports ``tasks``, ``flows``, ``blocks`` and ``sandbox`` inside each command so
``relay --help`` is instant; none imports this one.
Errors meant for a person (bad config, bad key, busy database) are printed without a traceback.
"""

from __future__ import annotations

import sys

import typer

import relay  # noqa: F401  (applies the offline Prefect defaults first)
from relay.cli import (
    analyst,
    clinic,
    connect,
    demo,
    deploy,
    messages,
    pipeline,
    preview,
    server,
    test_send,
    worker,
)

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


# In the order `relay --help` lists them.
app.command("clinics")(pipeline.clinics_command)
app.command("connect")(connect.connect_command)
app.command("sync")(pipeline.sync_command)
app.command("serve")(server.serve_command)
app.command(
    "prefect-server",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(server.prefect_server_command)
app.command("deploy")(deploy.deploy_command)
app.command("worker")(worker.worker_command)
app.command("demo")(demo.demo_command)
app.command("outbox")(messages.outbox_command)
app.command("sandbox")(demo.sandbox_command)
app.command("feedback")(pipeline.feedback_command)
app.command("serve-unsubscribe")(messages.serve_unsubscribe_command)
app.command("import-unsubscribes")(messages.import_unsubscribes_command)
app.command("report")(messages.report_command)
app.command("render")(preview.render_command)
app.command("test-send")(test_send.test_send_command)
# A quoted statement may begin with a SQL comment ("-- which patients ..."): click would read it
# as an option; the command takes such words as SQL and refuses a lone unknown option itself.
app.command("sql", context_settings={"ignore_unknown_options": True})(analyst.sql_command)
app.add_typer(server.alerts_app, name="alerts")
app.add_typer(messages.campaign_app, name="campaign")
app.add_typer(messages.ledger_app, name="ledger")
app.add_typer(preview.preview_app, name="preview")
app.add_typer(pipeline.models_app, name="models")
app.add_typer(analyst.patients_app, name="patients")
app.add_typer(clinic.clinic_app, name="clinic")


def main() -> None:
    from tasks.errors import UserFacingError

    try:
        app()
    except UserFacingError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        _let_go(exc)
        sys.exit(2)
    except Exception as exc:
        from relay.cli.flowrun import unreachable

        said = unreachable(exc)
        if said is None:
            raise
        typer.secho(f"error: {said}", fg=typer.colors.RED, err=True)
        _let_go(exc)
        sys.exit(2)


def _let_go(exc: BaseException) -> None:
    """After an error has been said: nothing more from Prefect on the console, and the frames the
    traceback keeps are cleared. Prefect keeps a flow's exception in the run's final state, and
    its traceback's frames hold the step's DuckDB connection and results; alive at interpreter
    exit, DuckDB's bindings print dozens of `nanobind: leaked ...` lines."""
    import traceback

    from relay.cli import flowrun

    flowrun.silence()
    seen: set[int] = set()
    chained: BaseException | None = exc
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        traceback.clear_frames(chained.__traceback__)
        # A frame's locals go with clear_frames, not the function it runs: a closure's cells
        # (``Sync.open``'s worker holds the Sync, and so its connection) live while the frame
        # does, and the traceback keeps the frame.
        chained.__traceback__ = None
        chained = chained.__cause__ or chained.__context__


if __name__ == "__main__":
    main()
