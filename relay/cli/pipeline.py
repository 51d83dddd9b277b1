"""The tick's steps by hand: the configured clinics, the sync, the SQL models, the feedback pull."""

from __future__ import annotations

import typer


def clinics_command() -> None:
    """List the configured clinics and check each configuration file, and the names its
    triggers' filters give against the clinic's synced data (tasks/triggers/names.py)."""
    from tasks.config import ConfigError, list_clinics, load_clinic
    from tasks.messages.templates import template_warnings

    failed = False
    for name in list_clinics():
        try:
            cfg = load_clinic(name)
        except ConfigError as exc:
            failed = True
            typer.secho(f"{name}: {exc}", fg=typer.colors.RED)
            continue
        typer.echo(f"{cfg.clinic}: {cfg.name} ({cfg.time_zone}) -> {cfg.database_path}")
        for trigger in cfg.triggers:
            for warning in template_warnings(cfg, trigger):
                typer.secho(
                    f"  warning: trigger '{trigger.name}': {warning}", fg=typer.colors.YELLOW
                )
        failed = _check_names(cfg) or failed
    if failed:
        raise typer.Exit(2)


def _check_names(cfg) -> bool:  # cfg: tasks.config.ClinicConfig
    """Print what the names in the clinic's triggers match in its synced data, and any journey's
    entry.date_field that is not a DATE column of its marts.patients; True on an error.
    Before the first sync and build nothing can be matched: said so, not an error."""
    import duckdb

    from tasks.marketing import journeys
    from tasks.triggers import names
    from tasks.warehouse import DatabaseBusy, open_db

    not_yet = "  names not checked: nothing synced and built yet (each tick checks them)"
    if not cfg.database_path.exists():
        typer.echo(not_yet)
        return False
    try:
        with open_db(cfg.database_path, read_only=True, wait_seconds=5) as con:
            found = names.check(con, cfg.triggers, cfg.tag_categories, cfg.written_tag_categories())
            dates = journeys.date_field_problems(con, cfg)  # the tick holds such a journey
    except (DatabaseBusy, duckdb.Error) as exc:
        typer.echo(f"  names not checked: {str(exc).splitlines()[0]}")
        return False
    if found is None:
        typer.echo(not_yet)
        return False
    errors, warnings = found
    errors += [f"journey '{name}': {why} (each tick holds it)" for name, why in dates.items()]
    for error in errors:
        typer.secho(f"  error: {error}", fg=typer.colors.RED)
    for warning in warnings:
        typer.secho(f"  warning: {warning}", fg=typer.colors.YELLOW)
    return bool(errors)


def sync_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
    reconcile: bool = typer.Option(
        False, "--reconcile", help="Also list every id and mark rows deleted in Cliniko."
    ),
) -> None:
    """Bring the clinic's DuckDB copy of Cliniko up to date (the cliniko-sync flow)."""
    from flows.sync import cliniko_sync
    from relay.cli import flowrun
    from tasks.config import load_clinic
    from tasks.homecopy import writing_current_copy

    flowrun.prepare()
    config = load_clinic(clinic)
    with writing_current_copy(config.database_path, config.clinic, nothing="nothing synced"):
        counts = cliniko_sync(clinic=clinic, reconcile=reconcile)
    print_sync(counts)


def print_sync(counts: dict[str, dict]) -> None:
    """Counts per resource: never a record's content."""
    typer.echo(f"  {'resource':<24}{'new':>8}{'updated':>9}{'quarant.':>9}{'removed':>9}"
               f"{'requests':>10}{'429s':>6}  watermark")  # fmt: skip
    for name, c in counts.items():
        typer.echo(
            f"  {name:<24}{c['new']:>8}{c['updated']:>9}{c['quarantined']:>9}{c['removed']:>9}"
            f"{c['requests']:>10}{c['rate_limited']:>6}  {c['watermark'] or '-'}"
        )
    typer.echo(f"  {sum(c['requests'] for c in counts.values())} requests in all")


def feedback_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
) -> None:
    """Pull bounces, provider suppressions, STOP/START replies and unsubscribe clicks now (the
    feedback flow; the tick runs it every time)."""
    from flows.feedback import FeedbackFailed, pull_feedback
    from relay.cli import flowrun
    from tasks.config import load_clinic
    from tasks.homecopy import writing_current_copy

    flowrun.prepare()
    config = load_clinic(clinic)
    with writing_current_copy(config.database_path, config.clinic, nothing="nothing recorded"):
        try:
            counts = pull_feedback(clinic=clinic)
        except FeedbackFailed as failed:  # what the feeds that could be read recorded, then why
            if failed.output and failed.output.result:
                _feedback_counts(failed.output.result)
            raise
    _feedback_counts(counts)


def _feedback_counts(counts: dict[str, int]) -> None:
    for name, n in sorted(counts.items()):
        typer.echo(f"  {name:<36}{n:>8}")
    typer.echo("  nothing new" if not counts else f"  {sum(counts.values())} items recorded")


models_app = typer.Typer(
    help="The SQL models in sql/: build them into the clinic's database, and test them.",
    no_args_is_help=True,
)


@models_app.command("build")
def models_build_command(
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<clinic>/clinic.yaml)."),
    full_refresh: bool = typer.Option(
        False, "--full-refresh", help="Rebuild incremental models from all raw rows."
    ),
) -> None:
    """Build every model, run the data tests and record who joined or left each list and
    segment, in one commit. A model that fails (or fails a data test) is named with its file
    and keeps its last good table, as does every model reading it; the rest is built."""
    from tasks.config import load_clinic
    from tasks.homecopy import writing_current_copy
    from tasks.models import runner as models
    from tasks.warehouse import open_db

    config = load_clinic(clinic)
    with (
        writing_current_copy(config.database_path, config.clinic, nothing="nothing built"),
        open_db(config.database_path, create=False) as con,
    ):
        result = models.build(
            con, models.ListSettings.from_config(config), full_refresh=full_refresh
        )
        statuses = con.execute(
            "SELECT status, count(*) FROM marts.email_marketing_list GROUP BY ALL ORDER BY 2 DESC"
        ).fetchall()
        by_limit = con.execute(  # as the list would be: a size cap applies under every limit
            "SELECT active_patient_limit, list_size_after_cap, is_current_setting "
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
        + "   (* = clinic.yaml"
        + (
            f"; at most {config.marketing_list.size_cap}, its size_cap)"
            if config.marketing_list.size_cap
            else ")"
        )
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
