"""The re-check before sending: what a planner answers when dispatch asks about one of its rows.

Just before a due row is claimed, dispatch calls ``prepare(row)``. The answer is :class:`Ready`
(the address and the template context, looked up now), :class:`Skip` (the occasion is gone, or
it may not go for a reason that will not change) or :class:`Wait` (a reason that can change
before its grace window ends stops it now: tasks/messages/waiting.py). Each planner answers for its own rows, and
:func:`by_source_kind` is the one router that hands a row to its planner:

    prepare = by_source_kind({
        "trigger": triggers.Preparer(con, cfg, clock=clock),   # tasks/triggers/
        "journey": journeys.Preparer(con, cfg),                # tasks/marketing/journeys.py
        "campaign": campaigns.Preparer(con, cfg),              # tasks/marketing/campaigns.py
    })

Planners import this module; it imports none of them (the caller, e.g. flows/dispatch.py, wires
them together).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.config import ClinicConfig
from tasks.messages.ledger import LedgerRow


@dataclass(frozen=True)
class Ready:
    """Send it: to this address, rendering the row's template with this context."""

    to: str = field(repr=False)
    context: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Skip:
    """Do not send. ``cancel`` when the occasion is gone (appointment cancelled), else skipped."""

    reason: str
    cancel: bool = False


@dataclass(frozen=True)
class Wait(Skip):
    """Not now, for a reason that can change (no address, archived, off the marketing list...):
    the row waits with it while its grace window lasts and is judged again, and is skipped with
    it after (``waiting.hold``). A Skip, so a caller that knows no waiting still never sends it."""


Prepare = Callable[[LedgerRow], Ready | Skip]


def by_source_kind(preparers: Mapping[str, Prepare]) -> Prepare:
    """The ``prepare`` dispatch calls: each row goes to the preparer of its ``source_kind``."""

    def prepare(row: LedgerRow) -> Ready | Skip:
        preparer = preparers.get(row.source_kind)
        if preparer is None:
            return Skip(f"no planner prepares {row.source_kind} messages here")
        return preparer(row)

    return prepare


def clinic_details(cfg: ClinicConfig) -> dict[str, str]:
    """The ``clinic`` variables templates see, from the config's ``providers.sender``."""
    from tasks.messages.templates import clinic_variables

    return {k: str(v) for k, v in clinic_variables(cfg.providers.sender, cfg.name).items()}
