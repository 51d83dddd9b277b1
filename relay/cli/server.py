"""The Prefect server with the demo ticking on it, and the alerts that tell a person when runs
need them."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from relay.env import CRASH_AFTER_SECONDS, HEARTBEAT_SECONDS


def serve_command(
    port: int = typer.Option(
        4200, min=1, max=65535, help="Port of the Prefect server and its UI on 127.0.0.1."
    ),
    every: float = typer.Option(
        2.0,
        min=1,  # as a clinic's schedule.tick_every_minutes: Prefect schedules no interval of 0
        help="Minutes between the demo clinic's ticks (at least 1).",
    ),
    patients: int = typer.Option(500, min=0, help="Size of the generated sandbox clinic."),
    seed: int = typer.Option(1, help="Seed of the generated clinic."),
    speed: float = typer.Option(
        1.0,
        min=0,
        help="How much faster than real time the sandbox's clock runs. Messages go by the wall "
        "clock: above 1 the clinic's bookings are stamped ahead of it, and their welcomes and "
        "reminders come due that much later.",
    ),
) -> None:
    """Prefect server + UI, the sandbox Cliniko with its clock running, and the demo clinic's
    ticks on a schedule: open the UI and watch. Starts from a fresh demo database; Ctrl-C stops
    everything within seconds (its output past start-up: .prefect/serve.log)."""
    from relay.env import PROJECT_ROOT
    from relay.serve import supervise

    args = ["--port", port, "--every", every, "--patients", patients, "--seed", seed]
    log = Path(os.environ.get("PREFECT_HOME", PROJECT_ROOT / ".prefect")) / "serve.log"
    code = supervise([str(a) for a in [*args, "--speed", speed]], typer.echo, log)
    if code:
        raise typer.Exit(code)


def prefect_server_command(ctx: typer.Context) -> None:
    """`prefect server start` (its options as they are, e.g. --host 10.0.0.5 --port 4200) with
    Python's cycle collector off the server's event loop (on SQLite, Prefect's default database,
    the server otherwise wedges under load: relay/prefect_server.py) and relay's server
    settings under your own (relay/slots.py). Run the server this way."""
    from relay.serve import PREFECT_SERVER, server_env

    args = [*PREFECT_SERVER, "server", "start", *ctx.args]
    env = server_env()
    env.update(ui_addresses(ctx.args))
    os.execve(args[0], args, env)  # the server in this process: signals reach it as sent


WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` among `prefect server start`'s options."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def ui_addresses(args: list[str]) -> dict[str, str]:
    """Where the UI calls the API (PREFECT_UI_API_URL) and the address the links in alerts use
    (PREFECT_UI_URL), from the server's own --host and --port. Prefect derives both from
    PREFECT_API_URL or its settings only, not from the options of `prefect server start`: with
    neither, the UI called port 4200 whatever --port said, and every alert's link to its run
    read "None". What the operator set (environment or Prefect profile) wins; a wildcard host
    (0.0.0.0) is not an address a browser can open, so it is left to them (docs/scaling.md)."""
    from prefect.settings import Settings

    settings = Settings()  # the environment and the Prefect profile, as the server reads them
    host = _option(args, "--host") or settings.server.api.host
    port = _option(args, "--port") or str(settings.server.api.port)
    if host in WILDCARD_HOSTS:
        return {}
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    found: dict[str, str] = {}
    if settings.ui_url is None:
        found["PREFECT_UI_URL"] = base
    if settings.api.url is None and "api_url" not in settings.server.ui.model_fields_set:
        found["PREFECT_UI_API_URL"] = f"{base}/api"
    return found


alerts_app = typer.Typer(help="Notifications when runs fail or the data goes stale.")


def _webhook_url(url: str) -> str:
    """The webhook's address, refused when no POST could reach it (a scheme left off, a space):
    the server would fail every notification where nobody looks. Never echoed: a Slack or Teams
    webhook's address is its credential."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise typer.BadParameter(
            "not an address a notification can be POSTed to: it needs http:// or https://, a "
            "host, and no spaces (e.g. https://hooks.slack.com/services/...)"
        )
    return url


@alerts_app.command("create")
def alerts_create_command(
    webhook_url: str = typer.Option(
        ...,
        callback=_webhook_url,
        help="Where notifications are POSTed as JSON {subject, body} (Slack, ntfy, ...).",
    ),
    block: str = typer.Option("relay-alerts", help="Name of the notification block to save."),
    quiet_minutes: float | None = typer.Option(
        None,
        min=1,  # ticks are a minute apart at least; Prefect watches no window under 10 s
        help="Alert when no tick of a clinic completed for this long (one alert per clinic; "
        "at least 1). Default: three tick intervals of the slowest clinic deployed, at least 15.",
    ),
    crash_after: int = typer.Option(
        CRASH_AFTER_SECONDS,
        "--crash-after-seconds",
        min=HEARTBEAT_SECONDS + 1,
        help=f"Mark a run Crashed (its slot given back) after this long without a heartbeat "
        f"(runs heartbeat every {HEARTBEAT_SECONDS} s, so a live run's next heartbeat may be "
        f"this less {HEARTBEAT_SECONDS} s late).",
    ),
) -> None:
    """Create (or replace) the Prefect automations that notify on failed or crashed runs (a
    failed sync among them), on stale data, and when a clinic's ticks stop; and the one that marks Crashed a run
    whose machine was lost. Needs PREFECT_API_URL (a running server)."""
    from relay.cli.flowrun import need_api_url

    need_api_url("automations live on the server")
    from relay.alerts import create_alerts

    names, quiet = create_alerts(webhook_url, block, quiet_minutes, crash_after)
    for name in names:
        typer.echo(f"created automation: {name}")
    typer.echo(f"a clinic is named when none of its ticks completed for {quiet:g} minutes")
    typer.echo(f"notifications go through the CustomWebhookNotificationBlock '{block}'")
