"""A clinic whose ticks stop is named by the "no tick completed" alert; a clinic that keeps
ticking is not (issue 14, §3: alerts are per clinic).

The automation is relay/alerts.py's, with a window of QUIET seconds instead of the minutes an
operator sets, on a real Prefect server. It counts the ``relay.tick.completed`` event a tick
emits once it did all its work (flows/tick.py; tests/flows/test_deployments.py checks that a real
tick emits it, naming its clinic, run and deployment). Here each tick is that event, posted as
the tick's run sends it, naming a run of the deployments `relay deploy` made (alpha-tick,
beta-tick); no run changes state, so the test fails if the alert depends on the run's Completed
state, which Prefect's automations may see 15 minutes late (docs/scaling.md, Alerts). (Real
ticks take from 5 s to minutes on a loaded machine; the window must be longer than beta's gap
between ticks.)

Nothing is timed: the test waits, with a generous deadline, for the alert naming alpha, and then
for one more whole window of beta ticking to show no alert names beta.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

pytestmark = [pytest.mark.prefect]

QUIET = 24  # seconds without a completed tick before a clinic is named (minutes in production)
BETA_EVERY = 2  # seconds between beta's ticks: well inside the window


class Webhook:
    """A notification endpoint on 127.0.0.1 keeping every JSON body it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def naming(self, clinic: str) -> list[dict]:
        return [m for m in list(self.received) if f"no tick of {clinic} " in m.get("subject", "")]


@pytest.fixture
def quiet_alert(client, deployed):
    """relay/alerts.py's per-clinic quiet alert, QUIET seconds, notifying a local webhook."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from relay.alerts import QUIET_NAME, no_tick_completed

    hook = Webhook()
    block_id = CustomWebhookNotificationBlock(
        name="quiet-test", url=hook.url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("quiet-test", overwrite=True)  # fmt: skip
    for old in client.read_automations_by_name(QUIET_NAME):
        client.delete_automation(old.id)
    automation = no_tick_completed(
        timedelta(seconds=QUIET), dict(block_document_id=block_id)
    ).create()
    try:
        yield hook
    finally:
        client.delete_automation(automation.id)
        hook.server.shutdown()


UNSERVED = "machine-nobody"  # a work queue of the test pool that no worker polls


def unserved(client) -> str:
    """The work queue for runs a test takes through their states itself: the session's worker
    (on machine-test) never picks them up. (In a four-module session it once did: it ran the
    quiet test's beta tick, and the test's Pending was refused for beta's slot.)"""
    from prefect.exceptions import ObjectAlreadyExists

    with contextlib.suppress(ObjectAlreadyExists):
        client.create_work_queue(name=UNSERVED, work_pool_name="local")
    return UNSERVED


def complete_a_tick(client, deployment_id):
    """One run of the deployment, taken where a worker and the engine take it: Pending (the
    deployment's one slot), Running, Completed; on a queue no worker polls."""
    from prefect.states import Completed, Pending, Running

    run = client.create_flow_run_from_deployment(deployment_id, work_queue_name=unserved(client))
    for state in (Pending(), Running(), Completed()):
        result = client.set_flow_run_state(run.id, state)
        assert result.status.value == "ACCEPT", (state.name, result.details)
    return run.id


def tick(env: dict, client, clinic: str, runs: dict) -> None:
    """One completed tick of the clinic, as the automation sees it: the relay.tick.completed a
    tick emits when it did all its work, naming the tick's run and deployment (related resources
    Prefect adds to an event sent inside a run). The run is one per clinic, made once and left
    Scheduled on a queue no worker polls: it only gives the notification a run to name. (No
    Completed state: the automation must not need one.)"""
    deployment = client.read_deployment_by_name(f"clinic-tick/{clinic}-tick")
    if clinic not in runs:
        runs[clinic] = client.create_flow_run_from_deployment(
            deployment.id, work_queue_name=unserved(client)
        ).id
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "relay.tick.completed",
        "resource": {"prefect.resource.id": f"relay.clinic.{clinic}",
                     "prefect.resource.name": clinic},
        "payload": {"clinic": clinic},
        "related": [
            {"prefect.resource.id": f"prefect.flow-run.{runs[clinic]}",
             "prefect.resource.role": "flow-run"},
            {"prefect.resource.id": f"prefect.deployment.{deployment.id}",
             "prefect.resource.role": "deployment", "prefect.resource.name": deployment.name},
        ],
    }  # fmt: skip
    httpx.post(f"{env['PREFECT_API_URL']}/events", json=[event], timeout=30).raise_for_status()


def test_a_clinic_that_stops_ticking_is_named_and_one_that_ticks_is_not(
    prefect_server, client, quiet_alert
):
    runs: dict = {}
    tick(prefect_server, client, "alpha", runs)  # alpha's last tick: then its machine is gone
    tick(prefect_server, client, "beta", runs)

    deadline = time.monotonic() + 4 * QUIET + 60  # the window, evaluation every 5 s, a busy box
    quiet_until = None  # once alpha is named: one more whole window of beta ticking
    while True:
        tick(prefect_server, client, "beta", runs)
        if quiet_until is None and quiet_alert.naming("alpha"):
            quiet_until = time.monotonic() + QUIET + 10
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
        if quiet_until is None and time.monotonic() > deadline:
            pytest.fail(f"no alert named alpha; the webhook got {quiet_alert.received}")
        time.sleep(BETA_EVERY)

    named = quiet_alert.naming("alpha")
    assert len(named) == 1, named  # once per silence, not every evaluation
    assert named[0]["subject"].endswith(f"completed in {QUIET} s"), named[0]
    # its queue as the deployment has it now (relay deploy puts a clinic on its recorded home's)
    queue = client.read_deployment_by_name("clinic-tick/alpha-tick").work_queue_name
    assert "alpha-tick" in named[0]["body"] and f"queue: {queue})" in named[0]["body"], named[0]
    assert str(runs["alpha"]) in named[0]["body"], named[0]  # its last tick's run
    assert quiet_alert.naming("beta") == [], quiet_alert.received
