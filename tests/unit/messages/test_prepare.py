"""The one router of dispatch's re-check: each row is answered by the planner of its source kind."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready, Skip, by_source_kind
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def planned_rows(kinds):
    con = memory_db()
    messages = [
        PlannedMessage(
            send_key=make_send_key(kind, "x", patient_id, "once"),
            source_kind=kind,
            source_name="x",
            patient_id=patient_id,
            channel="email",
            purpose="marketing",
            template="welcome",
            due_at=NOW,
        )  # fmt: skip
        for patient_id, kind in enumerate(kinds, start=1)
    ]
    ledger.insert_planned(con, messages, NOW)
    rows = ledger.in_status(con, "planned")
    con.close()
    return rows


def test_each_row_is_answered_by_the_preparer_of_its_source_kind():
    asked: list[tuple[str, int]] = []

    def preparer(kind):
        def prepare(row):
            asked.append((kind, row.patient_id))
            return Ready(to=f"p{row.patient_id}@example.com", context={})

        return prepare

    prepare = by_source_kind({k: preparer(k) for k in ("trigger", "journey", "campaign")})
    decisions = [prepare(row) for row in planned_rows(["campaign", "trigger", "journey"])]
    assert asked == [("campaign", 1), ("trigger", 2), ("journey", 3)]
    assert [d.to for d in decisions] == ["p1@example.com", "p2@example.com", "p3@example.com"]


def test_a_row_no_planner_prepares_is_skipped_not_sent():
    prepare = by_source_kind({"journey": lambda row: Ready(to="a@example.com", context={})})
    (row,) = planned_rows(["campaign"])
    assert prepare(row) == Skip("no planner prepares campaign messages here")
