"""The automations `relay alerts create` makes, as the server will evaluate them: a lost run is
marked Crashed after its heartbeats stop, and "no tick completed" is counted per clinic (one
bucket per tick deployment) and names the clinic. The server-side proof of the first is
tests/flows/test_heartbeats.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace

from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from relay.alerts import (
    FAILED_NAME,
    LOST_NAME,
    LOST_STATE,
    QUIET_FLOOR_MINUTES,
    ZOMBIE_NAME,
    automations,
    default_quiet_minutes,
    no_tick_completed,
    notification_block,
)
from relay.env import CRASH_AFTER_SECONDS, DEFAULTS, HEARTBEAT_SECONDS


def by_name(quiet_minutes: int = 30) -> dict:
    return {a.name: a for a in automations(uuid.uuid4(), quiet_minutes)}


def test_a_run_whose_heartbeats_stop_is_marked_crashed():
    zombie = by_name()[ZOMBIE_NAME]
    trigger = zombie.trigger

    assert trigger.posture.value == "Proactive"
    # opened by a heartbeat, by Running for a run lost before its first heartbeat, and by
    # Submitting for a run lost while its worker was starting it
    assert trigger.after == {
        "prefect.flow-run.Submitting",
        "prefect.flow-run.Running",
        "prefect.flow-run.heartbeat",
    }
    # only a heartbeat keeps it quiet: a final state costs a SQLite server a refused write
    assert trigger.expect == {"prefect.flow-run.heartbeat"}
    assert trigger.for_each == {"prefect.resource.id"}  # one bucket per run
    # runs of a deployment only (they hold a clinic's slot; a tick's steps are its tasks)
    assert trigger.match_related.root == {"prefect.resource.role": "deployment"}
    assert trigger.within == timedelta(seconds=CRASH_AFTER_SECONDS)
    # Crashed about a minute after the kill (issue 14; it was 90 s after the last heartbeat),
    # and a live run's next heartbeat may still be a whole interval late: Prefect's least
    # interval, 30 s, twice.
    assert HEARTBEAT_SECONDS == 30 and CRASH_AFTER_SECONDS == 2 * HEARTBEAT_SECONDS
    assert DEFAULTS["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)
    [crash] = zombie.actions  # it tells nobody itself: it also fires for finished runs
    assert crash.type == "change-flow-run-state" and crash.state == StateType.CRASHED


def test_a_run_marked_lost_is_not_told_again_as_failed_or_crashed():
    """Issue 14's operator walk on PostgreSQL: each killed tick was told twice, "tick-north was
    lost and is marked Crashed" and "clinic-tick / tick-north Crashed", once its Scheduled event
    was announced (flows/lost.py). A state's event is named after the state, so the lost-run
    automation's Crashed state carries a name of its own, which "a run failed or crashed" does
    not expect (as a refused tick's Failed is named "Refused": flows/tick.py)."""
    alerts = by_name()
    [crash] = alerts[ZOMBIE_NAME].actions
    assert crash.state == StateType.CRASHED and crash.name == LOST_STATE
    assert f"prefect.flow-run.{crash.name or 'Crashed'}" not in alerts[FAILED_NAME].trigger.expect
    # while a run another way crashed (flows/lost.py, a worker's report) is still told of
    assert "prefect.flow-run.Crashed" in alerts[FAILED_NAME].trigger.expect


def test_a_person_is_told_only_when_a_run_really_was_marked_crashed():
    told = by_name()[LOST_NAME]
    trigger = told.trigger

    assert trigger.posture.value == "Reactive"
    # the lost-run automation's accepted state change, not its refused one on a finished run
    assert trigger.expect == {"prefect.automation.action.executed"}
    assert trigger.match.root == {
        "prefect.resource.id": "prefect.automation.*",
        "prefect.resource.name": ZOMBIE_NAME,
    }
    [action] = told.actions
    assert action.type == "send-notification" and "{{ flow_run.id }}" in action.body


def test_a_lost_run_alert_does_not_say_the_run_died_when_the_server_could_not_hear_it():
    """A Prefect server down or restarting for more than about 30 s hears no heartbeat from the
    ticks running through it, and on its return the lost-run automation marks each Crashed
    (Lost) and tells of it, though its process lives on (docs/scaling.md, "A Prefect server
    restart"). The alert and the state said "its process or machine died" and sent the operator
    to the machine and its worker, with nothing about the server."""
    alerts = by_name()
    [told] = alerts[LOST_NAME].actions
    [crash] = alerts[ZOMBIE_NAME].actions

    for text in (told.body, crash.message):
        assert "Prefect server" in text and "restart" in text
    assert "its Logs tab" in told.body  # how to tell a live run from a dead one


def test_no_tick_completed_is_counted_per_clinic_and_names_it():
    quiet = by_name(45)["relay: no tick completed"]
    trigger = quiet.trigger

    # the tick's own event (flows/tick.py), one bucket per clinic; not the run's Completed
    # state, which the server's automations may see only 15 minutes late
    assert trigger.match.root == {"prefect.resource.id": "relay.clinic.*"}
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.after == trigger.expect == {"relay.tick.completed"}
    assert trigger.within == timedelta(minutes=45)
    [action] = quiet.actions
    # A proactive firing acts on the bucket's last event: the clinic's last completed tick.
    assert "{{ event.payload.clinic }}" in action.subject
    assert "45 minutes" in action.subject
    notify = {"block_document_id": uuid.uuid4()}
    assert (
        "completed in 30 s" in no_tick_completed(timedelta(seconds=30), notify).actions[0].subject
    )


def test_the_quiet_window_defaults_to_three_ticks_of_the_slowest_clinic():
    def deployment(*minutes):
        schedules = [SimpleNamespace(schedule=IntervalSchedule(interval=timedelta(minutes=m)))
                     for m in minutes]  # fmt: skip
        return SimpleNamespace(schedules=schedules)

    class Client:
        def __init__(self, *deployments):
            self.deployments = list(deployments)

        def read_deployments(self, flow_filter):
            assert flow_filter.name.any_ == ["clinic-tick"]
            return self.deployments

    assert default_quiet_minutes(Client(deployment(5), deployment(10))) == 30
    # a nightly cron schedule is not a tick interval; fast ticks still get the floor
    cron = SimpleNamespace(schedule=CronSchedule(cron="0 3 * * *"))
    fast = SimpleNamespace(schedules=[*deployment(1).schedules, cron])
    assert default_quiet_minutes(Client(fast)) == QUIET_FLOOR_MINUTES == 15
    assert default_quiet_minutes(Client()) == QUIET_FLOOR_MINUTES


def test_every_clinic_event_alert_and_the_run_alerts_are_there():
    names = set(by_name())
    assert {"relay: a run failed or crashed", "relay: sending held: stale or failed sync",
            "relay: clinic.yaml names drifted", "relay: no tick completed",
            "relay: sending stopped: a provider refused its settings",
            ZOMBIE_NAME, LOST_NAME} <= names  # fmt: skip
    # and no more: each automation watching run events is bucket writes on the server (the
    # lost-run watch is one automation for runs silent from their start and after a heartbeat)
    assert len(names) == 8


def test_the_webhook_address_is_a_secret_of_the_block():
    """A Slack or Teams incoming webhook's address is its credential: it was the block's URL
    field, shown in clear on the UI's block page, by `prefect block inspect` and by the API
    (issue 14's operator walk). It is now one of the block's secret values, which the URL field
    names; the request still goes to it."""
    hook = "https://hooks.slack.com/services/T0000/B0000/s3cr3tt0ken"
    block = notification_block(hook)

    shown = block.model_dump_json()  # what the API and UI show without include_secrets
    assert "s3cr3tt0ken" not in shown, shown
    sent = block._build_request_args(body="a body", subject="a subject")
    assert sent["url"] == hook
    assert sent["json"] == {"subject": "a subject", "body": "a body"}


def _alerts_create(monkeypatch, *args: str):
    """`relay alerts create ARGS` with a server named but never reached: nothing is saved."""
    from typer.testing import CliRunner

    import relay.alerts
    from relay.cli import app

    def create_alerts(*_args, **_kwargs):
        raise AssertionError("saved a block and automations the command should have refused")

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(relay.alerts, "create_alerts", create_alerts)
    return CliRunner().invoke(app, ["alerts", "create", *args])


def test_a_webhook_address_no_request_can_reach_is_refused_before_anything_is_saved(monkeypatch):
    """`--webhook-url hooks.slack.com/services/...` (the scheme left off) said "created" eight
    times, and every notification then failed on the server, where nobody looks: no alert ever
    came."""
    for wrong in ("hooks.slack.com/services/T0/B0/X", "ftp://hooks.example/x", "https://",
                  "https://hooks.slack.com/services/T0 B0"):  # fmt: skip
        result = _alerts_create(monkeypatch, "--webhook-url", wrong)
        assert result.exit_code == 2, (wrong, result.output)
        assert "--webhook-url" in result.output and "http" in result.output, result.output
        assert "Traceback" not in result.output


def test_a_quiet_window_prefect_cannot_watch_is_refused_in_words(monkeypatch):
    """`--quiet-minutes -5` (or 0.1) ended in pydantic's ValidationError traceback from Prefect
    ("`within` for Proactive triggers must be greater than or equal to 10 seconds"), after the
    notification block had already been saved."""
    for wrong in ("-5", "0", "0.1"):
        result = _alerts_create(
            monkeypatch, "--webhook-url", "https://hooks.example/x", "--quiet-minutes", wrong
        )
        assert result.exit_code == 2, (wrong, result.output)
        assert "--quiet-minutes" in result.output and "Traceback" not in result.output
