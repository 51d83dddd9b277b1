"""``relay alerts create``: Prefect automations that tell a person when the pipeline needs them,
and the one that marks a lost machine's runs Crashed.

Five automations notify through one CustomWebhookNotificationBlock (a Slack or Teams incoming
webhook, a Postmark or ntfy endpoint, anything that takes a JSON POST):

- a flow run failed or crashed (any clinic, any step: its message names the step and why);
- the circuit breaker held planning and sending (the ``relay.sync.stale`` event of flows/tick.py);
- a tick warned about clinic.yaml's names (``relay.clinic.warning``: a trigger held because a
  name matches nothing in Cliniko, or a name renamed in Cliniko since it was recorded);
- a tick refused to run off the clinic's home (``relay.clinic.misrouted``: tasks/home.py; a
  machine that is not the home, a clinic being moved, a database that is not its current copy);
- no tick of a clinic completed for a while, per clinic (one automation, a bucket per tick
  deployment: ``for_each`` on the run's deployment), naming the clinic: its machine or worker is
  down, or its schedule paused, which no run can report by itself.

A sixth acts instead of notifying: a run that sent a heartbeat and then nothing for
``crash_after`` seconds (its process or machine died) is set Crashed (Prefect's documented
"detect zombie flows" automation). Crashed gives the deployment's concurrency slot back at once
(the server's ReleaseFlowConcurrencySlots rule), so the clinic's next tick runs; the Crashed state
then fires the "a run failed or crashed" alert. Runs heartbeat every ``HEARTBEAT_SECONDS``
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

PREFIX = "relay: "
# Seconds between a run's heartbeats (Prefect's minimum is 30), and how long without one before
# a Running run counts as lost: three missed heartbeats, so a busy machine is not a dead one.
HEARTBEAT_SECONDS = 30
CRASH_AFTER_SECONDS = 90
ZOMBIE_NAME = PREFIX + "a run stopped sending heartbeats"


def automations(
    block_id, quiet_minutes: int, crash_after: int = CRASH_AFTER_SECONDS
) -> list[Automation]:
    notify = dict(block_document_id=block_id)
    return [
        Automation(
            name=PREFIX + "a run failed or crashed",
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
                    body="{{ flow.name }} / {{ flow_run.name }} ended {{ flow_run.state.name }}: "
                    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
                )
            ],
        ),
        _on_clinic_event(
            notify,
            name="sending held: stale or failed sync",
            description="A tick held planning and sending (circuit breaker): the sync failed "
            "or the data is older than the clinic's sync.stale_after_minutes.",
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
            name="tick refused: not the clinic's home",
            description="A tick planned and sent nothing: it ran on a machine that is not the "
            "clinic's home, or against a database that is not the clinic's current copy.",
            event="relay.clinic.misrouted",
            subject="clinic-relay: {{ event.payload.clinic }} ran off its home",
            body="{{ event.payload.reason }}",
        ),
        Automation(
            name=PREFIX + "no tick completed",
            description=f"A clinic's clinic-tick runs stopped completing for {quiet_minutes} "
            "minutes: is its machine's worker running, and its schedule?",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "clinic-tick",
                },
                # One bucket per tick deployment (one per clinic), opened by its last
                # completed tick: a clinic that stops is named, the others stay quiet.
                after={"prefect.flow-run.Completed"},
                expect={"prefect.flow-run.Completed"},
                for_each={"related:deployment:prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(minutes=quiet_minutes),
            ),
            actions=[
                SendNotification(
                    **notify,
                    # The last completed tick of that deployment: its parameters name the clinic.
                    subject="clinic-relay: no tick of {{ flow_run.parameters.clinic }} "
                    f"completed in {quiet_minutes} minutes",
                    body="No tick of clinic {{ flow_run.parameters.clinic }} "
                    "({{ deployment.name }}) has completed in the last "
                    f"{quiet_minutes} minutes; the last one was {{{{ flow_run.name }}}}. "
                    "Check the worker on its machine (its work queue: "
                    "{{ deployment.work_queue_name }}) and the deployment's schedules.",
                )
            ],
        ),
        zombie_runs(crash_after, notify),
    ]


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


def zombie_runs(crash_after: int = CRASH_AFTER_SECONDS, notify: dict | None = None) -> Automation:
    """Prefect's "detect zombie flows" automation: a run whose heartbeats stop (after at least
    one) without a final state is set Crashed, which releases its deployment's slot, and a
    person is told (with ``notify``) by this automation itself: a state set by an automation's
    action did not reach the "a run failed or crashed" alert in the two-machine run
    (scripts/machines.py), so the lost machine's alert does not depend on it."""
    return Automation(
        name=ZOMBIE_NAME,
        description=f"A run sent no heartbeat for {crash_after} s and did not finish: its "
        "process or machine died. It is marked Crashed, giving its clinic's tick slot back.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {crash_after} s: its process or machine was lost "
                "(marked by the relay automation; the next tick catches up).",
            ),
            *(
                [
                    SendNotification(
                        **notify,
                        subject="clinic-relay: a run was lost and marked Crashed",
                        body=f"A run sent no heartbeat for {crash_after} s and did not finish: "
                        "its process or machine died. It is marked Crashed and its clinic's "
                        "tick slot is free again. Check the machine and its worker. "
                        "{{ flow_run.name }} {{ flow_run|ui_url }}",
                    )
                ]
                if notify
                else []
            ),
        ],
    )


def create_alerts(
    webhook_url: str, block_name: str, quiet_minutes: int, crash_after: int = CRASH_AFTER_SECONDS
) -> list[str]:
    """Save the notification block and (re)create the automations; returns their names."""
    block = CustomWebhookNotificationBlock(
        name="clinic-relay",
        url=webhook_url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    block_id = block.save(block_name, overwrite=True)
    wanted = automations(block_id, quiet_minutes, crash_after)
    with get_client(sync_client=True) as client:
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
    return [a.create().name for a in wanted]
