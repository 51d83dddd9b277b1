"""What an enrolment does next: a journey's steps, run set-wise, a step index at a time.

Every enrolment whose next step is due advances step by step until it waits, fails a condition or
completes. A send step puts a marketing message into the ledger with the key
``journey:<name>:<patient>:<entry>:s<step>``, where the entry is named by what it is (the
patient's k-th entry into the journey ``n<k>``, a date entry's year ``y<year>``; enrolments made
before that keep ``e<enrolment id>``: tasks/schema/70_journeys.sql), never by a counter of the
database, so the clinic's messages keep their keys on any copy of it; the step's record (``state.journey_steps``) and
the enrolment's progress commit with it, in the journey's transaction (tasks/marketing/journeys.py),
so a crash or a rerun never repeats a step or skips one.

Promises kept at send time, not at queue time: an enrolment goes no further while a message it
queued is still to go (planned or sending: held by the frequency cap or quiet hours, say), so its
steps arrive in order; and a ``wait`` counts from when the send steps before it went (or were
settled otherwise: skipped, cancelled, failed), so "3 days later" is 3 days after the patient
got the previous message.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import ConditionStep, Journey, SendStep, WaitStep
from tasks.messages import ledger
from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.ledger import PlannedMessage, make_send_key


def send_key(journey: str, patient_id: int, entry_key: str, step: int) -> str:
    """``entry_key``: the enrolment's ``state.journey_enrolments.entry_key``."""
    return make_send_key("journey", journey, patient_id, f"{entry_key}:s{step}")


def _members(con: duckdb.DuckDBPyConnection, audience: str, patients: Iterable[int]) -> set[int]:
    return {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT patient_id FROM state.audience_members WHERE audience = ? "
            "AND patient_id IN (SELECT unnest(?::BIGINT[]))",
            [audience, list(patients)],
        ).fetchall()
    }


def _record_steps(
    con: duckdb.DuckDBPyConnection,
    step: int,
    kind: str,
    records: list[tuple[int, str, str | None, int | None]],
    now: datetime,
) -> None:
    if not records:
        return
    ids, outcomes, details, messages = (list(c) for c in zip(*records, strict=True))
    con.execute(
        """
        INSERT INTO state.journey_steps
        SELECT unnest($ids::BIGINT[]), $step, $kind, unnest($outcomes::VARCHAR[]),
               unnest($details::VARCHAR[]), unnest($messages::BIGINT[]), $now
        ON CONFLICT DO NOTHING
        """,
        {"ids": ids, "step": step, "kind": kind, "outcomes": outcomes, "details": details,
         "messages": messages, "now": now},
    )  # fmt: skip


def _move(
    con: duckdb.DuckDBPyConnection,
    ids: list[int],
    now: datetime,
    *,
    next_step: int,
    next_at: list[datetime] | None = None,
) -> None:
    """Move enrolments to ``next_step``; ``next_at``: when it is due, one per enrolment."""
    at = next_at if next_at is not None else [None] * len(ids)
    con.execute(
        "UPDATE state.journey_enrolments AS e SET next_step = $step, "
        "next_at = coalesce(v.at, e.next_at), updated_at = $now "
        "FROM (SELECT unnest($ids::BIGINT[]) AS id, unnest($at::TIMESTAMPTZ[]) AS at) AS v "
        "WHERE e.enrolment_id = v.id",
        {"step": next_step, "at": at, "now": now, "ids": ids},
    )


def _end(
    con: duckdb.DuckDBPyConnection, ids: list[int], status: str, reason: str | None, now: datetime
) -> None:
    con.execute(
        "UPDATE state.journey_enrolments SET status = $status, exit_reason = $reason, "
        "finished_at = $now, updated_at = $now WHERE enrolment_id IN (SELECT unnest($ids::BIGINT[]))",
        {"status": status, "reason": reason, "now": now, "ids": ids},
    )


def _send(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    index: int,
    step: SendStep,
    due: list[tuple[int, int]],
    now: datetime,
    entry_keys: dict[int, str],
) -> Counter:
    counts: Counter = Counter()
    on_list = _members(con, MARKETING_LISTS[step.send].audience, [p for _, p in due])
    messages = [
        PlannedMessage(
            send_key=send_key(journey.name, patient_id, entry_keys[enrolment_id], index),
            source_kind="journey",
            source_name=journey.name,
            patient_id=patient_id,
            channel=step.send,
            purpose="marketing",
            template=step.template,
            due_at=now,
            expires_at=now + step.within if step.within else None,
        )
        for enrolment_id, patient_id in due
        if patient_id in on_list
    ]
    ledger.insert_planned(con, messages, now)
    ids = dict(
        con.execute(
            "SELECT send_key, message_id FROM state.messages "
            "WHERE send_key IN (SELECT unnest(?::VARCHAR[]))",
            [[m.send_key for m in messages]],
        ).fetchall()
    )
    records: list[tuple[int, str, str | None, int | None]] = []
    for enrolment_id, patient_id in due:
        if patient_id in on_list:
            key = send_key(journey.name, patient_id, entry_keys[enrolment_id], index)
            records.append((enrolment_id, "queued", None, ids[key]))
        else:
            records.append((enrolment_id, "skipped", f"not on the {step.send} list", None))
    _record_steps(con, index, "send", records, now)
    counts["queued"] += len(messages)
    counts["send_skipped"] += len(due) - len(messages)
    return counts


# A queued message is settled in these states: it went (or may have: unknown) or never will.
SETTLED = ("sent", "unknown", "failed", "cancelled", "skipped")
# When it was settled: sent (or, unknown, maybe sent), refused, or decided against.
_SETTLED_AT = (
    "coalesce(CASE m.status WHEN 'sent' THEN m.sent_at WHEN 'unknown' THEN m.sending_at "
    "WHEN 'failed' THEN m.failed_at WHEN 'cancelled' THEN m.cancelled_at "
    "WHEN 'skipped' THEN m.skipped_at END, m.updated_at)"
)


def _sent_since(
    con: duckdb.DuckDBPyConnection, ids: list[int], first: int, index: int
) -> dict[int, datetime]:
    """enrolment -> when the last message queued by steps ``first`` .. ``index - 1`` went."""
    return dict(
        con.execute(
            f"""
            SELECT s.enrolment_id, max({_SETTLED_AT})
            FROM state.journey_steps s JOIN state.messages m ON m.message_id = s.message_id
            WHERE s.enrolment_id IN (SELECT unnest($ids::BIGINT[]))
              AND s.step >= $first AND s.step < $index
            GROUP BY 1
            """,
            {"ids": ids, "first": first, "index": index},
        ).fetchall()
    )


def wait_until(start: datetime, wait: timedelta, zone: ZoneInfo) -> datetime:
    """When a wait that starts now ends. Whole days (24 hours, 2 weeks...) are calendar days in
    the clinic's time zone, so "wait 1 day" after a 09:00 email is 09:00 the next day across a
    daylight-saving change; other waits are elapsed time."""
    if wait % timedelta(days=1):
        return start + wait
    local = start.astimezone(zone).replace(tzinfo=None) + wait
    return local.replace(tzinfo=zone).astimezone(UTC)


def advance(
    con: duckdb.DuckDBPyConnection, journey: Journey, now: datetime, zone: ZoneInfo
) -> Counter:
    """Run every due step of every active enrolment, a step index at a time (set-wise)."""
    counts: Counter = Counter()
    last = len(journey.steps)
    for _ in range(last + 1):
        # due, and not waiting for a message it queued to go (steps arrive in order)
        due_rows = con.execute(
            """
            SELECT e.next_step, e.enrolment_id, e.patient_id, e.entry_key
            FROM state.journey_enrolments e
            WHERE e.journey = $journey AND e.status = 'active' AND e.next_at <= $now
              AND NOT EXISTS (
                  SELECT 1 FROM state.journey_steps s
                  JOIN state.messages m ON m.message_id = s.message_id
                  WHERE s.enrolment_id = e.enrolment_id
                    AND m.status NOT IN (SELECT unnest($settled::VARCHAR[])))
            ORDER BY e.enrolment_id
            """,
            {"journey": journey.name, "now": now, "settled": list(SETTLED)},
        ).fetchall()
        if not due_rows:
            break
        by_step: dict[int, list[tuple[int, int]]] = defaultdict(list)
        entry_keys = {}
        for index, enrolment_id, patient_id, entry_key in due_rows:
            by_step[index].append((enrolment_id, patient_id))
            entry_keys[enrolment_id] = entry_key
        for index, due in sorted(by_step.items()):
            ids = [e for e, _ in due]
            if index >= last:  # steps were removed from clinic.yaml under this enrolment
                _end(con, ids, "completed", None, now)
                counts["completed"] += len(ids)
                continue
            step = journey.steps[index]
            if isinstance(step, SendStep):
                counts += _send(con, journey, index, step, due, now, entry_keys)
                _move(con, ids, now, next_step=index + 1)
            elif isinstance(step, WaitStep):
                _record_steps(con, index, "wait", [(e, "waited", None, None) for e in ids], now)
                # from when the sends since the previous wait went (else from now)
                first = max((i + 1 for i, s in enumerate(journey.steps[:index])
                             if isinstance(s, WaitStep)), default=0)  # fmt: skip
                went = _sent_since(con, ids, first, index)
                ends = [wait_until(went.get(e, now), step.wait, zone) for e in ids]
                _move(con, ids, now, next_step=index + 1, next_at=ends)
            else:
                counts += _condition(con, journey, index, step, due, now)
        done = con.execute(
            "UPDATE state.journey_enrolments SET status = 'completed', finished_at = $now, "
            "updated_at = $now WHERE journey = $journey AND status = 'active' AND next_step >= $last "
            "RETURNING enrolment_id",
            {"now": now, "journey": journey.name, "last": last},
        ).fetchall()
        counts["completed"] += len(done)
    return counts


def _condition(
    con: duckdb.DuckDBPyConnection,
    journey: Journey,
    index: int,
    step: ConditionStep,
    due: list[tuple[int, int]],
    now: datetime,
) -> Counter:
    segment = journey.entry.enters_segment if step.only_if == "still_in_segment" else step.segment
    members = _members(con, f"segments.{segment}", [p for _, p in due])
    want_in = step.only_if != "not_in_segment"
    passed = [e for e, p in due if (p in members) == want_in]
    failed = [e for e, p in due if (p in members) != want_in]
    detail = f"{'not ' if want_in else ''}in the segment {segment}"
    _record_steps(con, index, "condition", [(e, "passed", None, None) for e in passed], now)
    _record_steps(con, index, "condition", [(e, "failed", detail, None) for e in failed], now)
    if passed:
        _move(con, passed, now, next_step=index + 1)
    if failed:
        _end(con, failed, "exited", f"step {index + 1} condition not met: {detail}", now)
    return Counter(conditions_failed=len(failed))
