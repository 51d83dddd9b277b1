"""``relay alerts create``: Prefect automations that tell a person when the pipeline needs them.

Five automations, all notifying through one CustomWebhookNotificationBlock (a Slack or Teams
incoming webhook, a Postmark or ntfy endpoint, anything that takes a JSON POST):

- a flow run failed or crashed (any clinic, any step: its message names the step and why);
- the circuit breaker held planning and sending (the ``relay.sync.stale`` event of flows/tick.py);
- a tick warned about clinic.yaml's names (``relay.clinic.warning``: a trigger held because a
  name matches nothing in Cliniko, or a name renamed in Cliniko since it was recorded);
- a tick refused to run off the clinic's home (``relay.clinic.misrouted``: tasks/home.py; a
  machine that is not the home, a clinic being moved, a database that is not its current copy);
- no tick completed for a while: ticks are not running at all (worker or server down, schedule
  paused), which no run can report by itself.

Creating them again replaces them (matched by name), so the command is safe to repeat.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

PREFIX = "relay: "


def automations(block_id, quiet_minutes: int) -> list[Automation]:
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
            description=f"No clinic-tick run completed in {quiet_minutes} minutes: are the "
            "worker and the schedules running?",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "clinic-tick",
                },
                expect={"prefect.flow-run.Completed"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(minutes=quiet_minutes),
            ),
            actions=[
                SendNotification(
                    **notify,
                    subject=f"clinic-relay: no tick completed in {quiet_minutes} minutes",
                    body=f"No clinic-tick run has completed in the last {quiet_minutes} minutes. "
                    "Check the worker (or `relay serve`) and the deployments' schedules.",
                )
            ],
        ),
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


def create_alerts(webhook_url: str, block_name: str, quiet_minutes: int) -> list[str]:
    """Save the notification block and (re)create the automations; returns their names."""
    block = CustomWebhookNotificationBlock(
        name="clinic-relay",
        url=webhook_url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    block_id = block.save(block_name, overwrite=True)
    wanted = automations(block_id, quiet_minutes)
    with get_client(sync_client=True) as client:
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
    return [a.create().name for a in wanted]
