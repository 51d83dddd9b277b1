"""The re-check before a marketing message goes: what journeys and campaigns ask alike.

Dispatch asks about one row at a time; a journey or campaign answers for all its planned
messages in one query the first time one of them is asked about (a fresh preparer per dispatch
run, so the answers are as of that run). The query brings, per planned message: the patient's
address on the channel's marketing list now (none: off the list), whether the patient is in a
segment now, the enrolment a journey step was queued for, and the names templates greet by.
Each source then applies its own rules: :class:`journeys.Preparer` (enrolment ended, left the
segment) and :class:`campaigns.Preparer` (cancelled, left the segment since the freeze).
Dispatch then checks suppressions and renders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

from tasks.config import ClinicConfig
from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.ledger import LedgerRow
from tasks.messages.prepare import Ready, Skip, Wait, clinic_details
from tasks.messages.templates import build_context

# Every channel's subscribed addresses, one row per list entry (tasks/messages/channels.py).
_SUBSCRIBED = "\n    UNION ALL\n    ".join(
    f"SELECT '{channel}' AS channel, patient_id, {marketing_list.address_column} AS address "
    f"FROM {marketing_list.table} WHERE status = 'subscribed'"
    for channel, marketing_list in MARKETING_LISTS.items()
)

# A journey step's message is found from the step that queued it (state.journey_steps), not
# read out of its send key (which names the entry, not the enrolment: tasks/marketing/steps.py).
_PLANNED = f"""
WITH subscribed AS (
    {_SUBSCRIBED}
)
SELECT m.message_id, m.channel, e.status, e.exit_reason,
       seg.patient_id IS NOT NULL AS in_segment,
       sub.address,
       p.first_name, p.preferred_first_name, p.last_name
FROM state.messages m
LEFT JOIN state.journey_steps s ON s.message_id = m.message_id
LEFT JOIN state.journey_enrolments e ON e.enrolment_id = s.enrolment_id
LEFT JOIN (SELECT DISTINCT patient_id FROM state.audience_members WHERE audience = $audience) seg
    ON seg.patient_id = m.patient_id
LEFT JOIN subscribed sub ON sub.channel = m.channel AND sub.patient_id = m.patient_id
LEFT JOIN marts.patients p ON p.patient_id = m.patient_id
WHERE m.source_kind = $kind AND m.source_name = $name AND m.status = 'planned'
"""


@dataclass(frozen=True)
class Planned:
    """One planned marketing message as the re-check sees it now."""

    message_id: int
    channel: str
    enrolment_status: str | None  # a journey step's enrolment; None for a campaign
    exit_reason: str | None
    in_segment: bool
    # personal data: kept out of repr so a logged row never shows it
    address: str | None = field(repr=False)  # None: not on the channel's marketing list now
    first_name: str | None = field(repr=False)
    preferred_first_name: str | None = field(repr=False)
    last_name: str | None = field(repr=False)


class SourcePreparer:
    """Dispatch's ``prepare`` for the rows of one source kind (``kind``): each source's planned
    messages are decided together by :meth:`decide`, the first time one of them is asked about."""

    kind: str

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: ClinicConfig):
        self.con = con
        self.clinic = clinic_details(cfg)
        self._decisions: dict[str, dict[int, Ready | Skip]] = {}

    def __call__(self, row: LedgerRow) -> Ready | Skip:
        name = row.source_name
        if row.message_id not in self._decisions.get(name, {}):
            self._decisions[name] = self.decide(name)
        return self._decisions[name].get(
            row.message_id, Skip("no longer planned when it came to be sent")
        )

    def decide(self, name: str) -> dict[int, Ready | Skip]:
        raise NotImplementedError

    def planned(self, name: str, segment: str | None) -> list[Planned]:
        """The source's planned messages, with the patient's membership of ``segment`` now."""
        params = {
            "kind": self.kind,
            "name": name,
            "audience": f"segments.{segment}" if segment else None,
        }
        return [Planned(*r) for r in self.con.execute(_PLANNED, params).fetchall()]

    def to_list_address(self, message: Planned) -> Ready | Skip:
        """Send to the address on the channel's marketing list, if the patient is still on it.
        Off it (or unsubscribed) can change before the message's grace window ends (they
        re-subscribe): it waits, judged again at send time, and is skipped with the reason after
        (tasks/messages/waiting.py; no grace window: skipped at once)."""
        if message.address is None:
            return Wait(f"not on the {message.channel} marketing list")
        return Ready(
            to=message.address,
            context=marketing_context(
                self.clinic,
                message.first_name,
                message.preferred_first_name,
                message.last_name,
            ),
        )


def marketing_context(
    clinic: Mapping[str, str],
    first_name: str | None,
    preferred_first_name: str | None,
    last_name: str | None,
    *,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """What a journey or campaign template sees for this patient: sent, or previewed by an
    operator (``relay campaign preview``). "there" when Cliniko has no first name."""
    return build_context(
        clinic=clinic,
        first_name=first_name or "there",
        preferred_first_name=preferred_first_name,
        last_name=last_name,
        unsubscribe_url=unsubscribe_url,
    )
