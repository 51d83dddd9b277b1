"""Unsubscribe tokens: HMAC-signed, so a link cannot be forged to unsubscribe someone else.

A token names the clinic, patient, message and channel; never an address (links get forwarded and
logged). The endpoint (a later issue) verifies it and looks the address up in the ledger row.
Tokens do not expire: an unsubscribe link must keep working long after the mail was sent.

The key comes from ``RELAY_UNSUBSCRIBE_SECRET``, or is generated once into
``data/secrets/unsubscribe.key`` (owner-only), so the demo needs no setup. Rotating it breaks every
link already sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

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


def secret_key() -> bytes:
    env = os.environ.get("RELAY_UNSUBSCRIBE_SECRET")
    if env:
        return env.encode("utf-8")
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
