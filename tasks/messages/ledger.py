"""The message ledger (``state.messages``): planned rows in, one state machine, nothing sent twice.

Planning inserts rows keyed by a deterministic send key; inserting a key that is already there is a
no-op, so re-planning can never reset a message that went (the ways back from a final state, both
in tasks/triggers/reopen.py and only for a row never claimed, :data:`ONLY_IF`: a trigger's skip
about time, reopened when its appointment moves; a cancel by its trigger switched off, whose
moment comes after the trigger is on again). Every state change goes through
:func:`transition`, which refuses moves the state machine does not allow and moves only rows that
are in the expected state (a row another run already took is left alone, never overwritten).

**Waiting** is a planned row dispatch does not take yet, for a reason that can change before its
moment + grace (``waiting_reason``) or until ``next_attempt_at`` (:func:`defer`): not a status of
its own (a planned row, so everything that guards planned rows guards it), but a state operators
see. tasks/messages/waiting.py holds it: ``hold``, ``release`` and how a row's state reads.

Callers own the transaction: the functions here issue statements on the connection they are given,
so dispatch can commit `sending` on its own before calling a provider.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import duckdb

from tasks.warehouse import one

Channel = Literal["email", "sms"]
Purpose = Literal["transactional", "marketing"]
# The suppression scopes that stop a message of each purpose: 'all' (undeliverable) stops every
# message, 'marketing' marketing only (tasks/schema/20_suppressions.sql).
STOPPED_BY = {"transactional": ("all",), "marketing": ("all", "marketing")}
SourceKind = Literal["trigger", "journey", "campaign"]
Status = Literal["planned", "sending", "sent", "failed", "unknown", "cancelled", "skipped"]

STATUSES: tuple[Status, ...] = get_args(Status)
TRANSITIONS: dict[str, frozenset[str]] = {
    "planned": frozenset({"sending", "cancelled", "skipped"}),
    # back to planned only when the provider certainly did not take the message (retry later)
    "sending": frozenset({"sent", "failed", "unknown", "planned"}),
    # sent: a provider lookup confirmed an uncertain send, or a person did; planned: a person
    # decided to send it again (`relay ledger resolve`, :func:`resolve`), never dispatch itself
    "unknown": frozenset({"sent", "planned"}),
    # planned again: a skip about time whose appointment moved (tasks/triggers/reopen.py)
    "skipped": frozenset({"planned"}),
    # planned again: cancelled when its trigger was switched off, whose moment comes after the
    # trigger went live again (tasks/triggers/reopen.py, ``resume``)
    "cancelled": frozenset({"planned"}),
}
# Moves only a person's decision makes: the transition must name who (``resolved_by``).
BY_A_PERSON: frozenset[tuple[str, str]] = frozenset({("unknown", "planned")})
# Moves only rows that also meet a condition take, checked in the same UPDATE as the status: a
# row any run ever claimed (sending, whatever came after) is never planned again from a skip.
_NEVER_CLAIMED = "m.sending_at IS NULL AND m.attempts = 0 AND m.claim_id IS NULL"
ONLY_IF: dict[tuple[str, str], str] = {
    ("skipped", "planned"): _NEVER_CLAIMED,
    ("cancelled", "planned"): _NEVER_CLAIMED,
}
FINAL: frozenset[str] = frozenset({"sent", "failed", "cancelled", "skipped"})

# Columns a transition may set per row, with their SQL types (nothing else reaches the SQL text).
_ROW_COLUMNS = {
    "status_reason": "VARCHAR",
    "error_code": "VARCHAR",
    "provider": "VARCHAR",
    "provider_message_id": "VARCHAR",
    "to_address": "VARCHAR",
    "content_hash": "VARCHAR",
    "claim_id": "VARCHAR",
    "next_attempt_at": "TIMESTAMPTZ",
    "due_at": "TIMESTAMPTZ",
    "expires_at": "TIMESTAMPTZ",
    "resolved_by": "VARCHAR",
    "resolved_at": "TIMESTAMPTZ",
    "resolution": "VARCHAR",
    "waiting_reason": "VARCHAR",
    "reopened": "VARCHAR",
}


class IllegalTransition(RuntimeError):
    """A state change the ledger's state machine forbids, or a row not in the state expected."""


def make_send_key(source_kind: SourceKind, source_name: str, patient_id: int, occasion: str) -> str:
    """The message's identity: the same source, patient and occasion always give the same key.

    ``occasion`` names what the message is about, e.g. ``appointment:123`` for a reminder or
    ``2026-11`` for a monthly campaign; never personal data (the key is sent to providers).
    """
    if source_kind not in ("trigger", "journey", "campaign"):
        raise ValueError(f"source_kind must be trigger, journey or campaign, not {source_kind!r}")
    if not source_name or ":" in source_name:
        raise ValueError(f"a source name is non-empty and has no ':' (got {source_name!r})")
    if not occasion:
        raise ValueError("the occasion of a message must be named")
    return f"{source_kind}:{source_name}:{int(patient_id)}:{occasion}"


@dataclass(frozen=True)
class PlannedMessage:
    """What planning decides: who gets which template when. The address is looked up at send time."""

    send_key: str
    source_kind: SourceKind
    source_name: str
    patient_id: int
    channel: Channel
    purpose: Purpose
    template: str
    due_at: datetime
    expires_at: datetime | None = None
    appointment_id: int | None = None


@dataclass(frozen=True)
class LedgerRow:
    message_id: int
    send_key: str
    source_kind: str
    source_name: str
    patient_id: int
    appointment_id: int | None
    channel: Channel
    purpose: Purpose
    template: str
    due_at: datetime
    expires_at: datetime | None
    status: Status
    status_reason: str | None
    attempts: int
    next_attempt_at: datetime | None
    claim_id: str | None
    provider: str | None
    provider_message_id: str | None
    error_code: str | None
    # personal data: kept out of repr so a logged row never shows it
    to_address: str | None = dataclasses.field(repr=False)
    content_hash: str | None
    sending_at: datetime | None
    sent_at: datetime | None
    waiting_reason: str | None = None  # why a planned row waits (:func:`hold`); None: it does not


_ROW_FIELDS = [f.name for f in dataclasses.fields(LedgerRow)]
_SELECT = f"SELECT {', '.join(_ROW_FIELDS)} FROM state.messages"
# A row is due when it is planned, its moment has come and it is not waiting for a retry.
_DUE = (
    "status = 'planned' AND due_at <= $now AND (next_attempt_at IS NULL OR next_attempt_at <= $now)"
)


def _rows(cur: duckdb.DuckDBPyConnection) -> list[LedgerRow]:
    return [LedgerRow(*r) for r in cur.fetchall()]


def insert_planned(
    con: duckdb.DuckDBPyConnection, messages: Iterable[PlannedMessage], now: datetime
) -> int:
    """Insert planned messages; keys already in the ledger (in any state) are left untouched.

    Returns how many rows were new.
    """
    batch = list(messages)
    if not batch:
        return 0
    cols = {f.name: [getattr(m, f.name) for m in batch] for f in dataclasses.fields(PlannedMessage)}
    inserted = con.execute(
        """
        INSERT INTO state.messages (send_key, source_kind, source_name, patient_id, channel,
            purpose, template, due_at, expires_at, appointment_id, planned_at, updated_at)
        SELECT DISTINCT ON (send_key) *, $now, $now FROM (
            SELECT unnest($send_key::VARCHAR[]) AS send_key,
                   unnest($source_kind::VARCHAR[]), unnest($source_name::VARCHAR[]),
                   unnest($patient_id::BIGINT[]), unnest($channel::VARCHAR[]),
                   unnest($purpose::VARCHAR[]), unnest($template::VARCHAR[]),
                   unnest($due_at::TIMESTAMPTZ[]), unnest($expires_at::TIMESTAMPTZ[]),
                   unnest($appointment_id::BIGINT[])
        )
        ON CONFLICT (send_key) DO NOTHING
        RETURNING message_id
        """,
        {**cols, "now": now},
    ).fetchall()
    return len(inserted)


def transition(
    con: duckdb.DuckDBPyConnection,
    ids: Sequence[int],
    from_status: Status,
    to_status: Status,
    now: datetime,
    *,
    values: Mapping[str, Sequence[Any]] | None = None,
    strict: bool = True,
    count_attempt: bool = False,
) -> list[int]:
    """Move rows ``from_status -> to_status``, setting per-row ``values`` (lists aligned with ids).

    Only rows still in ``from_status`` move; their ids are returned. ``strict`` raises
    :class:`IllegalTransition` when any row was not in ``from_status`` (the caller's transaction
    then rolls back, so nothing is half-recorded).
    """
    if to_status not in TRANSITIONS.get(from_status, ()):
        raise IllegalTransition(f"a message cannot go from {from_status} to {to_status}")
    values = values or {}
    if (from_status, to_status) in BY_A_PERSON and not values.get("resolved_by"):
        raise IllegalTransition(
            f"only a person moves a message from {from_status} to {to_status} (relay ledger resolve)"
        )
    if not ids:
        return []
    guarded = (from_status, to_status) in ONLY_IF
    unknown = set(values) - set(_ROW_COLUMNS)
    if unknown:
        raise ValueError(f"not columns a transition may set: {sorted(unknown)}")
    for name, column in values.items():
        if len(column) != len(ids):
            raise ValueError(f"{name}: {len(column)} values for {len(ids)} messages")

    sets = ["status = $to_status", "updated_at = $now"] + [f"{c} = v.{c}" for c in values]
    if to_status != "planned":
        sets.append(f"{to_status}_at = $now")
    if count_attempt:
        sets.append("attempts = attempts + 1")
    unnests = ", ".join(
        ["unnest($ids::BIGINT[]) AS message_id"]
        + [f"unnest(${c}::{_ROW_COLUMNS[c]}[]) AS {c}" for c in values]
    )
    params = {
        "ids": list(ids),
        "to_status": to_status,
        "from_status": from_status,
        "now": now,
        **{c: list(v) for c, v in values.items()},
    }
    # A strict move only needs the count (RETURNING doubles the cost of a 500-row update);
    # a lenient one must say which rows it took.
    update = f"""
        UPDATE state.messages AS m SET {", ".join(sets)}
        FROM (SELECT {unnests}) AS v
        WHERE m.message_id = v.message_id AND m.status = $from_status
          AND {ONLY_IF.get((from_status, to_status), "true")}
        {"" if strict else "RETURNING m.message_id"}
        """
    if not strict:
        return [r[0] for r in con.execute(update, params).fetchall()]
    wanted = list(dict.fromkeys(ids))
    if one(con, update, params)[0] != len(wanted):
        stray = [
            r[0]
            for r in con.execute(
                "SELECT message_id FROM state.messages WHERE message_id IN "
                "(SELECT unnest($ids::BIGINT[])) AND NOT (status = $to_status AND updated_at = $now) "
                "ORDER BY 1 LIMIT 5",
                {"ids": wanted, "to_status": to_status, "now": now},
            ).fetchall()
        ]
        raise IllegalTransition(
            f"messages {stray} are not {from_status}{' (never attempted)' * guarded}, "
            f"so they cannot become {to_status}"
        )
    return wanted


def cancel(
    con: duckdb.DuckDBPyConnection, ids: Sequence[int], reason: str, now: datetime
) -> list[int]:
    """The occasion is gone (appointment cancelled or moved away): planned -> cancelled."""
    return transition(
        con, ids, "planned", "cancelled", now, values={"status_reason": [reason] * len(ids)}
    )


def skip(
    con: duckdb.DuckDBPyConnection, ids: Sequence[int], reason: str, now: datetime
) -> list[int]:
    """Decided not to send (unsubscribed, suppressed, too late): planned -> skipped."""
    return transition(
        con, ids, "planned", "skipped", now, values={"status_reason": [reason] * len(ids)}
    )


def reschedule(
    con: duckdb.DuckDBPyConnection,
    message_id: int,
    due_at: datetime,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """Move a planned message (its appointment moved). Anything past planned is history: refused."""
    moved = con.execute(
        """
        UPDATE state.messages SET due_at = ?, expires_at = ?, updated_at = ?
        WHERE message_id = ? AND status = 'planned' RETURNING message_id
        """,
        [due_at, expires_at, now, message_id],
    ).fetchall()
    if not moved:
        raise IllegalTransition(f"message {message_id} is not planned, so it cannot be moved")


def amend(
    con: duckdb.DuckDBPyConnection,
    message_id: int,
    *,
    channel: Channel,
    purpose: Purpose,
    template: str,
    now: datetime,
) -> None:
    """Its trigger was edited: a planned message goes out as the trigger now says. Refused past
    planned (what went, went as it was)."""
    moved = con.execute(
        """
        UPDATE state.messages SET channel = ?, purpose = ?, template = ?, updated_at = ?
        WHERE message_id = ? AND status = 'planned' RETURNING message_id
        """,
        [channel, purpose, template, now, message_id],
    ).fetchall()
    if not moved:
        raise IllegalTransition(f"message {message_id} is not planned, so it cannot be amended")


def due(
    con: duckdb.DuckDBPyConnection,
    now: datetime,
    *,
    channel: Channel | None = None,
    limit: int = 500,
) -> list[LedgerRow]:
    """Planned rows whose moment has come and who are not waiting for a retry, oldest first."""
    return _rows(
        con.execute(
            f"""{_SELECT}
            WHERE {_DUE} AND ($channel IS NULL OR channel = $channel)
            ORDER BY due_at, message_id LIMIT $limit""",
            {"now": now, "channel": channel, "limit": limit},
        )
    )


def due_marketing(
    con: duckdb.DuckDBPyConnection, now: datetime, patient_ids: Sequence[int]
) -> list[LedgerRow]:
    """Every marketing row of these patients that is due now, any channel (the frequency cap
    weighs them together; tasks/messages/gate.py)."""
    return _rows(
        con.execute(
            f"""{_SELECT}
            WHERE {_DUE} AND purpose = 'marketing'
              AND patient_id IN (SELECT unnest($patients::BIGINT[]))
            ORDER BY due_at, message_id""",
            {"now": now, "patients": list(patient_ids)},
        )
    )


def defer(
    con: duckdb.DuckDBPyConnection,
    ids: Sequence[int],
    until: Sequence[datetime],
    reasons: Sequence[str],
    now: datetime,
) -> list[int]:
    """Hold planned messages back until later (frequency cap, quiet hours); ``due_at`` keeps
    the moment they were planned for. Rows no longer planned are left alone."""
    if not ids:
        return []
    moved = con.execute(
        """
        UPDATE state.messages AS m
        SET next_attempt_at = v.until, status_reason = v.reason, updated_at = $now
        FROM (SELECT unnest($ids::BIGINT[]) AS message_id, unnest($until::TIMESTAMPTZ[]) AS until,
                     unnest($reasons::VARCHAR[]) AS reason) AS v
        WHERE m.message_id = v.message_id AND m.status = 'planned'
        RETURNING m.message_id
        """,
        {"ids": list(ids), "until": list(until), "reasons": list(reasons), "now": now},
    ).fetchall()
    return [r[0] for r in moved]


def in_status(
    con: duckdb.DuckDBPyConnection, status: Status, *, channel: Channel | None = None
) -> list[LedgerRow]:
    return _rows(
        con.execute(
            f"{_SELECT} WHERE status = $status AND ($channel IS NULL OR channel = $channel) "
            "ORDER BY message_id",
            {"status": status, "channel": channel},
        )
    )


def resolve(
    con: duckdb.DuckDBPyConnection,
    send_key: str,
    decision: Literal["sent", "resend"],
    by: str,
    now: datetime,
    note: str | None = None,
) -> LedgerRow:
    """A person settles an ``unknown`` message: it went (``sent``), or it is to go again
    (``resend``: planned, due at once; the re-check before sending still applies). Who, when and
    what, with the reason it was unknown, stay on the row (``resolution``) after later sends."""
    row = get(con, send_key)
    if row is None:
        raise LookupError(
            f"no message has send key {send_key!r} (`relay ledger unknown` lists them)"
        )
    if row.status != "unknown":
        raise IllegalTransition(
            f"message {send_key} is {row.status}, not unknown: only an unknown message is resolved"
        )
    what = "sent, confirmed by a person" if decision == "sent" else "resend, decided by a person"
    words = f"{what} ({by}{': ' + note if note else ''}); was unknown: {row.status_reason}"
    values: dict[str, list[Any]] = {"status_reason": [words], "resolution": [words],
                                    "resolved_by": [by], "resolved_at": [now]}  # fmt: skip
    if decision == "resend":
        values["next_attempt_at"] = [now]
    transition(con, [row.message_id], "unknown", "planned" if decision == "resend" else "sent",
               now, values=values)  # fmt: skip
    resolved = get(con, send_key)
    assert resolved is not None  # read above; a transition changes a row, never removes it
    return resolved


def get(con: duckdb.DuckDBPyConnection, send_key: str) -> LedgerRow | None:
    rows = _rows(con.execute(f"{_SELECT} WHERE send_key = ?", [send_key]))
    return rows[0] if rows else None


def status_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(
        con.execute("SELECT status, count(*) FROM state.messages GROUP BY status").fetchall()
    )


def normalise_address(channel: Channel, address: str) -> str:
    """Email lower-cased and trimmed; phones are already E.164 by the time they get here."""
    return address.strip().lower() if channel == "email" else address.strip()


def suppressed_addresses(
    con: duckdb.DuckDBPyConnection,
    channel: Channel,
    addresses: Iterable[str],
    purpose: Purpose,
) -> set[str]:
    """Which of these addresses must not get a message of this purpose right now: those
    ``state.current_suppressions`` holds in a scope that stops it (``STOPPED_BY``)."""
    wanted = sorted({normalise_address(channel, a) for a in addresses})
    if not wanted:
        return set()
    rows = con.execute(
        """
        SELECT DISTINCT address FROM state.current_suppressions
        WHERE channel = $channel AND address IN (SELECT unnest($addresses::VARCHAR[]))
          AND scope IN (SELECT unnest($scopes::VARCHAR[]))
        """,
        {"channel": channel, "addresses": wanted, "scopes": list(STOPPED_BY[purpose])},
    ).fetchall()
    return {r[0] for r in rows}


def add_suppression(
    con: duckdb.DuckDBPyConnection,
    *,
    channel: Channel,
    address: str,
    scope: Literal["all", "marketing"],
    reason: str,
    source: str,
    evidence: str,
    occurred_at: datetime,
) -> None:
    con.execute(
        """
        INSERT INTO state.suppressions (channel, address, action, reason, scope, source, evidence,
                                        occurred_at, recorded_at)
        VALUES (?, ?, 'suppress', ?, ?, ?, ?, ?, ?)
        """,
        [
            channel,
            normalise_address(channel, address),
            reason,
            scope,
            source,
            evidence,
            occurred_at,
            occurred_at,
        ],
    )
