"""Just before sending: a due trigger message re-checked, with its address and template context.

:class:`Preparer` is dispatch's ``prepare`` for trigger messages; :func:`template_context` is also
what ``relay render`` shows (:func:`tasks.triggers.preview.context_for_patient`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import duckdb

from tasks.config import ClinicConfig
from tasks.messages.ledger import LedgerRow
from tasks.messages.prepare import Ready, Skip, Wait, clinic_details
from tasks.messages.templates import build_context
from tasks.triggers.definition import Trigger
from tasks.triggers.plan import Decision, decide, planned_by_trigger
from tasks.triggers.reopen import NOT_SENT_EARLY, switched_off


class Preparer:
    """Dispatch's ``prepare``: re-check a due message and give its address and template context.

    Decisions are computed per trigger, for all its planned messages at once, the first time one of
    them is asked about (one query per trigger, not one per message). Dispatch runs after a
    re-check in the same database session, so a message is rarely due here under a stale time:
    only one a dead run had claimed, which reconciliation planned again after the re-check
    (it then waits for the next re-check to move it).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        config: ClinicConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.con = con
        self.triggers = {t.name: t for t in config.triggers if t.enabled}
        self.configured = {t.name for t in config.triggers}
        self.clinic = clinic_details(config)
        self.clock = clock
        self._decisions: dict[int, Decision] = {}
        self._loaded: set[str] = set()

    def __call__(self, row: LedgerRow) -> Ready | Skip | Wait:
        trigger = self.triggers.get(row.source_name)
        if trigger is None:
            return Skip(switched_off(row.source_name in self.configured), cancel=True)
        if row.message_id not in self._decisions and trigger.name not in self._loaded:
            self._load(trigger)
        decision = self._decisions.get(row.message_id)
        if decision is None:
            return Skip("not planned by this trigger any more", cancel=True)
        now = self.clock()
        if decision.action == "cancel":
            return Skip(decision.reason or "occasion gone", cancel=True)
        if decision.action == "skip":
            return Skip(decision.reason or "not sendable")
        if decision.action == "wait":  # a reason that can change: waits, or is final past grace
            return Wait(decision.reason or "not sendable now")
        c = decision.candidate
        assert c is not None  # past cancel, skip and wait: a keep or move, which has its candidate
        if decision.due_at is not None and decision.due_at > now:
            # the appointment moved later since the row was last re-timed (a run that died
            # after its claim, planned again at once by reconciliation): it waits for the next
            # planning re-check to move it; a skip would be final for a row once claimed
            return Wait(NOT_SENT_EARLY)
        if c["due_problem"]:
            return Skip(c["due_problem"])
        return Ready(to=c["address"], context=template_context(self.clinic, c, now))

    def _load(self, trigger: Trigger) -> None:
        self._loaded.add(trigger.name)
        planned = planned_by_trigger(self.con).get(trigger.name, [])
        for message_id, (_, decision) in decide(self.con, trigger, planned, self.clock()).items():
            self._decisions[message_id] = decision


def template_context(clinic: dict[str, str], c: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Template variables for one candidate row (patient, appointment, clinic), for a message
    going at ``now``."""
    return build_context(
        clinic=clinic,
        first_name=c["first_name"] or c["preferred_first_name"] or "",
        preferred_first_name=c["preferred_first_name"],
        last_name=c["last_name"],
        appointment_starts_at=c["starts_at"],
        time_zone=c["business_time_zone"] if c["starts_at"] is not None else None,
        appointment_type=c["appointment_type_name"],
        practitioner=c["practitioner_name"],
        business=c["business_name"],
        now=now,
    )
