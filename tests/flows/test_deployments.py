"""The deployments on a real Prefect server, run by a real process worker: `relay deploy` deploys
what it promises, a tick runs the pipeline and publishes its summary, ticks of one clinic never
overlap, a broken clinic fails alone (and an alert goes out), and stale data holds sending."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from tasks.warehouse import open_db
from tests.flows.conftest import MACHINE

pytestmark = [pytest.mark.prefect]

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def run_deployment(client, name: str, **parameters):
    """Create a run of deployment 'flow/name' now; returns its id."""
    deployment = client.read_deployment_by_name(name)
    return client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id


def wait_for(client, run_ids, timeout: float = 150.0, worker_log: Path | None = None):
    """Wait until every run is final; returns the runs. Fails with the worker's log if not."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.read_flow_run(i) for i in run_ids]
        if all(r.state and r.state.type.value in FINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            tail = worker_log.read_text()[-3000:] if worker_log else ""
            pytest.fail(
                f"runs not finished: {[(r.name, r.state and r.state.name) for r in runs]}\n{tail}"
            )
        time.sleep(1)


def api(env: dict) -> str:
    return env["PREFECT_API_URL"]


def events(env: dict, event: str) -> list[dict]:
    """Events of one name the server has recorded."""
    response = httpx.post(
        f"{api(env)}/events/filter",
        json={
            "filter": {"event": {"name": [event]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}
        },
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["events"]


def deployment(env: dict, name: str) -> dict:
    found = httpx.post(f"{api(env)}/deployments/filter", json={}, timeout=10).json()
    return next(d for d in found if d["name"] == name)


def _of_run(run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))


def artifact(client, run_id) -> str:
    found = client.read_artifacts(artifact_filter=_of_run(run_id))
    # One summary per tick. Under load Prefect's client may repeat the artifact's POST after a
    # read timeout (the server had stored the first), which stores the same text twice.
    summaries = {a.data for a in found if a.key and a.key.startswith("tick-")}
    assert len(summaries) == 1, f"expected one tick summary, got {len(summaries)} different"
    return summaries.pop()


STEPS = {"sync", "models", "plan", "journeys", "dispatch", "feedback"}


def steps(client, run_id, timeout: float = 60.0) -> dict[str, str]:
    """Step -> final state name, for the tasks of a tick named after its steps. The server
    records task runs from events, in the background and possibly after the tick's own end:
    wait until it has the tick's last task (publish_summary) and every task run is final."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        final = all(t.state and t.state.type.value in FINAL for t in runs)
        last = any(t.name.startswith("publish_summary") for t in runs)
        if (final and last) or time.monotonic() > deadline:
            return {t.name: t.state.name for t in runs if t.name in STEPS}
        time.sleep(0.5)


def subflows(client, run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        )
    )


def states(client, run_id) -> list[str]:
    return [s.name for s in client.read_flow_run_states(run_id)]


def test_relay_deploy_makes_each_clinics_tick_and_nightly_reconcile_on_its_machine(deployed):
    tick = deployment(deployed, "alpha-tick")

    assert tick["parameters"]["clinic"] == "alpha"
    assert tick["global_concurrency_limit"]["limit"] == 1
    assert tick["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert tick["work_queue_name"] == "machine-test"
    by_slug = {s["slug"]: s for s in tick["schedules"]}
    assert by_slug["every-5-minutes"]["schedule"]["interval"] == 300.0
    nightly = by_slug["nightly-reconcile"]
    assert nightly["schedule"]["cron"] == "0 3 * * *"
    assert nightly["schedule"]["timezone"] == "Australia/Melbourne"  # the clinic's time_zone
    assert nightly["parameters"] == {"clinic": "alpha", "reconcile": True,
                                     "max_lateness_minutes": 120}  # fmt: skip
    # Nothing of the machine that deployed it: the worker runs its own checkout's code.
    assert tick["entrypoint"] == "flows.tick.clinic_tick"
    assert not tick["path"] and not tick["pull_steps"]
    assert tick["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    names = {d["name"] for d in httpx.post(f"{api(deployed)}/deployments/filter", json={}).json()}
    assert {"beta-tick", "alpha-campaign"} <= names
    assert not any(n.startswith("demo-") for n in names)  # the demo only with --demo


class Webhook:
    """A notification endpoint on 127.0.0.1 that remembers what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.arrived = threading.Condition()

        async def hook(request):
            with self.arrived:
                self.received.append(json.loads(await request.body()))
                self.arrived.notify_all()
            return Response(status_code=204)

        from sandbox.server import ThreadedServer

        self.server = ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))

    def wait(self, predicate, timeout: float = 60.0) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: any(predicate(m) for m in self.received), timeout)
            return [m for m in self.received if predicate(m)]


@pytest.fixture(scope="module")
def webhook(deployed):
    """`relay alerts create` against the test server, notifying a local webhook."""
    import subprocess
    import sys
    from pathlib import Path

    hook = Webhook()
    with hook.server:
        relay = str(Path(sys.executable).with_name("relay"))
        # A lost-run window of 10 minutes, not 60 s: under the whole suite on a 2-core machine a
        # live tick here missed its heartbeats (a heartbeat event failed to send, "EventsWorker
        # failed to process item"), was marked Crashed and lost its concurrency lease mid-tick.
        # The lost-run automation is tested with its own window (test_heartbeats.py).
        created = subprocess.run(
            [relay, "alerts", "create", "--webhook-url", f"{hook.server.url}/hook"]
            + ["--crash-after-seconds", "600"],
            env=deployed,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        assert created.stdout.count("created automation") == 8  # relay/alerts.py
        yield hook
    # Gone with the module: each automation watching run events is writes on the session's
    # SQLite server for every later test (docs/scaling.md, Alerts).
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from relay.alerts import PREFIX

    with (
        temporary_settings({PREFECT_API_URL: deployed["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        for made in client.read_automations():
            if made.name.startswith(PREFIX):
                client.delete_automation(made.id)


def make_stale(db: Path) -> None:
    """A clinic last synced an hour ago, with a reminder due: what a Cliniko outage leaves."""
    from tasks.messages import ledger

    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with open_db(db) as con:
        con.execute(
            "INSERT INTO state.sync_runs VALUES ('earlier', 'incremental', ?, ?, 'completed', NULL, NULL)",
            [an_hour_ago, an_hour_ago],
        )
        ledger.insert_planned(
            con,
            [
                ledger.PlannedMessage(
                    send_key=ledger.make_send_key("trigger", "reminder", 1, "appointment:1"),
                    source_kind="trigger", source_name="reminder", patient_id=1,
                    appointment_id=1, channel="sms", purpose="transactional",
                    template="reminder-24h", due_at=an_hour_ago, expires_at=None,
                )
            ],
            an_hour_ago,
        )  # fmt: skip


@pytest.fixture(scope="module")
def first_ticks(client, worker, webhook, clinics):
    """One tick of every test clinic, all requested at once (alerts already set up): clinic
    name -> its finished run. Different clinics' ticks run side by side, each in its process."""
    make_stale(clinics["stale"].parent / "clinic.duckdb")
    ids = {name: run_deployment(client, f"clinic-tick/{name}-tick") for name in clinics}
    runs = wait_for(client, list(ids.values()), timeout=240, worker_log=worker)
    return dict(zip(ids, runs, strict=True))


def test_a_tick_runs_every_step_as_a_task_and_publishes_one_artifact(client, first_ticks, clinics):
    run = first_ticks["alpha"]
    run_id = run.id

    assert run.state.name == "Completed", run.state.message
    ran = steps(client, run_id)
    assert set(ran) == STEPS
    assert set(ran.values()) == {"Completed"}, ran
    assert subflows(client, run_id) == []  # no flow run per step: the server's cost of a tick
    summary = artifact(client, run_id)
    keys = {a.key for a in client.read_artifacts(artifact_filter=_of_run(run_id)) if a.key}
    assert keys == {"tick-alpha"}, keys  # each step's table is in the summary instead
    assert "### Cliniko sync of alpha: rows and requests per resource" in summary
    assert "### Model build " in summary and "| staging.patients |" in summary
    with open_db(clinics["alpha"].parent / "clinic.duckdb", read_only=True) as con:
        patients = con.execute("SELECT count(*) FROM raw.patients").fetchone()[0]
        # The welcome trigger went live with this tick: no welcome for bookings made before it.
        assert con.execute("SELECT count(*) FROM state.messages").fetchone()[0] == 0
    assert "| sync | completed |" in summary and f"patients {patients}" in summary
    assert "**Models:** succeeded" in summary and "| email_marketing_list |" in summary


def book_now(clinic, n: int) -> list[int]:
    """n appointments booked in the sandbox Cliniko now, as a receptionist would (through the
    sandbox's own change engine); returns their ids."""
    from sandbox.cliniko.clinic import _Changes

    table = clinic.tables["individual_appointments"]
    with clinic.lock:
        before = set(table.rows)
        changes, now = _Changes(clinic), int(time.time())
        for _ in range(n):
            changes.bookings(now)
        return sorted(set(table.rows) - before)


def test_two_ticks_requested_together_run_one_after_the_other_and_send_each_welcome_once(
    client, worker, first_ticks, clinics, sandboxes, prefect_server
):
    booked = book_now(sandboxes["a"].clinic, 6)
    # Both runs are on the server before the worker can see either: under load its poll could
    # otherwise fall between the two requests, run the first to its end and only then find the
    # second, which then never has to wait for the slot this test is about.
    queue = client.read_work_queue_by_name(f"machine-{MACHINE}", work_pool_name="local")
    client.update_work_queue(queue.id, is_paused=True)
    try:
        first = run_deployment(client, "clinic-tick/alpha-tick")
        second = run_deployment(client, "clinic-tick/alpha-tick")
    finally:
        client.update_work_queue(queue.id, is_paused=False)
    runs = wait_for(client, [first, second], worker_log=worker)

    assert [r.state.name for r in runs] == ["Completed", "Completed"]
    a, b = sorted(runs, key=lambda r: r.start_time)
    assert a.end_time <= b.start_time, "two ticks of one clinic ran at the same time"
    assert "AwaitingConcurrencySlot" in states(client, b.id)

    with open_db(clinics["alpha"].parent / "clinic.duckdb", read_only=True) as con:
        rows = con.execute(
            "SELECT appointment_id, status, send_key, waiting_reason FROM state.messages "
            "WHERE source_name = 'welcome'"
        ).fetchall()
    assert sorted(r[0] for r in rows) == booked  # one welcome per new booking, nothing else
    sent = {key for _, status, key, _ in rows if status == "sent"}
    # a patient with no email on file: the welcome waits for one (tasks/messages/waiting.py)
    waiting = {(status, reason) for _, status, _, reason in rows if status != "sent"}
    assert sent and waiting <= {("planned", "no valid email address on file")}, waiting
    outbox = Path(prefect_server["RELAY_DATA_DIR"]) / "outbox" / "alpha"
    written = [json.loads(p.read_text())["send_key"] for p in outbox.glob("*.json")]
    assert sorted(written) == sorted(sent)  # each once
    assert f"| sent | - | {len(sent)} |" in artifact(client, a.id)
    assert "| none this tick | | 0 |" in artifact(client, b.id)


def test_a_clinic_with_a_broken_key_fails_alone_and_an_alert_goes_out(client, first_ticks, webhook):
    good_run, broken_run = first_ticks["beta"], first_ticks["broken"]
    good, broken = good_run.id, broken_run.id

    assert good_run.state.name == "Completed", good_run.state.message
    assert broken_run.state.name == "Failed"
    assert "sync failed" in broken_run.state.message
    assert steps(client, broken)["sync"] == "Failed"
    # Separate processes, neither waiting for the other.
    assert good_run.infrastructure_pid != broken_run.infrastructure_pid
    assert "AwaitingConcurrencySlot" not in states(client, good) + states(client, broken)
    assert "| sync | completed |" in artifact(client, good)
    assert "| sync | failed |" in artifact(client, broken)

    alerts = webhook.wait(lambda m: broken_run.name in m.get("subject", ""))
    assert alerts and "Failed" in alerts[0]["subject"]
    assert "sync failed" in alerts[0]["body"]


def test_a_failed_sync_is_one_alert_saying_what_failed_and_what_to_do(first_ticks, webhook):
    """A sync that failed was told twice in its tick: "a run failed or crashed" (the tick ended
    Failed) and "sending held" (the circuit breaker's relay.sync.stale, "the sync failed"). The
    first says it all: the step, Cliniko's refusal with what to do, and what was held."""
    broken = first_ticks["broken"]

    def about(message: dict) -> bool:
        return "broken" in message.get("subject", "")

    [failed] = webhook.wait(lambda m: about(m) and broken.name in m["subject"])
    assert "sync failed (BadApiKey: Cliniko rejected the API key (401)" in failed["body"]
    assert "Check the key in the ClinikoAccount block" in failed["body"]
    assert "Planning and sending held: the sync failed" in failed["body"]
    # the breaker's event is sent mid-tick, before the run ends Failed: a second alert would
    # be here by now, or within these seconds
    told = webhook.wait(lambda m: about(m) and m is not failed, timeout=20)
    assert told == [], [m["subject"] for m in told]


def test_the_circuit_breaker_holds_planning_and_sending_when_the_sync_is_stale(
    client, first_ticks, clinics, webhook, prefect_server
):
    db = clinics["stale"].parent / "clinic.duckdb"
    run = first_ticks["stale"]
    run_id = run.id

    assert run.state.name == "Failed"
    summary = artifact(client, run_id)
    assert "**Planning and sending held:**" in summary and "minutes old" in summary
    for step in ("plan", "dispatch"):
        assert f"| {step} | held |" in summary
    ran = steps(client, run_id)
    assert set(ran) <= {"sync", "feedback"}, "a held step ran"
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT status FROM state.messages").fetchall() == [("planned",)]
    # its sync failed too: the tick's failure is the one alert, and it says what was held
    [alert] = webhook.wait(lambda m: run.name in m.get("subject", ""))
    assert "Planning and sending held: the sync failed; the data is " in alert["body"]
    assert "minutes old (sync.stale_after_minutes is " in alert["body"]
    held = events(prefect_server, "relay.sync.stale")
    assert [e for e in held if e["payload"]["clinic"] == "stale"] == []
    assert not [m for m in webhook.received if "sending held for stale" in m.get("subject", "")]


def test_a_completed_tick_tells_the_quiet_alert_and_a_failed_one_does_not(
    first_ticks, prefect_server
):
    """What relay/alerts.py's per-clinic "no tick completed" counts: the tick's own
    relay.tick.completed, naming the clinic, with the run and deployment the notification names
    (tests/flows/test_quiet_alert.py: the alert on it)."""
    good, broken = first_ticks["beta"], first_ticks["broken"]

    def of_run(run) -> list[dict]:
        ran = f"prefect.flow-run.{run.id}"
        return [
            e for e in events(prefect_server, "relay.tick.completed")
            if any(r["prefect.resource.id"] == ran for r in e["related"])
        ]  # fmt: skip

    deadline = time.monotonic() + 60  # sent before the run ended; the server may be recording it
    while not (told := of_run(good)):
        assert time.monotonic() < deadline, "no relay.tick.completed from beta's tick"
        time.sleep(1)
    [event] = told
    assert event["resource"]["prefect.resource.id"] == "relay.clinic.beta"
    assert event["payload"] == {"clinic": "beta"}
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert related["flow-run"] == f"prefect.flow-run.{good.id}"
    assert related["deployment"] == f"prefect.deployment.{good.deployment_id}"
    assert broken.state.name == "Failed" and of_run(broken) == []
