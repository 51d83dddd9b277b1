"""The unsubscribe endpoint: what a marketing email's unsubscribe link and headers point at.

    GET  /unsubscribe/<token>   a confirmation page with one button (link scanners and mail
                                previews follow GETs, so a GET never unsubscribes anyone)
    POST /unsubscribe/<token>   RFC 8058 one-click (mail clients POST ``List-Unsubscribe=
                                One-Click``) and the page's button: unsubscribes, says so

The token is HMAC-signed (tasks/unsubscribe/tokens.py): a forged, altered or cut-short token gets 403
with a plain message and nothing is recorded. The pages show no personal data, only the clinic's
name, and speak of the token's channel (marketing email, or marketing text messages).

Where a valid click goes depends on where the endpoint runs:

- With a Prefect server (``events``: PREFECT_API_URL is set, as on every machine of a fleet and
  under ``relay serve``), the endpoint holds no clinic database: it emits a ``relay.unsubscribe``
  event about the clinic (tasks/unsubscribe/events.py; spooled locally and retried while the
  server is unreachable, so no click is lost) and answers "received" (202); the clinic's next
  tick, on its home machine, records it (tasks/feedback_events.py).
- Alone on the clinic's machine (no server), the click is first written to the clinic's
  unsubscribe inbox (a small file beside its database, fsynced), then recorded in the database
  at once if the database is free. During a tick the database belongs to the tick, so the answer
  cannot wait for it: the tick's feedback step records the click a few minutes later, before any
  further marketing is planned for the next tick. The page says "You are unsubscribed" only once
  the suppression is recorded; a click waiting in the inbox is told so (202), and a link that
  matches no message we sent changes nothing (404). On a machine without the clinic's database
  (not its home) the click waits in the inbox, where that database would be (202), and the
  endpoint logs a warning: no empty database is made in its place.

Beside it, Twilio's status callbacks for the clinics whose TwilioAccount sets
``status_callback_url`` (its path is the route):

    POST <path of status_callback_url>   MessageSid, MessageStatus, ErrorCode... (form-encoded)

A request whose X-Twilio-Signature does not match that URL, its parameters and the clinic's auth
token gets 403 and changes nothing. A final status (delivered, undelivered, failed) is recorded
at once through tasks/feedback_delivery.py, with the suppression its error code calls for; the
others are acknowledged and left. Twilio does not retry a status callback, so the answer is 204
even when the database is busy: the delivery poll of the next tick asks about that message
anyway (it stays the default, and the safety net, for every clinic). On a machine that does not
hold the clinic's database (not its home), the status is left to that poll.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from tasks import feedback, feedback_delivery
from tasks.config import ClinicConfig
from tasks.errors import UserFacingError
from tasks.paths import data_dir
from tasks.providers.twilio import TwilioProvider, delivery_of, status_callback_valid
from tasks.unsubscribe.events import PrefectEvents, server_events
from tasks.unsubscribe.tokens import InvalidToken, UnsubscribeClaim, verify
from tasks.warehouse import DatabaseBusy, open_db

log = logging.getLogger("relay.unsubscribe")

# How long a click waits for the database before leaving it to the next feedback pull.
DB_WAIT_SECONDS = 2.0

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;
color:#222}}button{{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}}</style>
</head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


# What a token's channel stops, in the page's words.
_MARKETING = {"email": "marketing email", "sms": "marketing text messages (SMS)"}


def create_app(
    clinics: Mapping[str, ClinicConfig],
    *,
    key: bytes | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sms_providers: Mapping[str, Any] | None = None,
    events: PrefectEvents | None = None,
) -> Starlette:
    """The endpoint for these clinics (a token names its clinic). ``key``: the HMAC key, by
    default the installation's (tasks/unsubscribe/tokens.py). ``sms_providers``: each clinic's
    SMS provider; a Twilio one with ``status_callback_url`` gets its status callback route.
    ``events``: send clicks as Prefect events (the clinic's tick records them) instead of
    writing the clinic's database here."""

    def claim_of(request: Request) -> UnsubscribeClaim | Response:
        try:
            claim = verify(request.path_params["token"], key=key)
        except InvalidToken as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        if claim.clinic not in clinics:
            return PlainTextResponse(
                "This unsubscribe link is for a clinic this server does not serve.\n",
                status_code=404,
            )
        return claim

    def confirm(request: Request) -> Response:
        claim = claim_of(request)
        if isinstance(claim, Response):
            return claim
        name = html.escape(clinics[claim.clinic].name)
        return _page(
            "Unsubscribe",
            f"<p>Stop {_MARKETING[claim.channel]} from {name}? "
            "Appointment reminders still arrive.</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" '
            'value="One-Click"><button type="submit">Unsubscribe</button></form>',
        )

    def unsubscribe(request: Request) -> Response:
        claim = claim_of(request)
        if isinstance(claim, Response):
            return claim
        config = clinics[claim.clinic]
        now = clock()
        name, marketing = html.escape(config.name), _MARKETING[claim.channel]
        if events is not None:
            events.send(claim, now)  # sent, or spooled until the server answers again
            return _received(name, marketing)
        inbox = feedback.inbox_path(config.database_path)
        click = feedback.spool_unsubscribe(inbox, claim, now)
        if not config.database_path.exists():  # not its home: opening would make an empty one
            log.warning(
                "%s: no database at %s on this machine; the click waits in %s for it (run the "
                "endpoint where the clinic's database is, or with PREFECT_API_URL set)",
                claim.clinic, config.database_path, inbox,
            )  # fmt: skip
            return _received(name, marketing)
        try:
            with open_db(config.database_path, wait_seconds=DB_WAIT_SECONDS) as con:
                feedback.drain_unsubscribes(con, inbox, now)
                outcome = feedback.click_outcome(con, click)
        except DatabaseBusy:
            log.info("%s: database busy; the click waits in the inbox", claim.clinic)
            outcome = None
        if outcome in ("suppress", "already"):
            return _page(
                "You are unsubscribed", f"<p>You will get no more {marketing} from {name}.</p>"
            )
        if outcome == "unmatched":
            return _page(
                "Nothing was changed",
                f"<p>This link does not match a message {name} sent, so nothing was changed. "
                f"To stop {marketing}, contact {name}.</p>",
                status=404,
            )
        return _received(name, marketing)

    callbacks: dict[str, tuple[str, Any]] = {}
    for clinic, p in (sms_providers or {}).items():
        if isinstance(p, TwilioProvider) and p.settings.status_callback_url and clinic in clinics:
            route = urlsplit(p.settings.status_callback_url).path
            if route in callbacks:  # one would take the other's callbacks (its token refuses them)
                raise UserFacingError(
                    f"Clinics '{callbacks[route][0]}' and '{clinic}' both set a Twilio "
                    f"status_callback_url with the path {route}: give each clinic its own path "
                    f"(e.g. /twilio/status/{clinic}) in its TwilioAccount block."
                )
            callbacks[route] = (clinic, p.settings)

    async def sms_status(request: Request) -> Response:
        clinic, settings = callbacks[request.url.path]
        body = (await request.body()).decode("utf-8", "replace")
        params = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        if not status_callback_valid(settings, params, signature):
            return PlainTextResponse(
                "X-Twilio-Signature does not match this URL, the parameters and the account's "
                "auth token: nothing was recorded.\n",
                status_code=403,
            )
        sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
        if sid and status in feedback_delivery.FINAL:
            now = clock()
            found = delivery_of(sid, status, params.get("ErrorCode") or None, now)
            await run_in_threadpool(_record_status, clinics[clinic], found, now)
        return Response(status_code=204)

    # Each clinic's links carry the path of its providers.unsubscribe_url.
    paths = sorted(
        {urlsplit(c.providers.unsubscribe_url).path.rstrip("/") for c in clinics.values()}
    )
    # The callbacks' exact paths first: one a segment below a links path (/u/twilio under /u)
    # would otherwise match <path>/{token} and be refused as a forged link.
    routes = [Route(path, sms_status, methods=["POST"]) for path in sorted(callbacks)]
    for path in paths or ["/unsubscribe"]:
        routes += [
            Route(path + "/{token}", confirm, methods=["GET"]),
            Route(path + "/{token}", unsubscribe, methods=["POST"]),
        ]
    return Starlette(routes=routes)


def _received(name: str, marketing: str) -> HTMLResponse:
    return _page(
        "Your request is received",
        f"<p>It will be recorded within a few minutes: {name} then sends you no more "
        f"{marketing}.</p>",
        status=202,
    )


def _record_status(config: ClinicConfig, found: feedback_delivery.Delivery, now: datetime) -> None:
    if not config.database_path.exists():  # not this clinic's home: the poll records it
        log.info("%s: no database here; the delivery poll records this status", config.clinic)
        return
    try:
        with open_db(config.database_path, wait_seconds=DB_WAIT_SECONDS) as con:
            feedback_delivery.record(con, "twilio", [found], now, source="callback")
    except DatabaseBusy:
        log.info("%s: database busy; the delivery poll records this status", config.clinic)


@contextlib.contextmanager
def serving(
    clinics: Mapping[str, ClinicConfig],
    host: str,
    port: int,
    sms_providers: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """The endpoint on a background thread for the length of the block (``relay serve``);
    yields its base URL. With PREFECT_API_URL set, clicks go as events (``endpoint_events``)."""
    from sandbox.server import ThreadedServer

    events = endpoint_events()
    try:
        app = create_app(clinics, sms_providers=sms_providers, events=events)
        server = ThreadedServer(app, host=host, port=port)
    except OSError as exc:
        raise UserFacingError(
            f"The unsubscribe endpoint cannot listen on {host}:{port} ({exc.strerror}). Stop "
            "whatever uses it (another relay serve?) or change providers.unsubscribe_url."
        ) from None
    with server, events.retrying() if events else contextlib.nullcontext():
        yield server.url


def endpoint_events() -> PrefectEvents | None:
    """Clicks as events to the server PREFECT_API_URL names (spooled in
    ``data/unsubscribe-events.jsonl`` while it is unreachable); None without a server."""
    from tasks.home import api_url  # the environment's or the profile's, as Prefect reads it

    api = api_url()
    return server_events(api, data_dir() / "unsubscribe-events.jsonl") if api else None
