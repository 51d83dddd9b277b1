"""Unsubscribe tokens: HMAC-signed, so a link cannot be forged to unsubscribe someone else.

A token names the clinic, patient, message and channel; never an address (links get forwarded and
logged). The endpoint (a later issue) verifies it and looks the address up in the ledger row.
Tokens do not expire: an unsubscribe link must keep working long after the mail was sent.

The key is the same on every machine (a link signed by one clinic's home is checked by whichever
machine runs the endpoint): ``RELAY_UNSUBSCRIBE_SECRET``, else the Prefect ``Secret`` block
``relay-unsubscribe-secret`` on the server ``PREFECT_API_URL`` names (in the environment or
Prefect's profile). Only a single-machine
install (no server, or one whose clinic home records all name this machine, such as the demo's
``relay serve``) falls back to a key generated once into ``data/secrets/unsubscribe.key``
(owner-only), so the demo needs no setup; once a server records a clinic at home on another
machine, a missing shared key is an error that says how to save it.
Rotating the key breaks every link already sent. The key is never logged or printed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from tasks.errors import UserFacingError
from tasks.paths import data_dir

_VERSION = "1"
_PAYLOAD = re.compile(r"^1\.(?P<clinic>[a-z0-9][a-z0-9_-]*)\.(?P<patient>\d+)\.(?P<message>\d+)\.(?P<channel>email|sms)$")  # fmt: skip


class InvalidToken(UserFacingError):
    """The link was altered, truncated or signed with another key."""


@dataclass(frozen=True)
class UnsubscribeClaim:
    clinic: str
    patient_id: int
    message_id: int
    channel: str


SECRET_BLOCK = "relay-unsubscribe-secret"
HOME_PREFIX = "relay_home_"  # the Prefect Variables that say where each clinic lives


class MissingSharedSecret(UserFacingError):
    """Several machines, and no unsubscribe key they all share."""


def secret_key() -> bytes:
    env = os.environ.get("RELAY_UNSUBSCRIBE_SECRET")
    if env:
        return env.encode("utf-8")
    from tasks.home import api_url  # the environment's or the profile's, as Prefect reads it

    api = api_url()
    if api:
        shared, homes = _from_server(api)
        if shared:
            return shared
        if homes:
            raise MissingSharedSecret(
                f"This Prefect server records clinics at home on other machines ({homes}), so "
                "several machines sign and check unsubscribe links, but no key is shared: save one in "
                f"a Secret block named '{SECRET_BLOCK}' (if a machine already sent links, save "
                "its data/secrets/unsubscribe.key so they keep working), or set "
                "RELAY_UNSUBSCRIBE_SECRET to the same value on every machine."
            )
    return _local_key()


@functools.cache
def _from_server(api: str) -> tuple[bytes | None, int]:
    """The shared key saved on the server (None if none), and how many home records it keeps.
    Asked once per process and server; an unreachable server is an error, never a local key."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    try:
        try:
            # _sync: Prefect's sync/async dispatch, which its type hints do not describe.
            block: Secret = Secret.load(SECRET_BLOCK, _sync=True)  # type: ignore[call-arg,assignment]
            shared = block.get()
        except ValueError:  # no such block
            shared = None
        with get_client(sync_client=True) as client:
            homes = client.read_variables()
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        raise MissingSharedSecret(
            f"Cannot read the unsubscribe key from the Prefect server at {api} "
            f"({type(exc).__name__}); is it running? Set RELAY_UNSUBSCRIBE_SECRET to go without."
        ) from None
    # Homes on other machines: links signed here are then checked there, and the other way round.
    # Homes on this machine alone (the demo's `relay serve`, one machine) keep the local key.
    from tasks.home import this_machine

    here = this_machine()
    count = sum(
        1
        for v in homes
        if v.name.startswith(HOME_PREFIX)
        and not (isinstance(v.value, dict) and v.value.get("machine") == here)
    )
    return (str(shared).encode("utf-8") if shared else None), count


def _local_key() -> bytes:
    path = data_dir() / "secrets" / "unsubscribe.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(base64.urlsafe_b64encode(os.urandom(32)))
    return path.read_bytes().strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: bytes, key: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:16]


def sign(
    clinic: str, patient_id: int, message_id: int, channel: str, *, key: bytes | None = None
) -> str:
    payload = f"{_VERSION}.{clinic}.{int(patient_id)}.{int(message_id)}.{channel}".encode()
    if not _PAYLOAD.match(payload.decode()):
        raise ValueError("cannot sign: clinic, ids or channel are not in the expected form")
    return f"{_b64(payload)}.{_b64(_mac(payload, key or secret_key()))}"


def verify(token: str, *, key: bytes | None = None) -> UnsubscribeClaim:
    try:
        payload_part, mac_part = token.split(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
    except ValueError:
        raise InvalidToken("This unsubscribe link is incomplete; use the whole link.") from None
    # base64 decoding ignores stray characters, padding and the MAC's 4 spare bits: only the
    # token as signed is accepted, never another spelling of its bytes
    if (_b64(payload), _b64(mac)) != (payload_part, mac_part):
        raise InvalidToken("This unsubscribe link is not valid (altered or from elsewhere).")
    if not hmac.compare_digest(mac, _mac(payload, key or secret_key())):
        raise InvalidToken("This unsubscribe link is not valid (altered or from elsewhere).")
    match = _PAYLOAD.match(payload.decode("utf-8", "replace"))
    if not match:
        raise InvalidToken("This unsubscribe link is not valid (unknown format).")
    return UnsubscribeClaim(
        clinic=match["clinic"],
        patient_id=int(match["patient"]),
        message_id=int(match["message"]),
        channel=match["channel"],
    )


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/{token}"


# Names no patient's mail client can reach: this machine, a private network, reserved for tests.
_UNREACHABLE_SUFFIXES = (".local", ".localhost", ".localdomain", ".internal", ".lan", ".home.arpa",
                         ".test", ".example", ".invalid")  # fmt: skip


def link_problem(base_url: str) -> str | None:
    """Why links under ``base_url`` (providers.unsubscribe_url) would not work for patients, or
    None. RFC 8058 one-click needs an HTTPS URI, and the host must be one the public can reach
    (not this machine, a private address or a reserved name)."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
        private = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified
    except ValueError:
        private = host == "localhost" or "." not in host or host.endswith(_UNREACHABLE_SUFFIXES)
    if parts.scheme == "https" and not private:
        return None
    return (
        f"marketing email waits: providers.unsubscribe_url ({base_url}) is not a public HTTPS "
        "address, so the unsubscribe link and one-click header of each marketing email would "
        "not work for patients (RFC 8058 needs HTTPS). Set it in clinic.yaml to where `relay "
        "serve-unsubscribe` is reachable over HTTPS (or let Postmark handle the marketing "
        "stream's unsubscribes); reminders still go."
    )
