"""relay/heartbeat_watch.py: on a restarted Prefect server, a lost-run window opened before the
server listened again ends no sooner than the watch's silence after it (the server-backed proof
is tests/flows/test_server_restart.py). Here: which windows move and where to, and that the
Prefect functions it wraps are still there, called as it expects (a Prefect upgrade that
changed them must fail here, not leave the restart counting against live runs again)."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest

from relay import heartbeat_watch
from relay.alerts import automations, zombie_runs
from relay.env import CRASH_AFTER_SECONDS
from relay.heartbeat_watch import held_end, watches_heartbeats

SINCE = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)  # the restarted server began listening
SILENCE = timedelta(seconds=CRASH_AFTER_SECONDS)


def seconds(n: float) -> datetime:
    return SINCE + timedelta(seconds=n)


@pytest.fixture
def watch():
    """relay's lost-run trigger as the server holds it."""
    from prefect.server.events.schemas.automations import EventTrigger

    return EventTrigger.model_validate(zombie_runs().trigger.model_dump())


def test_a_window_that_ran_out_while_the_server_was_away_ends_a_silence_after_its_return(watch):
    """The run's last heartbeat heard was 80 s before the server listened again: its window had
    run out 20 s before. It now ends a whole silence after the return, as if the run had just
    been heard: a live run's next heartbeat is then in time, a lost one is marked then."""
    assert held_end(watch, seconds(-80), seconds(-20), SINCE) == seconds(CRASH_AFTER_SECONDS)


def test_a_window_still_open_at_the_return_ends_no_sooner_than_that(watch):
    assert held_end(watch, seconds(-30), seconds(30), SINCE) == seconds(CRASH_AFTER_SECONDS)
    later = seconds(CRASH_AFTER_SECONDS + 5)  # opened by a heartbeat stamped ahead (clocks)
    assert held_end(watch, seconds(-1), later, SINCE) == later


def test_a_window_opened_by_a_heartbeat_heard_since_is_prefects_own(watch):
    assert held_end(watch, seconds(5), seconds(5) + SILENCE, SINCE) == seconds(5) + SILENCE


def test_before_the_server_listens_nothing_moves(watch):
    assert held_end(watch, seconds(-80), seconds(-20), None) == seconds(-20)


def test_only_heartbeat_watches_move():
    """The other proactive automation, "no tick completed", keeps Prefect's rule: a clinic
    whose ticks stopped before a restart is named when its window runs out."""
    from prefect.server.events.schemas.automations import EventTrigger

    held = {
        a.name: EventTrigger.model_validate(a.trigger.model_dump())
        for a in automations("00000000-0000-0000-0000-000000000000", 15)
    }
    assert [name for name, t in held.items() if watches_heartbeats(t)] == [zombie_runs().name]
    quiet = held["relay: no tick completed"]
    assert held_end(quiet, seconds(-80), seconds(-20), SINCE) == seconds(-20)


def test_the_prefect_functions_it_wraps_are_still_there_as_it_calls_them():
    from prefect.server.events import triggers
    from prefect.server.events.ordering import get_triggers_causal_ordering

    evaluate = inspect.signature(triggers.evaluate)
    assert list(evaluate.parameters) == ["session", "trigger", "bucket", "now", "triggering_event"]
    assert inspect.isasyncgenfunction(inspect.unwrap(triggers.consumer))
    assert inspect.iscoroutinefunction(triggers.reconcile_automations)
    assert isinstance(triggers.triggers, dict)
    assert callable(triggers.automations_session)
    assert inspect.iscoroutinefunction(get_triggers_causal_ordering().record_event_as_seen)


def test_install_wraps_the_triggers_of_this_process(monkeypatch):
    from prefect.server.events import triggers

    monkeypatch.setattr(triggers, "consumer", triggers.consumer)
    monkeypatch.setattr(triggers, "evaluate", triggers.evaluate)
    before = triggers.consumer, triggers.evaluate
    heartbeat_watch.install()
    assert (triggers.consumer, triggers.evaluate) != before
    assert triggers.evaluate.__name__ == "judged"
