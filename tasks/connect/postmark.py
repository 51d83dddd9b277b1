"""Checking a Postmark server token and its message streams before they are saved (postmarker).

``GET /server`` proves the token is a *server* token (an account token or a typo gets
ErrorCode 10) of a ``Live`` server (a ``Sandbox`` server delivers nothing); ``GET /message-streams`` (all types, archived included) shows that the two
streams the clinic will send on exist, are live, and are of the right kind: transactional mail on
a Transactional stream, marketing on a Broadcasts stream (Postmark's terms forbid marketing on
transactional streams, and only a Broadcasts stream carries Postmark's unsubscribe handling).

The sending domain (DKIM, Return-Path) and sender signatures are account-level: a server token
cannot read them, so docs/connect.md shows where to check them in Postmark's UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import cast

import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tasks.connect import ConnectFailed
from tasks.messages.addresses import EMAIL
from tasks.providers.postmark import DEFAULT_API

SERVICE = "Postmark"
BAD_TOKEN = 10  # "Bad or missing Server API token"


def from_address_problem(value: str | None) -> str | None:
    """Why Postmark would refuse every email from ``value`` ("Invalid 'From' address"), or None:
    one address (``Name <address>`` or the address alone, a name with a comma in double quotes),
    shaped as dispatch wants a recipient's. Checked before any request: whether its domain is
    verified only Postmark's UI shows."""
    text = (value or "").strip()
    try:
        header = HeaderRegistry()("from", text)
        addresses = [a.addr_spec for a in cast(AddressHeader, header).addresses]
        broken = any(isinstance(d, InvalidHeaderDefect) for d in header.defects)
    except (ValueError, IndexError, TypeError):  # the parser gave up: not an address
        addresses, broken = [], True
    example = "e.g. 'Acme Physio <hello@acmephysio.com.au>'"
    if len(addresses) > 1 and "<" in text and text.count(",") == 1 and '"' not in text:
        return (
            f"'{value}' reads as two addresses: a name with a comma goes in double quotes, "
            f"e.g. '\"Acme Physio, Bondi\" <hello@acmephysio.com.au>'"
        )
    if len(addresses) > 1:
        return f"'{value}' is {len(addresses)} addresses: a From is one address, {example}"
    if not broken and len(addresses) == 1 and EMAIL.match(addresses[0]):
        return None
    return (
        f"'{value}' is not an email address. Give the address mail goes from, on the sending "
        f"domain verified in Postmark, {example}"
    )


@dataclass(frozen=True)
class PostmarkFacts:
    server_name: str
    streams: dict[str, str]  # id -> MessageStreamType, live streams only
    marketing_unsubscribes: str | None  # UnsubscribeHandlingType of the marketing stream


def verify_postmark(
    server_token: str,
    transactional_stream: str = "outbound",
    marketing_stream: str = "broadcast",
    *,
    base_url: str | None = None,
    timeout: float = 15.0,
) -> PostmarkFacts:
    if not (server_token or "").strip():
        raise ConnectFailed(SERVICE, "bad_token", "the server token is empty. " + _WHERE_TOKEN)
    client = PostmarkClient(
        server_token=server_token.strip(),
        root_api_url=(base_url or DEFAULT_API).rstrip("/") + "/",
        timeout=timeout,
    )
    try:
        server = client.server.get()
        listed = client.call(
            "GET", "/message-streams", MessageStreamType="All", IncludeArchivedStreams="true"
        )
    except ClientError as exc:
        raise _refused(exc) from None
    except requests.HTTPError as exc:  # an answer without Postmark's JSON error body
        raise _not_json(exc, client.root_api_url) from None
    except requests.RequestException as exc:
        raise ConnectFailed(
            SERVICE,
            "unreachable",
            f"no answer from {client.root_api_url} ({type(exc).__name__}); check the network "
            "(and the base URL, if one was given).",
        ) from None
    finally:
        client.session.close()
    rows = [s for s in (listed or {}).get("MessageStreams") or [] if isinstance(s, dict)]
    live = {s["ID"]: s for s in rows if s.get("ID") and not s.get("ArchivedAt")}
    archived = {s["ID"] for s in rows if s.get("ID") and s.get("ArchivedAt")}
    name = str(getattr(server, "Name", "") or "")
    if getattr(server, "DeliveryType", "Live") == "Sandbox":
        raise ConnectFailed(
            SERVICE,
            "sandbox_server",
            f"server '{name}' is a Sandbox server (Delivery type: Sandbox): Postmark accepts its "
            "email and delivers none, though its activity shows them Delivered, and a server's "
            "type cannot be changed. Create a Live server for the clinic (Servers → Create "
            "server → Live) and give its Server API token.",
        )
    for stream, kind, purpose in (
        (transactional_stream, "Transactional", "transactional mail (reminders, welcomes)"),
        (marketing_stream, "Broadcasts", "marketing mail (recalls, journeys, campaigns)"),
    ):
        _check_stream(name, live, archived, stream, kind, purpose)
    if transactional_stream == marketing_stream:
        raise ConnectFailed(
            SERVICE,
            "wrong_stream_type",
            "the transactional and marketing streams are the same; they must be two streams.",
        )
    handling = (live[marketing_stream].get("SubscriptionManagementConfiguration") or {}).get(
        "UnsubscribeHandlingType"
    )
    return PostmarkFacts(
        server_name=name,
        streams={k: str(v.get("MessageStreamType")) for k, v in sorted(live.items())},
        marketing_unsubscribes=handling,
    )


_WHERE_TOKEN = (
    "In Postmark: Servers → your clinic's server → API Tokens; copy a Server API token (not the "
    "Account API token from Account → API Tokens)."
)


def _refused(exc: ClientError) -> ConnectFailed:
    if exc.error_code == BAD_TOKEN:
        return ConnectFailed(
            SERVICE,
            "bad_token",
            f"Postmark refused the server token (ErrorCode 10: bad or missing Server API token). "
            f"It is mistyped, was revoked, or is an account token. {_WHERE_TOKEN}",
        )
    return ConnectFailed(SERVICE, "unexpected", f"Postmark answered: {exc}")


def _not_json(exc: requests.HTTPError, root: str) -> ConnectFailed:
    status = exc.response.status_code if exc.response is not None else 0
    if status >= 500:  # Postmark's 500 (its servers) or 503 (planned maintenance)
        return ConnectFailed(
            SERVICE,
            "unavailable",
            f"Postmark answered {status} at {root}: a problem on Postmark's side (503 is its "
            "planned maintenance), not with the token. Nothing was checked; try again in a few "
            "minutes (status.postmarkapp.com says when it is back).",
        )
    return ConnectFailed(
        SERVICE,
        "unexpected",
        f"{root} answered {status or 'an error'} without Postmark's JSON: check the base URL.",
    )


def _check_stream(
    server: str, live: dict, archived: set, stream: str, kind: str, purpose: str
) -> None:
    known = ", ".join(f"{k} ({v.get('MessageStreamType')})" for k, v in sorted(live.items()))
    if stream in archived:
        raise ConnectFailed(
            SERVICE,
            "missing_stream",
            f"the stream '{stream}' for {purpose} is archived on server '{server}'. Unarchive it "
            f"(Message Streams → the stream → Settings), or name another. Live streams: {known}.",
        )
    if stream not in live:
        raise ConnectFailed(
            SERVICE,
            "missing_stream",
            f"server '{server}' has no message stream '{stream}' for {purpose}. Live streams: "
            f"{known or 'none'}. Create a {kind} stream (Message Streams → Create message "
            "stream) and give its ID, or name one listed here.",
        )
    found = live[stream].get("MessageStreamType")
    if found != kind:
        raise ConnectFailed(
            SERVICE,
            "wrong_stream_type",
            f"the stream '{stream}' on server '{server}' is a {found} stream, but {purpose} "
            f"needs a {kind} stream. Name a {kind} stream ({known}).",
        )
