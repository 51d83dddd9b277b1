"""Dispatch: due planned messages out through their channel's provider, each at most once.

One run, per channel, batch by batch:

1. **Reconcile** rows a dead run left ``sending`` (and recent ``unknown`` rows): ask the provider
   whether it has them (tasks/providers/common.py, ``Provider.reconcile``). Never a blind resend.
2. **Claim** due rows (``due_at`` and ``next_attempt_at`` passed). For each, the planner's
   ``prepare(row)`` re-checks it just before sending (appointment cancelled? unsubscribed?) and
   returns ``Ready`` (address + template context), ``Skip`` or ``Wait`` (a reason that can
   change: tasks/messages/waiting.py; tasks/messages/prepare.py). Then
   dispatch itself skips what is past its grace window, has an unusable address, is suppressed (marketing:
   suppressed for marketing or for all; transactional: for all) or fails to render.
3. **Commit ``sending``** for one request's messages (``Provider.request_size``: a Postmark
   batch, a single Twilio SMS), in its own transaction, just before that request. The update only
   moves rows that are still ``planned``, so two runs cannot both claim a row, and a run that
   dies leaves ``sending`` only on the request it was making: the rest are still ``planned``.
4. **Send**, then **record** each outcome in one transaction: sent, failed (+ a suppression when
   the address is dead or opted out), retry later (planned again, with backoff), unknown, or
   in doubt (left ``sending`` for the next run's reconcile); then the next request (3), until
   the batch is done or the provider takes nothing.

Processes are serialised by the database lock (tasks/warehouse.py); within a process, claims by
concurrent runs are told apart by ``claim_id``, so a live run's rows are never "reconciled".
Nothing here logs or returns personal data: results are counts.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb

from tasks.config import ClinicConfig
from tasks.messages import ledger, stranded, waiting
from tasks.messages.addresses import address_problem
from tasks.messages.ledger import Channel, LedgerRow, Status
from tasks.messages.prepare import Prepare, Ready, Skip, Wait
from tasks.messages.templates import TemplateError, Templates
from tasks.providers.common import (
    SETTLE,
    STRUGGLING,
    Outcome,
    OutgoingMessage,
    Provider,
    ProviderUnavailable,
    content_hash,
)
from tasks.unsubscribe.tokens import link_problem, sign, unsubscribe_url
from tasks.warehouse import transaction

# Unknown rows are re-checked with the provider for this long (then they wait for a person).
UNKNOWN_RECHECK = timedelta(days=2)
# What a batch decides for a row it will not send now (a ledger move, or a wait).
Decided = Literal["cancelled", "skipped", "waiting"]

_live_claims: set[str] = set()
_live_lock = threading.Lock()


# Holds back rows that may not go yet (frequency cap, quiet hours: tasks/messages/gate.py):
# defers or skips them itself and returns the rows that may go now.
Gate = Callable[[duckdb.DuckDBPyConnection, list[LedgerRow], datetime], list[LedgerRow]]


@dataclass
class DispatchResult:
    """What a run did, in counts and ids only (safe for logs, artifacts and Prefect results)."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # worded for the operator, no personal data
    # the problems no later run gets past by itself: a provider refused the account's settings
    # (credentials, sender, stream: ProviderUnavailable), so what is due waits until a person
    # fixes them (flows/dispatch.py emits relay.dispatch.stopped, which an alert matches)
    stopped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "problems": list(self.problems),
            "stopped": list(self.stopped),
        }


def backoff(attempts: int) -> timedelta:
    """1, 2, 4 ... minutes after each busy answer, at most an hour."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Unsubscribe:
    """How to build a marketing email's unsubscribe link for this clinic."""

    clinic: str
    base_url: str
    key: bytes | None = None  # None: the installation's key (tasks/unsubscribe/tokens.py)

    def url(self, row: LedgerRow) -> str:
        token = sign(self.clinic, row.patient_id, row.message_id, row.channel, key=self.key)
        return unsubscribe_url(self.base_url, token)


def _record(
    con: duckdb.DuckDBPyConnection,
    rows: Sequence[LedgerRow],
    addresses: Sequence[str | None],
    outcomes: Sequence[Outcome],
    provider: str,
    now: datetime,
    counts: Counter,
    *,
    retry_at_once: bool = False,
) -> None:
    """Write outcomes for rows now ``sending`` (or ``unknown``) in the caller's transaction."""
    groups: dict[tuple[Status, str], list[int]] = {}
    for i, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
        if outcome.kind == "pending" or (row.status == "unknown" and outcome.kind != "sent"):
            continue  # undecided, or an unknown row that only a confirmation may change
        groups.setdefault((row.status, outcome.kind), []).append(i)

    for (from_status, kind), idx in groups.items():
        ids = [rows[i].message_id for i in idx]
        reasons = [outcomes[i].reason for i in idx]
        codes = [outcomes[i].error_code for i in idx]
        if kind == "sent":
            values: dict[str, Sequence[Any]]
            values = {"provider_message_id": [outcomes[i].provider_message_id for i in idx],
                      "status_reason": reasons, "error_code": [None] * len(idx)}  # fmt: skip
            ledger.transition(con, ids, from_status, "sent", now, values=values)
        elif kind == "failed":
            values = {"status_reason": reasons, "error_code": codes}
            ledger.transition(con, ids, from_status, "failed", now, values=values)
            for i in idx:
                suppress, address = outcomes[i].suppress, addresses[i]
                if suppress and address:
                    ledger.add_suppression(
                        con,
                        channel=rows[i].channel,
                        address=address,
                        scope=suppress.scope,
                        reason=suppress.reason,
                        source=provider,
                        evidence=f"{provider} error {outcomes[i].error_code}, "
                        f"message {rows[i].message_id}",
                        occurred_at=now,
                    )
                    counts["suppressed"] += 1
        elif kind == "doubt":  # stays `sending`: the next run's reconcile asks the provider
            con.execute(
                "UPDATE state.messages AS m SET status_reason = v.r, error_code = v.c, "
                "updated_at = $now FROM (SELECT unnest($ids::BIGINT[]) AS id, unnest($r::VARCHAR[])"
                " AS r, unnest($c::VARCHAR[]) AS c) AS v WHERE m.message_id = v.id "
                "AND m.status = 'sending'", {"ids": ids, "r": reasons, "c": codes, "now": now},
            )  # fmt: skip
        elif kind == "retry":
            # the provider never had it: after a crash it may go at once; when busy, back off
            later = [now if retry_at_once else now + backoff(rows[i].attempts) for i in idx]
            values = {"next_attempt_at": later, "status_reason": reasons, "error_code": codes}
            ledger.transition(con, ids, from_status, "planned", now, values=values)
        else:  # unknown
            values = {"status_reason": reasons, "error_code": codes}
            ledger.transition(con, ids, from_status, "unknown", now, values=values)
        counts[kind] += len(idx)


def reconcile(
    con: duckdb.DuckDBPyConnection,
    providers: Mapping[Channel, Provider],
    now: datetime,
    *,
    settle: timedelta = SETTLE,
    result: DispatchResult | None = None,
) -> DispatchResult:
    """Settle rows left ``sending`` by a run that is no longer alive, and recheck recent unknowns."""
    result = result or DispatchResult()
    with _live_lock:
        live = set(_live_claims)
    for channel, provider in providers.items():
        rows = [
            r for r in ledger.in_status(con, "sending", channel=channel) if r.claim_id not in live
        ] + [
            r
            for r in ledger.in_status(con, "unknown", channel=channel)
            if r.sending_at and now - r.sending_at <= UNKNOWN_RECHECK
        ]
        for old, moved in stranded.mark_unknown(
            con, channel, provider.name, rows, now, settle
        ).items():
            result.counts["reconciled_unknown"] += moved
            result.problems.append(stranded.problem(channel, moved, old, provider.name))
        rows = [r for r in rows if r.provider == provider.name]
        if not rows:
            continue
        # what the provider holds as other messages of ours is none of these rows' attempts
        taken = con.execute(
            "SELECT provider_message_id FROM state.messages WHERE channel = ? AND "
            "provider_message_id IS NOT NULL AND to_address IN (SELECT unnest(?::VARCHAR[]))",
            [channel, sorted({r.to_address for r in rows if r.to_address})],
        ).fetchall()
        outcomes = provider.reconcile(rows, now, settle, taken={t for (t,) in taken})
        before = Counter(result.counts)
        with transaction(con):
            _record(
                con, rows, [r.to_address for r in rows], outcomes, provider.name, now,
                result.counts, retry_at_once=True,
            )  # fmt: skip
        for kind in ("sent", "retry", "unknown"):
            moved = result.counts[kind] - before[kind]
            if moved:
                result.counts[f"reconciled_{kind}"] += moved
                result.counts[kind] -= moved
    return result


def _prepare_batch(
    con: duckdb.DuckDBPyConnection,
    rows: Sequence[LedgerRow],
    prepare: Prepare,
    templates: Templates,
    unsubscribe: Unsubscribe | None,
    now: datetime,
    managed_unsubscribe: str | None = None,
) -> tuple[list[tuple[LedgerRow, OutgoingMessage]], dict[Decided, list[tuple[int, str]]]]:
    """Decide each row: a message to send, or a reason not to (cancelled / skipped).
    ``managed_unsubscribe``: the provider's placeholder for its own unsubscribe link, when it
    manages unsubscribes (then it adds the one-click headers too, and ours would be a second)."""
    decided: dict[Decided, list[tuple[int, str]]] = {"cancelled": [], "skipped": [], "waiting": []}
    ready: list[tuple[LedgerRow, Ready]] = []
    for row in rows:
        if row.expires_at is not None and now > row.expires_at:
            decided["skipped"].append((row.message_id, waiting.PAST_GRACE))
            continue
        try:
            decision = prepare(row)
        except Exception as exc:
            # One bad row must not block every later message; the type names the bug without
            # repeating data that may be in the message. It waits, not skipped for good: tried
            # again each run while its grace window lasts (a fix or the next sync may let it go).
            decision = Wait(f"the re-check before sending failed ({type(exc).__name__})")
        if isinstance(decision, Skip):
            outcome: Literal["waiting"] | None = "waiting" if isinstance(decision, Wait) else None
            decided[outcome or ("cancelled" if decision.cancel else "skipped")].append(
                (row.message_id, decision.reason)
            )
            continue
        problem = address_problem(row.channel, decision.to)
        if problem:
            decided["skipped"].append((row.message_id, problem))
            continue
        ready.append((row, decision))

    suppressed: set[tuple[str, str]] = set()
    for purpose in ("transactional", "marketing"):
        for channel in ("email", "sms"):
            addresses = [d.to for r, d in ready if r.purpose == purpose and r.channel == channel]
            for address in ledger.suppressed_addresses(con, channel, addresses, purpose):
                suppressed.add((purpose, address))

    messages: list[tuple[LedgerRow, OutgoingMessage]] = []
    for row, decision in ready:
        to = ledger.normalise_address(row.channel, decision.to)
        if (row.purpose, to) in suppressed:
            decided["skipped"].append((row.message_id, f"address suppressed ({row.purpose})"))
            continue
        marketing = row.purpose == "marketing"
        context = dict(decision.context)
        if marketing and row.channel == "email" and managed_unsubscribe:
            context["unsubscribe_url"] = managed_unsubscribe
        elif marketing and row.channel == "email":
            if unsubscribe is None:
                decided["skipped"].append(
                    (row.message_id, "marketing email but no unsubscribe URL is configured")
                )
                continue
            context["unsubscribe_url"] = unsubscribe.url(row)
        try:
            content = templates.render(
                row.template, row.channel, context, marketing=marketing,
                one_click_headers=not managed_unsubscribe,
            )  # fmt: skip
        except TemplateError as exc:
            decided["skipped"].append((row.message_id, f"not rendered: {exc}"[:500]))
            continue
        messages.append(
            (
                row,
                OutgoingMessage(
                    message_id=row.message_id,
                    send_key=row.send_key,
                    channel=row.channel,
                    purpose=row.purpose,
                    tag=row.source_name,
                    to=to,
                    content=content,
                ),
            )
        )
    return messages, decided


def dispatch(
    con: duckdb.DuckDBPyConnection,
    *,
    providers: Mapping[Channel, Provider],
    prepare: Prepare,
    templates: Templates,
    unsubscribe: Unsubscribe | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    settle: timedelta = SETTLE,
    max_batches: int | None = None,
    gate: Gate | None = None,
) -> DispatchResult:
    """Send every due message once. ``providers`` maps a channel (email, sms) to its provider."""
    result = DispatchResult()
    claim_id = uuid.uuid4().hex
    with _live_lock:
        _live_claims.add(claim_id)
    try:
        reconcile(con, providers, clock(), settle=settle, result=result)
        for channel, provider in providers.items():
            _dispatch_channel(
                con, channel, provider, prepare, templates, unsubscribe, clock, claim_id,
                result, max_batches, gate,
            )  # fmt: skip
    finally:
        with _live_lock:
            _live_claims.discard(claim_id)
        for provider in providers.values():
            provider.close()
    return result


def _dispatch_channel(
    con: duckdb.DuckDBPyConnection,
    channel: Channel,
    provider: Provider,
    prepare: Prepare,
    templates: Templates,
    unsubscribe: Unsubscribe | None,
    clock: Callable[[], datetime],
    claim_id: str,
    result: DispatchResult,
    max_batches: int | None,
    gate: Gate | None = None,
) -> None:
    batches, managed, asked, unsure = 0, None, False, None
    while max_batches is None or batches < max_batches:
        batches += 1
        now = clock()
        rows = ledger.due(con, now, channel=channel, limit=provider.batch_size)
        if not rows:
            return
        if gate is not None:
            rows = gate(con, rows, now)
        if not asked and any(r.purpose == "marketing" for r in rows):
            asked = True
            try:  # who handles unsubscribes: asked once a run, before any marketing is claimed
                managed = provider.managed_unsubscribe()
                if managed is None and unsubscribe and getattr(provider, "reaches_people", False):
                    unsure = link_problem(unsubscribe.base_url)  # ours: it must work for patients
            except ProviderUnavailable as exc:
                unsure = f"whose unsubscribe link to use is unknown: {exc}"[:500]
            if unsure:
                result.problems.append(f"{channel}: {unsure}")
                result.stopped.append(f"{channel}: {unsure}")
        if unsure:  # holds marketing only: reminders and other transactional mail still go
            marketing = [r.message_id for r in rows if r.purpose == "marketing"]
            ledger.defer(con, marketing, [now + backoff(1)] * len(marketing),
                         [unsure] * len(marketing), now)  # fmt: skip
            rows = [r for r in rows if r.purpose != "marketing"]
            if not rows:
                continue
        messages, decided = _prepare_batch(con, rows, prepare, templates, unsubscribe, now, managed)
        try:
            with transaction(con):
                for status, items in decided.items():
                    if items and status == "waiting":  # waits, or skipped once past its grace
                        ids, reasons = zip(*items, strict=True)
                        held, late = waiting.hold(con, ids, reasons, now)
                        result.counts.update(waiting=len(held), skipped=len(late))
                    elif items:
                        assert status != "waiting"  # the branch above took the waiting ones
                        ledger.transition(
                            con, [i for i, _ in items], "planned", status, now,
                            values={"status_reason": [r for _, r in items]},
                        )  # fmt: skip
                        result.counts[status] += len(items)
        except (duckdb.TransactionException, ledger.IllegalTransition):
            result.problems.append(f"{channel}: a concurrent run claimed the same messages")
            return
        # One claim per request, committed just before it leaves: a crash leaves `sending` only
        # on rows whose request may have reached the provider; the rest are still `planned`.
        for start in range(0, len(messages), provider.request_size):
            chunk = messages[start : start + provider.request_size]
            if not _attempt(con, channel, provider, chunk, clock, claim_id, result, managed):
                return


def _attempt(
    con: duckdb.DuckDBPyConnection,
    channel: Channel,
    provider: Provider,
    messages: Sequence[tuple[LedgerRow, OutgoingMessage]],
    clock: Callable[[], datetime],
    claim_id: str,
    result: DispatchResult,
    managed: str | None = None,
) -> bool:
    """Claim (commit ``sending``), send and record one request's messages. False: stop this
    channel until the next run (another run took them, or the provider took nothing).
    ``managed``: the provider's own unsubscribe link is in force (counted, so the run says so)."""
    try:
        with transaction(con):
            claimed = set(
                ledger.transition(
                    con,
                    [m.message_id for _, m in messages],
                    "planned",
                    "sending",
                    clock(),
                    values={
                        "to_address": [m.to for _, m in messages],
                        "content_hash": [content_hash(m.content) for _, m in messages],
                        "provider": [provider.name] * len(messages),
                        "claim_id": [claim_id] * len(messages),
                        "status_reason": [None] * len(messages),
                        "next_attempt_at": [None] * len(messages),
                    },
                    strict=False,
                    count_attempt=True,
                )
            )
    except (duckdb.TransactionException, ledger.IllegalTransition):
        # another run in this process moved these rows first: leave them to it
        result.problems.append(f"{channel}: a concurrent run claimed the same messages")
        return False
    batch = [(r, m) for r, m in messages if m.message_id in claimed]
    if not batch:
        return True
    if managed:  # says in the run's counts whose unsubscribe link marketing email carries
        result.counts[f"unsubscribe_link_by_{provider.name}"] += sum(
            m.purpose == "marketing" for _, m in batch
        )
    try:
        outcomes = provider.send([m for _, m in batch])
    except ProviderUnavailable as exc:
        outcomes = [Outcome("retry", reason="provider unavailable")] * len(batch)
        result.problems.append(f"{channel}: {exc}")
        result.stopped.append(f"{channel}: {exc}")
    for why in dict.fromkeys(o.stop for o in outcomes if o.stop):  # the rest of the batch went
        result.problems.append(f"{channel}: {why}")
        result.stopped.append(f"{channel}: {why}")
    sending_rows = [
        dataclasses.replace(r, status="sending", attempts=r.attempts + 1) for r, _ in batch
    ]
    with transaction(con):
        _record(
            con, sending_rows, [m.to for _, m in batch], outcomes, provider.name, clock(),
            result.counts,
        )  # fmt: skip
    for doubt in dict.fromkeys(o.reason for o in outcomes if o.kind == "doubt"):
        result.problems.append(f"{channel}: {doubt}; the next run looks it up by send key")
    if all(o.kind in STRUGGLING for o in outcomes):
        result.problems.append(
            f"{channel}: {provider.name} took nothing from the last request; stopping until "
            "the next run"
        )
        return False
    return True


def dispatch_for_clinic(
    con: duckdb.DuckDBPyConnection,
    cfg: ClinicConfig,
    prepare: Prepare,
    *,
    providers: Mapping[Channel, Provider],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    gate: Gate | None = None,
) -> DispatchResult:
    """Dispatch with everything the clinic's configuration decides: templates, links; the
    providers come resolved from it (``blocks.resolve.providers_for``: tasks never load blocks)."""
    return dispatch(
        con,
        providers=providers,
        prepare=prepare,
        templates=Templates(cfg.folder),
        unsubscribe=Unsubscribe(cfg.clinic, cfg.providers.unsubscribe_url),
        clock=clock,
        gate=gate,
    )
