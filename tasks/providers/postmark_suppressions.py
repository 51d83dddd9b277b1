"""Postmark's own suppressions of one address, for an operator's opt-in (``relay patients opt-in``,
tasks/feedback_optin.py): read per stream, and reactivated (facts: docs/reference.md).

Postmark keeps a suppression list per message stream: while it holds the address, a send on that
stream comes back 406 and the address is suppressed here again, whatever we lifted. So an opt-in
reads each stream's dump for the address (``GET /message-streams/{id}/suppressions/dump`` with
``EmailAddress``) and deletes what it may (``POST /message-streams/{id}/suppressions/delete``,
``{"Suppressions": [{"EmailAddress": ...}]}``; each address answered ``Deleted`` or ``Failed``
with a ``Message``). Deleting a ``HardBounce`` suppression reactivates the bounce. Postmark does
not let a ``SpamComplaint`` suppression be deleted through the API: only its support can.
postmarker 1.0 has no suppressions API: ``client.call()``. Never logs an address.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests
from postmarker.exceptions import ClientError

from tasks.feedback import FeedbackUnavailable, Scope
from tasks.messages.ledger import normalise_address
from tasks.providers.postmark import PostmarkProvider, dump_reason

# Postmark's SuppressionReason that its API will not delete
UNDELETABLE = frozenset({"SpamComplaint"})


class PostmarkUnreachable(FeedbackUnavailable):
    """Postmark's suppressions could not be read or changed (a UserFacingError)."""


@dataclass(frozen=True)
class StreamHold:
    """Postmark suppresses the address on this stream, for this reason."""

    stream: str
    reason: str  # ours (postmark.dump_reason): hard_bounce, spam_complaint, unsubscribed, manual
    postmark_reason: str  # its SuppressionReason
    scope: Scope  # what it stops here: as the suppression sync records it (PostmarkProvider)

    @property
    def deletable(self) -> bool:
        return self.postmark_reason not in UNDELETABLE


def streams(provider: PostmarkProvider) -> list[str]:
    settings = provider.settings
    return list(dict.fromkeys((settings.transactional_stream, settings.marketing_stream)))


def holds(provider: PostmarkProvider, address: str) -> list[StreamHold]:
    """Every stream's suppression of the address, read now from Postmark."""
    wanted = normalise_address("email", address)
    found = []
    for stream in streams(provider):
        path = f"/message-streams/{stream}/suppressions/dump"
        try:
            entries = provider.client.call("GET", path, EmailAddress=wanted).get("Suppressions")
        except (
            ClientError,
            requests.RequestException,
            KeyError,
            ValueError,
            AttributeError,
        ) as exc:
            raise PostmarkUnreachable(_failed("read", stream, exc)) from None
        for e in entries or []:
            if normalise_address("email", str(e.get("EmailAddress") or "")) == wanted:
                reason = dump_reason(e)
                scope: Scope = (
                    "all"
                    if reason == "hard_bounce" or stream == provider.settings.transactional_stream
                    else "marketing"
                )
                found.append(
                    StreamHold(stream, reason, str(e.get("SuppressionReason") or "?"), scope)
                )
    return found


def reactivate(provider: PostmarkProvider, stream: str, address: str) -> str | None:
    """Delete the address's suppression on the stream: None when Postmark deleted it, else its
    reason for not (never the address)."""
    path = f"/message-streams/{stream}/suppressions/delete"
    wanted = normalise_address("email", address)
    try:
        reply = provider.client.call(
            "POST", path, data={"Suppressions": [{"EmailAddress": wanted}]}
        )
        answers = reply.get("Suppressions") or []
    except (ClientError, requests.RequestException, KeyError, ValueError, AttributeError) as exc:
        return _failed("reactivated", stream, exc)
    answer = next(
        (a for a in answers if normalise_address("email", str(a.get("EmailAddress") or ""))
         == wanted), None,
    )  # fmt: skip
    if answer is None:
        return "Postmark's reply did not mention the address"
    if answer.get("Status") == "Deleted":
        return None
    return str(answer.get("Message") or answer.get("Status") or "not deleted").replace(wanted, "…")


def _failed(what: str, stream: str, exc: Exception) -> str:
    code = f" ({exc.error_code})" if isinstance(exc, ClientError) else ""
    return (
        f"Postmark's suppressions on stream {stream!r} could not be {what} "
        f"({type(exc).__name__}{code})"
    )
