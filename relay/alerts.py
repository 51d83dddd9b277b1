"""``relay alerts create``: Prefect automations that tell a person when the pipeline needs them,
and the one that marks a lost machine's runs Crashed.

Six automations notify through one CustomWebhookNotificationBlock (a Slack or Teams incoming
webhook, a Postmark or ntfy endpoint, anything that takes a JSON POST):

- a flow run failed or crashed (any clinic, any step: its message names the step and why);
- the circuit breaker held planning and sending in a tick that did not fail (data too old though
  the sync completed: the ``relay.sync.stale`` event of flows/tick.py; a failed sync or build is
  told once, by the run's failure, which says what was held);
- a tick warned about clinic.yaml's names (``relay.clinic.warning``: a trigger held because a
  name matches nothing in Cliniko, or a name renamed in Cliniko since it was recorded);
- a dispatch run stopped a channel because Postmark or Twilio refused the account's settings
  (``relay.dispatch.stopped``: credentials, sender, stream; flows/dispatch.py): what is due
  waits, planned, until a person fixes them, and no run gets past it alone;
- a tick refused to run off the clinic's home (``relay.clinic.misrouted``: tasks/home.py; a
  machine that is not the home, a clinic being moved, a database that is not its current copy);
- no tick of a clinic completed for a while, per clinic (``no_tick_completed``), naming the
  clinic: its machine or worker is down, or its schedule paused, which no run can report by
  itself.

A seventh acts: a deployment's run that went Submitting or Running, or sent a heartbeat, and then no
heartbeat for ``crash_after`` seconds without finishing (its process or machine died, or the
worker that took it up did before starting it) is set Crashed (Prefect's documented "detect
zombie flows" automation, also opened by Submitting and Running for a run lost before its first
heartbeat). Crashed gives the deployment's concurrency slot back at once (the server's
ReleaseFlowConcurrencySlots rule), so the clinic's next tick runs. An eighth tells a person each
time it did (``lost_run_crashed``). Runs heartbeat every ``HEARTBEAT_SECONDS``
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: set for deployed runs by ``relay deploy``, for served and
CLI runs by relay/env.py); Prefect's own default, 180 s, is longer than ``crash_after``.

Creating them again replaces them (matched by name), so the command is safe to repeat.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState

from relay.env import CRASH_AFTER_SECONDS

PREFIX = "relay: "
FAILED_NAME = PREFIX + "a run failed or crashed"
ZOMBIE_NAME = PREFIX + "a run stopped sending heartbeats"
QUIET_NAME = PREFIX + "no tick completed"
LOST_NAME = PREFIX + "a lost run was marked Crashed"
# The name of the Crashed state the lost-run automation sets. A state's event is named after the
# state (prefect.flow-run.<name>), so a run marked lost is not "a run failed or crashed" as well:
# the person hears of it once, from LOST_NAME (as a refused tick, Failed named "Refused", is told
# once: flows/tick.py).
LOST_STATE = "Lost"
QUIET_FLOOR_MINUTES = 15


def automations(
    block_id, quiet_minutes: float, crash_after: int = CRASH_AFTER_SECONDS
) -> list[Automation]:
    notify = dict(block_document_id=block_id)
    return [
        Automation(
            name=FAILED_NAME,
            description="Any clinic-relay flow run (tick or step) ended Failed or Crashed.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    **notify,
                    subject="clinic-relay: {{ flow.name }} / {{ flow_run.name }} "
                    "{{ flow_run.state.name }}",
                    body="{{ flow.name }} / {{ flow_run.name }} (run {{ flow_run.id }}) ended "
                    "{{ flow_run.state.name }}: {{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
                )
            ],
        ),
        _on_clinic_event(
            notify,
            name="sending held: stale or failed sync",  # the name relay alerts create replaces
            description="A tick held planning and sending (circuit breaker): the data is older "
            "than the clinic's sync.stale_after_minutes though the sync completed. (A failed "
            "sync is told by 'a run failed or crashed'.)",
            event="relay.sync.stale",
            subject="clinic-relay: sending held for {{ event.payload.clinic }}",
            body="Planning and sending are held for {{ event.payload.clinic }}: "
            "{{ event.payload.reason }}.",
        ),
        _on_clinic_event(
            notify,
            name="clinic.yaml names drifted",
            description="A tick warned about names in clinic.yaml: a trigger held because a "
            "name matches nothing in Cliniko, or a name renamed in Cliniko since it was recorded.",
            event="relay.clinic.warning",
            subject="clinic-relay: check clinic.yaml of {{ event.payload.clinic }}",
            body="{{ event.payload.clinic }}: {{ event.payload.warnings }}",
        ),
        _on_clinic_event(
            notify,
            name="sending stopped: a provider refused its settings",
            description="A dispatch run sent nothing on a channel: Postmark or Twilio refused "
            "the account's settings (credentials, sender, stream). What is due waits, planned, "
            "until a person fixes them.",
            event="relay.dispatch.stopped",
            subject="clinic-relay: sending stopped for {{ event.payload.clinic }}",
            body="{{ event.payload.clinic }}: {{ event.payload.why }}",
        ),
        _on_clinic_event(
            notify,
            name="tick refused: not the clinic's home",
            description="A tick planned and sent nothing: it ran on a machine that is not the "
            "clinic's home, or against a database that is not the clinic's current copy.",
            event="relay.clinic.misrouted",
            subject="clinic-relay: {{ event.payload.clinic }} ran off its home",
            body="{{ event.payload.reason }}",
        ),
        no_tick_completed(timedelta(minutes=quiet_minutes), notify),
        zombie_runs(crash_after),
        lost_run_crashed(notify, crash_after),
    ]


def no_tick_completed(quiet: timedelta, notify: dict) -> Automation:
    """Per clinic: no tick of one clinic completed for ``quiet`` since its last completed tick.

    One proactive automation with a bucket per clinic (``for_each`` on the resource of the
    ``relay.tick.completed`` event a tick emits when it did all its work, ``relay.clinic.<name>``:
    flows/tick.py), opened by each: a clinic that stops is named, the others stay quiet. Not the
    run's ``prefect.flow-run.Completed``: a run that started within 5 minutes of being scheduled
    (the first ticks after `relay deploy`, a resume or a move) has state events that "follow" a
    Scheduled event the scheduler never emits, and Prefect's triggers hold them for 15 minutes
    (PRECEDING_EVENT_LOOKBACK, prefect/server/events/ordering) before evaluating them: the
    two-machine run on PostgreSQL kept no bucket at all for its clinics. A proactive firing has
    no event of its own: Prefect (3.8.8, ``prefect.server.events.triggers.evaluate``) hands the
    action the bucket's last event, the clinic's last ``relay.tick.completed``, whose payload
    names the clinic and whose related resources (added by Prefect from the run) are that tick's
    run and deployment (tests/flows/test_quiet_alert.py checks the clinic is named). It fires
    once per silence; the clinic's next completed tick watches it again."""
    window = _span(quiet)
    clinic = "{{ event.payload.clinic }}"
    return Automation(
        name=QUIET_NAME,
        description=f"A clinic's ticks stopped completing for {window}: is its machine's worker "
        "running, and its schedule?",
        trigger=EventTrigger(
            match={"prefect.resource.id": "relay.clinic.*"},
            after={"relay.tick.completed"},
            expect={"relay.tick.completed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=quiet,
        ),
        actions=[
            SendNotification(
                **notify,
                subject=f"clinic-relay: no tick of {clinic} completed in {window}",
                body=f"No tick of clinic {clinic} ({{{{ deployment.name }}}}) has completed in "
                f"the last {window}; the last one was {{{{ flow_run.name }}}} "
                "(run {{ flow_run.id }}). Check the worker on its machine (its work queue: "
                "{{ deployment.work_queue_name }}) and the deployment's schedules.",
            )
        ],
    )


def _span(span: timedelta) -> str:
    """A window as people say it: "15 minutes", "1 minute", "45 s"."""
    seconds = span.total_seconds()
    if seconds % 60:
        return f"{seconds:g} s"
    minutes = seconds / 60
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")


def _on_clinic_event(
    notify: dict, *, name: str, description: str, event: str, subject: str, body: str
) -> Automation:
    """A notification each time a tick emits ``event`` about a clinic (relay.clinic.<name>)."""
    return Automation(
        name=PREFIX + name,
        description=description,
        trigger=EventTrigger(
            match={"prefect.resource.id": "relay.clinic.*"},
            expect={event},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(**notify, subject=subject, body=body)],
    )


def zombie_runs(crash_after: int = CRASH_AFTER_SECONDS) -> Automation:
    """Prefect's "detect zombie flows" automation, for runs of a deployment: a run that went
    Submitting or Running, or sent a heartbeat, and then no heartbeat for ``crash_after`` seconds
    without a final state (its process or machine died) is set Crashed, which releases its
    deployment's slot.

    Opened by Submitting and Running as well as by a heartbeat. Running: the two-machine run
    killed a tick 3 s after it went Running, before its first heartbeat reached the server.
    Submitting (a Pending state: the slot is the run's from Pending on): the worker says so just
    before it starts the run's process, and a worker lost then left the run Submitting, holding
    the slot until its lease ran out (up to 5 minutes), with nothing watching it. Not Pending
    itself: a run is Pending only while its worker gets ready to start it (under a second), and an
    engine started by hand (tests/flows/test_heartbeats.py) has no Submitting to wait through. The
    run's first heartbeat, sent as its engine starts it (just after Running), closes that window
    and opens the heartbeats' own; Running leaves an open window as it is (Prefect's
    ensure_bucket), so a run has ``crash_after`` seconds from Submitting to its first heartbeat
    (pickup to start took 3-4 s warm, 18-23 s cold, at load 13-18). Were it slower, the run would
    be Crashed before it started; its engine then runs it from Crashed, but its slot's lease is
    gone, and Prefect's lease renewal, started before the flow's body, stops it within seconds
    ("Terminating execution to prevent over-allocation", prefect/concurrency/_leases.py): no
    second tick of the clinic runs beside it for long, and the clinic's database lock
    (tasks.warehouse.hold) keeps the two apart meanwhile. A run
    whose Submitting follows a Scheduled state made less than 5 minutes before (the first ticks
    after a deploy, a resume or a move) would be seen 15 minutes late (docs/scaling.md, Alerts):
    each tick sends the Scheduled event the scheduler did not, for itself and its deployment's
    next runs (flows/lost.py, announce_scheduled), and the clinic's next tick and ``relay clinic
    move`` catch a run lost before that. One
    automation for all three, not two: each event of every run is then one bucket write on the
    server, not two, and on a SQLite server every bucket write is a write transaction of the
    triggers service (docs/scaling.md, "Alerts": two such automations held the server's write
    lock for a minute at a time). Only runs of a deployment (their events name it): they hold
    the clinic's slot; a tick's steps are tasks of its run.

    It fires for every run that finished too, ``crash_after`` seconds after its last heartbeat
    (its final state does not close the watch: see ``expect``), as Prefect's own recipe does for
    a run whose last heartbeat is processed after its final state (PrefectHQ/prefect#18653,
    #20887). The state change is then refused (a finished run stays as it ended), so it tells
    nobody itself: a notification sent alongside would go out for finished runs. A person is
    told by ``lost_run_crashed`` instead, only when a run really was marked Crashed."""
    return Automation(
        name=ZOMBIE_NAME,
        description=f"A deployment's run sent no heartbeat for {crash_after} s since its worker "
        "started it or since its last heartbeat, and did not finish: its process or machine died. It is "
        "marked Crashed, giving its clinic's tick slot back.",
        trigger=EventTrigger(
            after={
                "prefect.flow-run.Submitting",
                "prefect.flow-run.Running",
                "prefect.flow-run.heartbeat",
            },
            # Heartbeats only, not the final states Prefect's recipe also expects: on a SQLite
            # server each final state was a read and then a write of the run's bucket in one
            # transaction, refused at once ("database is locked") whenever another write came
            # in between, and retried; those errors' leftovers are what stalled the server
            # (docs/scaling.md, Alerts). A finished run's watch runs out instead, and the
            # change is refused as for a late heartbeat (below).
            expect={"prefect.flow-run.heartbeat"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related={"prefect.resource.role": "deployment"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name=LOST_STATE,
                message=f"No heartbeat for {crash_after} s: its process or machine was lost, "
                "or the Prefect server could not hear it (down or restarting; the run then "
                "lives on) (marked by the relay automation; the next tick catches up).",
            )
        ],
    )


def lost_run_crashed(notify: dict, crash_after: int = CRASH_AFTER_SECONDS) -> Automation:
    """A person is told when ``zombie_runs`` did mark a run Crashed: its state change was
    accepted (Prefect's ``prefect.automation.action.executed`` event, whose target is the run),
    not when it fired for a run that had already finished (its change refused:
    ``prefect.automation.action.failed``). The lost machine's alert does not depend on "a run
    failed or crashed": a killed tick's state events can be held 15 minutes (a run that started
    within 5 minutes of being scheduled, before its ``Scheduled`` event was announced:
    flows/lost.py), and this event never is. Nor does that alert tell the person again: the
    Crashed state is named ``LOST_STATE``, whose event it does not expect."""
    return Automation(
        name=LOST_NAME,
        description="The lost-run automation marked a run Crashed: it sent no heartbeat for "
        f"{crash_after} s and had not finished.",
        trigger=EventTrigger(
            match={
                "prefect.resource.id": "prefect.automation.*",
                "prefect.resource.name": ZOMBIE_NAME,
            },
            match_related={"prefect.resource.role": "target"},
            expect={"prefect.automation.action.executed"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                **notify,
                subject="clinic-relay: {{ flow_run.name }} was lost and is marked Crashed",
                body="{{ flow_run.name }} (run {{ flow_run.id }}, clinic "
                "{{ flow_run.parameters.clinic }}) sent no heartbeat for "
                f"{crash_after} s without finishing: its process or machine died. It is marked "
                "Crashed and its clinic's tick slot is free again; the next tick catches up. "
                "Check the machine and its worker. If the Prefect server was down or restarting "
                "meanwhile, the run may still be alive: its Logs tab then goes on after this "
                "state (docs/scaling.md, A Prefect server restart). {{ flow_run|ui_url }}",
            )
        ],
    )


def default_quiet_minutes(client) -> float:
    """The "no tick completed" window when none is given: three tick intervals of the slowest
    clinic-tick deployment on the server (three missed ticks, so one slow or late tick does
    not alert), and never under QUIET_FLOOR_MINUTES (a tick can take minutes on a busy
    machine)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    intervals = [
        schedule.schedule.interval.total_seconds() / 60
        for deployment in client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["clinic-tick"]))
        )
        for schedule in deployment.schedules
        if getattr(schedule.schedule, "interval", None)
    ]
    return max(QUIET_FLOOR_MINUTES, 3 * max(intervals, default=0))


def quiet_window_warnings(client, every: dict[str, float]) -> list[str]:
    """`relay deploy`'s warning when a clinic ticks too seldom for the "no tick completed" window
    on the server (``every``: each clinic's ``schedule.tick_every_minutes``). `relay alerts
    create` fixes that window from the clinics deployed then (three intervals of the slowest, at
    least 15 minutes); a clinic deployed since with slower ticks was named between ticks that
    came on time (after each gap, when the window is under one interval), and nothing said why."""
    found = client.read_automations_by_name(QUIET_NAME)
    if not found:
        return []
    window = found[0].trigger.within.total_seconds() / 60
    slow = {clinic: minutes for clinic, minutes in sorted(every.items()) if window < 3 * minutes}
    if not slow:
        return []
    ticks = ", ".join(f"{clinic} ticks every {minutes:g}" for clinic, minutes in slow.items())
    return [
        f"warning: the 'no tick completed' alert names a clinic after {window:g} minutes "
        f"without a completed tick, under three of its ticks ({ticks} minutes): it would name "
        "them between ticks that come on time. Run `relay alerts create --webhook-url ...` "
        "again now that they are deployed (its window: three intervals of the slowest clinic), "
        f"or give it --quiet-minutes {3 * max(slow.values()):g} or more."
    ]


def notification_block(webhook_url: str) -> CustomWebhookNotificationBlock:
    """The block the notifications go through: a JSON POST of subject and body to the webhook.
    The address is kept among the block's secret values, not in its URL field: a Slack or Teams
    incoming webhook's address is its credential (anyone who has it can post to the channel),
    and the URL field is shown in clear in the UI, by `prefect block inspect` and by the API."""
    return CustomWebhookNotificationBlock(
        name="clinic-relay",
        url="{{webhook_url}}",
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        secrets={"webhook_url": webhook_url},
    )


def create_alerts(
    webhook_url: str,
    block_name: str,
    quiet_minutes: float | None = None,
    crash_after: int = CRASH_AFTER_SECONDS,
) -> tuple[list[str], float]:
    """Save the notification block and (re)create the automations; returns their names and
    the "no tick completed" window (``quiet_minutes``, or default_quiet_minutes)."""
    block_id = notification_block(webhook_url).save(block_name, overwrite=True)
    with get_client(sync_client=True) as client:
        if quiet_minutes is None:
            quiet_minutes = default_quiet_minutes(client)
        wanted = automations(block_id, quiet_minutes, crash_after)
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
    return [a.create().name for a in wanted], quiet_minutes
