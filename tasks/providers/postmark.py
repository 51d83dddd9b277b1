"""Postmark through postmarker 1.0 (facts: ../shared/reference/providers.md §1).

Odd things about this API and client, and what we do about them:
- The batch endpoint answers HTTP 200 even when items fail: every item's ``ErrorCode`` is checked.
- ``send_batch`` chunks by 500 itself, but an error in a later chunk would lose the results of the
  earlier ones, so we call it once per chunk of at most 500.
- Transactional mail goes on the transactional stream ("outbound"), marketing on the broadcast
  stream: a mix-up is a compliance problem, so the stream comes from the message's purpose only.
- ``TrackLinks`` is passed explicitly (postmarker would otherwise send "None" for single sends).
- No idempotency key exists. The send key travels in ``Metadata.send_key``, and reconciliation
  searches outbound messages by it (``GET /messages/outbound?metadata_send_key=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tasks.messages.ledger import LedgerRow
from tasks.providers.common import (
    Outcome,
    OutgoingMessage,
    ProviderUnavailable,
    RenderedEmail,
    Suppress,
    metadata_key,
    request_never_sent,
)

DEFAULT_API = "https://api.postmarkapp.com/"
# Whole-request codes meaning our settings are wrong, not the message: stop, put the batch back.
_SETTINGS_CODES = {10: "the server token was rejected", 11: "the server token lacks rights",
                   400: "the From address is not a confirmed sender signature",
                   401: "the From address's sender signature is not confirmed",
                   412: "the account is pending approval (only own-domain mail allowed)",
                   1235: "the message stream does not exist"}  # fmt: skip


@dataclass(frozen=True)
class PostmarkSettings:
    server_token: str = field(repr=False)
    from_address: str
    reply_to: str | None = None
    transactional_stream: str = "outbound"
    marketing_stream: str = "broadcast"
    base_url: str | None = None
    track_links: str = "None"  # None | HtmlAndText | HtmlOnly | TextOnly
    track_opens: bool = False
    timeout: float = 30.0


def _item_outcome(item: dict, marketing: bool) -> Outcome:
    code = int(item.get("ErrorCode", -1))
    if code == 0:
        return Outcome("sent", provider_message_id=item["MessageID"])
    if code == 406:
        # Postmark has deactivated the address (hard bounce, complaint or manual) on this stream.
        return Outcome(
            "failed",
            error_code="406",
            reason="postmark: inactive recipient",
            suppress=Suppress("marketing" if marketing else "all", "hard_bounce"),
        )
    if code == 300:
        about_recipient = "'To'" in str(item.get("Message", ""))
        return Outcome(
            "failed",
            error_code="300",
            reason="postmark: invalid " + ("recipient address" if about_recipient else "request"),
            suppress=Suppress("all", "invalid_address") if about_recipient else None,
        )
    if code == 429:
        return Outcome("retry", error_code="429", reason="postmark: rate limited")
    return Outcome("failed", error_code=str(code), reason=f"postmark: error {code}")


class PostmarkProvider:
    name = "postmark"
    batch_size = 500

    def __init__(self, settings: PostmarkSettings) -> None:
        self.settings = settings
        self.client = PostmarkClient(
            server_token=settings.server_token,
            timeout=settings.timeout,
            # postmarker joins endpoint paths to the root: a base URL path prefix would be dropped
            root_api_url=(settings.base_url or DEFAULT_API).rstrip("/") + "/",
            verbosity=0,  # postmarker's debug log would print message bodies and addresses
        )

    def _as_dict(self, msg: OutgoingMessage) -> dict:
        content = msg.content
        assert isinstance(content, RenderedEmail)
        marketing = msg.purpose == "marketing"
        return {
            "From": self.settings.from_address,
            **({"ReplyTo": self.settings.reply_to} if self.settings.reply_to else {}),
            "To": msg.to,
            "Subject": content.subject,
            "HtmlBody": content.html,
            "TextBody": content.text,
            "Tag": msg.tag,
            "Metadata": {"send_key": metadata_key(msg.send_key)},
            "Headers": dict(content.headers),
            "TrackLinks": self.settings.track_links,
            "TrackOpens": self.settings.track_opens,
            "MessageStream": (
                self.settings.marketing_stream if marketing else self.settings.transactional_stream
            ),
        }

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for start in range(0, len(messages), self.batch_size):
            chunk = messages[start : start + self.batch_size]
            try:
                results = self._send_chunk(chunk)
            except ProviderUnavailable:
                if not outcomes:
                    raise
                results = []  # earlier chunks went: report them; the next run meets the error
            outcomes.extend(results)
            if len(results) < len(chunk) or any(o.kind in ("retry", "unknown") for o in results):
                # the provider is struggling: leave the rest for a later run, untouched
                rest = len(messages) - len(outcomes)
                outcomes.extend([Outcome("retry", reason="postmark: not attempted")] * rest)
                break
        return outcomes

    def _send_chunk(self, chunk: Sequence[OutgoingMessage]) -> list[Outcome]:
        n = len(chunk)
        try:
            results = self.client.emails.send_batch(*[self._as_dict(m) for m in chunk])
        except ClientError as exc:
            status = getattr(getattr(exc.__cause__, "response", None), "status_code", 0)
            if exc.error_code == 429 or status == 429 or status >= 500:
                return [
                    Outcome("retry", error_code=str(exc.error_code), reason="postmark: busy")
                ] * n
            if exc.error_code in _SETTINGS_CODES:
                raise ProviderUnavailable(
                    f"Postmark refused the batch ({exc.error_code}): "
                    f"{_SETTINGS_CODES[exc.error_code]}. Check the PostmarkServer block."
                ) from None
            # the whole request was refused, so nothing in it went; a person must look
            return [
                Outcome("failed", error_code=str(exc.error_code), reason="postmark: batch refused")
            ] * n
        except requests.HTTPError as exc:  # a non-JSON error page
            status = exc.response.status_code if exc.response is not None else 0
            if status == 429 or status >= 500:
                return [Outcome("retry", error_code=str(status), reason="postmark: busy")] * n
            return [Outcome("unknown", error_code=str(status), reason="postmark: odd reply")] * n
        except requests.RequestException as exc:
            if request_never_sent(exc):
                return [Outcome("retry", reason="postmark: could not connect")] * n
            # timed out or cut off after the request went: it may have been accepted
            return [Outcome("unknown", reason=f"postmark: {type(exc).__name__} after sending")] * n
        except (KeyError, ValueError):
            # an error reply without an ErrorCode: the request arrived, the outcome is unclear
            return [Outcome("unknown", reason="postmark: unreadable reply")] * n
        if len(results) != n:
            return [Outcome("unknown", reason="postmark: reply did not match the batch")] * n
        return [
            _item_outcome(item, m.purpose == "marketing")
            for item, m in zip(results, chunk, strict=True)
        ]

    def find_by_send_key(self, send_key: str) -> str | None:
        """The MessageID Postmark holds for this send key, if any (outbound search by metadata)."""
        reply = self.client.call(
            "GET",
            "/messages/outbound",
            count=10,
            offset=0,
            metadata_send_key=metadata_key(send_key),
        )
        messages = reply.get("Messages") or []
        return messages[0]["MessageID"] if messages else None

    def reconcile(
        self, rows: Sequence[LedgerRow], now: datetime, settle: timedelta
    ) -> list[Outcome]:
        """Found by send key → sent. Not found → planned again once ``settle`` has passed.

        Why resending then is sound (at most once): Postmark stores a message before it answers
        and the outbound search reads that store, so a message it accepted is found. We wait
        ``settle`` after the attempt so a request still being indexed is not mistaken for one that
        never arrived. Rows already ``unknown`` (a timeout) are only ever confirmed, never resent.
        """
        outcomes = []
        for row in rows:
            try:
                found = self.find_by_send_key(row.send_key)
            except (ClientError, requests.RequestException, KeyError, ValueError):
                outcomes.append(Outcome("pending", reason="postmark: search unavailable"))
                continue
            if found:
                outcomes.append(Outcome("sent", provider_message_id=found, reason="reconciled"))
            elif row.status == "sending" and row.sending_at and now - row.sending_at >= settle:
                outcomes.append(Outcome("retry", reason="reconciled: Postmark never received it"))
            else:
                outcomes.append(Outcome("pending"))
        return outcomes

    def close(self) -> None:
        self.client.session.close()
