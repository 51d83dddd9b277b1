"""Sending what is due, as the tick's dispatch step and the fast lane (tasks/lane.py) both do it:
first the unsubscribe clicks waiting in the clinic's inbox are recorded (the endpoint took them
while a tick or the lane held the database; an unsubscribe stops marketing at once, not after
the feedback step that follows dispatch), then each row is re-checked by its own planner
(trigger, journey, campaign), held sources' rows left waiting first (tasks.tick.hold_rows), then
the marketing gate (frequency cap, quiet hours), then ``tasks.messages.dispatch``. One home, so
the lane can never send by other rules than the tick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import duckdb

from tasks import feedback, tick
from tasks.config import ClinicConfig
from tasks.marketing import campaigns, journeys
from tasks.messages.dispatch import DispatchResult, dispatch_for_clinic
from tasks.messages.gate import Gate
from tasks.messages.prepare import by_source_kind
from tasks.triggers.prepare import Preparer


def send_due(
    con: duckdb.DuckDBPyConnection,
    config: ClinicConfig,
    providers: Mapping,
    clock: Callable[[], datetime],
    held: dict[tuple[str, str], str],
) -> DispatchResult:
    """Send every due message of the clinic (``held``: tasks.tick.held_sources)."""
    feedback.drain_unsubscribes(con, feedback.inbox_path(config.database_path), clock())
    prepare = by_source_kind(
        {
            "trigger": Preparer(con, config, clock=clock),
            "journey": journeys.Preparer(con, config),
            "campaign": campaigns.Preparer(con, config),
        }
    )
    # frequency cap and quiet hours for marketing; the cap's slots only for rows that will go
    marketing = Gate.from_config(config, recheck=prepare)

    def gate(con, rows, now):  # held sources first: their rows wait for a good build
        return marketing(con, tick.hold_rows(con, rows, now, held), now)

    return dispatch_for_clinic(con, config, prepare, providers=providers, clock=clock, gate=gate)
