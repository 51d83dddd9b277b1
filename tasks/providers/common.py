"""The interface every provider implements, and the outcomes dispatch records.

A provider gets a batch of rendered messages and returns one :class:`Outcome` per message, in
order. It never raises for a message's own problem (that is an outcome); it raises
:class:`ProviderUnavailable` only when it is certain nothing in the batch went (bad credentials,
for instance), so dispatch can put the batch back and stop. It also answers for what it sent
(``reconcile``) and says what it reports back afterwards (``feedback_feeds``: bounces,
suppressions, replies), which tasks/feedback.py records.

Outcome kinds, and what decides between them:
- ``sent``: the provider accepted it (and gave an id);
- ``failed``: permanently refused (invalid address, opted out...); ``suppress`` says whether the
  address must also be suppressed, and for what scope;
- ``retry``: certainly not taken (rate limit, 5xx, no connection made): planned again, later;
- ``unknown``: it may have gone (a timeout after the request was sent): never resent automatically;
- ``doubt``: it may have gone, and the provider can be searched by send key (Postmark's 500):
  left ``sending`` for the next run's ``reconcile`` (found = sent; absent once settled = again);
- ``pending`` (reconciliation only): too early to decide; leave the row as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import requests
import urllib3

from tasks.messages.ledger import Channel, LedgerRow, Purpose

if TYPE_CHECKING:
    from tasks.feedback import Feed

OutcomeKind = Literal["sent", "failed", "retry", "unknown", "doubt", "pending"]
# What a provider answers when it may be struggling: dispatch leaves the rest of the run for later.
STRUGGLING = ("retry", "unknown", "doubt")
# How long after an attempt before "the provider does not have it" is believed (``reconcile``'s
# ``settle``): dispatch and the owner's report both wait this long.
SETTLE = timedelta(minutes=5)


# What templates render (tasks/messages/templates.py) and providers send.
@dataclass(frozen=True)
class SmsSize:
    encoding: str  # "GSM-7" | "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


@dataclass(frozen=True)
class RenderedEmail:
    subject: str = dataclasses.field(repr=False)
    html: str = dataclasses.field(repr=False)
    text: str = dataclasses.field(repr=False)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RenderedSms:
    text: str = dataclasses.field(repr=False)
    size: SmsSize = SmsSize("GSM-7", 0, 1)


Rendered = RenderedEmail | RenderedSms


class ProviderUnavailable(Exception):
    """Nothing in the batch went and more would not either (e.g. rejected credentials).

    The message names the provider and the setting to fix; never a recipient.
    """


@dataclass(frozen=True)
class Suppress:
    scope: Literal["all", "marketing"]
    reason: str  # a state.suppressions reason: stop | invalid_address | hard_bounce ...


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    provider_message_id: str | None = None
    error_code: str | None = None
    reason: str | None = None  # words for the ledger; never personal data
    suppress: Suppress | None = None
    # our settings refused for this message while others went (a stream that does not exist):
    # the run reports sending stopped with these words, as for a whole batch refused
    stop: str | None = None


@dataclass(frozen=True)
class OutgoingMessage:
    message_id: int
    send_key: str
    channel: Channel
    purpose: Purpose
    tag: str  # the source name: groups messages in the provider's UI
    to: str = dataclasses.field(repr=False)
    content: Rendered = dataclasses.field(repr=False)

    @property
    def content_hash(self) -> str:
        return content_hash(self.content)


def content_hash(content: Rendered) -> str:
    """What was sent, as a digest: lets reconciliation recognise a provider's record of it."""
    if isinstance(content, RenderedEmail):
        parts = [content.subject, content.html, content.text]
    else:
        parts = [content.text]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def metadata_key(send_key: str) -> str:
    """The send key as providers store it: Postmark metadata values are at most 80 characters."""
    if len(send_key) <= 80:
        return send_key
    return "sha256:" + hashlib.sha256(send_key.encode("utf-8")).hexdigest()[:64]


def request_never_sent(exc: BaseException) -> bool:
    """True only when the connection was never made, so the provider cannot have the request.

    A reset or disconnect after connecting is not this: the request may have arrived.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
    return isinstance(
        reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    )


# Raised by requests before any connection: a base URL it cannot use (no scheme, a misspelt one,
# no host). Nothing left this machine, and every request of the run would fail the same way.
URL_ERRORS = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
)


def unusable_base_url(provider: str, block: str, base_url: str | None) -> ProviderUnavailable:
    """The stop for a base URL requests refused (:data:`URL_ERRORS`): names the setting."""
    return ProviderUnavailable(
        f"{provider}: base_url {base_url!r} is not a URL (write it whole, e.g. "
        f"'http://127.0.0.1:8025'); nothing was sent. Fix base_url in the {block} block, or the "
        f"{provider.upper()}_BASE_URL variable."
    )


class Provider(Protocol):
    name: str
    batch_size: int  # rows dispatch takes, re-checks and renders at a time
    # Messages one request carries. Dispatch commits `sending` for exactly these just before the
    # request, so a crash leaves `sending` (in doubt) only on rows whose request may have left.
    request_size: int

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        """Send and report one outcome per message, in order."""
        ...

    def reconcile(
        self,
        rows: Sequence[LedgerRow],
        now: datetime,
        settle: timedelta,
        taken: Collection[str] = (),
    ) -> list[Outcome]:
        """For rows a dead run left ``sending`` (or marked ``unknown``): did they go?

        ``sent`` when the provider has the message; ``retry`` only when it certainly does not;
        ``unknown`` when nobody can tell; ``pending`` when it is too early to say (``settle``).
        ``taken``: provider message ids the ledger already holds as other messages' (so none
        of these rows' attempts).
        """
        ...

    def managed_unsubscribe(self) -> str | None:
        """When the provider manages unsubscribes of marketing email itself (its own link and
        one-click headers, its own suppression list, which its feeds bring back): the
        placeholder it replaces with its link, used where ours would go. None: ours are used.
        Raises ProviderUnavailable when it cannot tell."""
        ...

    def feedback_feeds(self, soft_bounce_limit: int) -> list[Feed]:
        """What this provider reports back after sending (bounces, suppressions, replies), as
        feeds the feedback step pulls every tick; none for a provider that reports nothing.
        ``soft_bounce_limit``: the clinic's marketing_list.soft_bounce_limit."""
        ...

    def close(self) -> None: ...
