"""A restarted Prefect server counts a run's silence from when it listens again, not from the
run's last heartbeat it heard before it went down.

Prefect watches heartbeats with a proactive trigger (the lost-run automation of relay/alerts.py,
Prefect's "detect zombie flows" recipe): one window (``automation_bucket``) per run, opened by a
heartbeat and ending ``within`` seconds later unless the next one comes. The windows live in the
server's database, so they outlast a restart, but the heartbeats sent while the server was down
reach it late or never, and on its return every window that ran out meanwhile fired at once
(its first evaluation, as of its start), or at the run's next heartbeat (an event after the
window's end fires it too): each run that lived through a restart of over ``within`` less a
heartbeat interval was marked Crashed, its concurrency slot given back (docs/scaling.md,
"A Prefect server restart"). Reproduced with `relay prefect-server`, `relay worker` and two
clinics' ticks: both marked Lost within a second of the server's return, both heartbeating on.

So a window opened before this server's triggers began listening (``since``) ends no sooner
than ``within`` after it: a live run has the whole silence to be heard again, as after any
heartbeat (its events client resends what the server missed, then heartbeats on), and its first
heartbeat heard opens a window of its own; a run that is really lost (killed, its machine
gone, before or during the restart) is marked ``within`` after the server's return, plus
Prefect's evaluation granularity (5 s). Only proactive triggers expecting flow-run heartbeats;
other automations are Prefect's as they are. The windows already open are moved once, as the
triggers start, before Prefect's sweep of expired windows could delete them; any window opened
later from an event older than ``since`` (a heartbeat resent late) is moved as it is judged.

Installed by ``relay.prefect_server.main`` (`relay prefect-server`, and the server relay starts
for `relay serve`, the tests and the benchmarks): it wraps two functions of
``prefect.server.events.triggers`` (``consumer``, ``evaluate``) in the server's process. A server
run with ``--workers`` over 1, or its services by ``prefect server services start``, is not
covered. ``tests/flows/test_server_restart.py`` shows it on a real server;
``tests/unit/relay/test_heartbeat_watch.py`` checks the Prefect functions it wraps are still
there, called as it expects.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

HEARTBEAT = "prefect.flow-run.heartbeat"

# When this process's triggers began listening (None until they do).
_since: datetime | None = None


def watches_heartbeats(trigger: Any) -> bool:
    """A proactive trigger that expects flow-run heartbeats: a lost-run watch."""
    from prefect.server.events.schemas.automations import Posture

    return trigger.posture == Posture.Proactive and HEARTBEAT in trigger.expect


def held_end(trigger: Any, start: datetime, end: datetime, since: datetime | None) -> datetime:
    """The end of a lost-run window opened at ``start``: ``end``, or, for a window opened
    before the server listened (``since``), no sooner than the trigger's silence after it."""
    if since is None or start >= since or not watches_heartbeats(trigger):
        return end
    return max(end, since + trigger.within)


def install() -> None:
    """Wrap the triggers' start and their judging of a window (see the module's docstring)."""
    from prefect.server.events import triggers

    consumer, evaluate = triggers.consumer, triggers.evaluate

    @asynccontextmanager
    async def listening(*args, **kwargs):
        global _since
        from prefect.types._datetime import now

        _since = now("UTC")
        await triggers.reconcile_automations(force=True)  # the triggers, as consumer loads them
        await hold_open_windows(_since)
        async with consumer(*args, **kwargs) as handler:
            yield handler

    async def judged(session, trigger, bucket, now, triggering_event):
        await _hold(session, trigger, bucket)
        after = await evaluate(session, trigger, bucket, now, triggering_event)
        if after is not None:
            await _hold(session, trigger, after)
        return after

    triggers.consumer = listening
    triggers.evaluate = judged


async def _hold(session, trigger, bucket) -> None:
    end = held_end(trigger, bucket.start, bucket.end, _since)
    if end != bucket.end:
        bucket.end = end
        await session.flush()


async def hold_open_windows(since: datetime) -> None:
    """Every lost-run window the server kept from before ``since``: its end moved to no sooner
    than its trigger's silence after ``since``. And the last event of every window kept (of
    any automation) recorded as seen again: the server processed it before the restart, but
    remembers what it processed in memory only (``PREFECT_SERVER_EVENTS_CAUSAL_ORDERING``'s
    default), and a firing's ``prefect.automation.action.triggered`` event "follows" the
    window's last event, so each firing of a kept window (the lost-run alert of a run killed
    while the server was away) was held 15 minutes (Prefect's ``PRECEDING_EVENT_LOOKBACK``)
    waiting for an event it would never see again."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.events import triggers
    from prefect.server.events.ordering import get_triggers_causal_ordering

    db = provide_database_interface()
    async with triggers.automations_session(begin_transaction=True) as session:
        for trigger in list(triggers.triggers.values()):
            if not watches_heartbeats(trigger):
                continue
            end = since + trigger.within
            await session.execute(
                sa.update(db.AutomationBucket)
                .where(
                    db.AutomationBucket.trigger_id == trigger.id,
                    db.AutomationBucket.start < since,
                    db.AutomationBucket.end < end,
                )
                .values(end=end)
            )
        kept = await session.execute(
            sa.select(db.AutomationBucket.last_event).where(
                db.AutomationBucket.last_event.is_not(None)
            )
        )
        events = [event for event in kept.scalars() if event is not None]
        await session.commit()
    ordering = get_triggers_causal_ordering()
    for event in events:
        await ordering.record_event_as_seen(event)
