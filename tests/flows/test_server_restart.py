"""A Prefect server restart does not make lost runs of the runs that lived through it.

Two runs of a deployment heartbeat through `relay prefect-server`'s server (its own, here, on a
port and home of its own: the test stops it); the lost-run automation of relay/alerts.py watches
them. The server goes down for longer than the automation's silence, and one run's process is
killed meanwhile (SIGKILL: a machine lost while the server was away). On the server's return the
live run must stay Running and end as it would have (Completed), nobody told of it; the killed
one must still be marked Crashed (Lost) and told of, once. Before, both were marked Lost within
seconds of the server's return (docs/scaling.md, "A Prefect server restart").

Real engine processes (``python -m prefect.engine``, as a worker starts them) send the
heartbeats, every 30 s, and resend what the server missed as Prefect's events client does. The
silence is 45 s (60 in production). States are polled with generous timeouts; nothing is timed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.flows.test_heartbeats import heartbeats, start_engine, wait_until

pytestmark = [pytest.mark.prefect]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SILENCE = 45  # seconds without a heartbeat before a run counts as lost: more than one interval
AWAY = SILENCE + 10  # how long the server is down: longer than the silence

FLOW = '''
import time
from pathlib import Path

from prefect import flow


@flow(name="outlive-restart")
def outlive(until: str) -> None:
    """Runs until the test says it may end (a file), or ten minutes."""
    deadline = time.monotonic() + 600
    while not Path(until).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
'''


class Server:
    """`relay prefect-server`'s server on one port and home, stopped and started again."""

    def __init__(self, home: Path) -> None:
        from relay.serve import free_port

        self.home, self.port, self.starts = home, free_port(), 0
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> str:
        from relay.serve import prefect_server

        self.starts += 1
        self._stack = contextlib.ExitStack()
        log = self.home / f"server-{self.starts}.log"
        return self._stack.enter_context(
            prefect_server(self.port, home=self.home, ui=False, log=log)
        )

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """A server of this module's own, its API URL, and the environment of its runs."""
    home = tmp_path_factory.mktemp("restart-server-home")
    folder = tmp_path_factory.mktemp("outlive")
    (folder / "outlive.py").write_text(FLOW, encoding="utf-8")
    server = Server(home)
    api = server.start()
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PYTHONPATH": os.pathsep.join([str(folder), str(PROJECT_ROOT)]),
    }
    try:
        yield server, env, folder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def restart_client(restarted):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _, env, _ = restarted
    with (
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def watched(restart_client):
    """The deployment (module-path entrypoint, heartbeat every 30 s in its job variables, as
    relay deploy makes them) and relay/alerts.py's lost-run automations, notifying a webhook."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.schemas.actions import WorkPoolCreate

    from relay.alerts import lost_run_crashed, zombie_runs
    from relay.env import HEARTBEAT_SECONDS
    from tests.flows.test_quiet_alert import Webhook

    client = restart_client
    client.create_work_pool(WorkPoolCreate(name="restart", type="process"))
    deployment = client.create_deployment(
        flow_id=client.create_flow_from_name("outlive-restart"),
        name="outlive",
        entrypoint="outlive.outlive",
        path=None,
        pull_steps=[],
        work_pool_name="restart",
        job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}},
        paused=False,
    )
    hook = Webhook()
    block_id = CustomWebhookNotificationBlock(
        name="restart-test", url=hook.url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("restart-test", overwrite=True)  # fmt: skip
    zombie_runs(SILENCE).create()
    lost_run_crashed(dict(block_document_id=block_id), SILENCE).create()
    yield deployment, hook
    hook.server.shutdown()


def states(client, run_id) -> list[str]:
    return [f"{s.type.value}/{s.name}" for s in client.read_flow_run_states(run_id)]


def test_a_run_that_lived_through_a_server_restart_is_not_lost_a_killed_one_is(
    restarted, restart_client, watched
):
    server, env, folder = restarted
    client, (deployment, hook) = restart_client, watched
    until = folder / "runs-may-end"
    alive, killed = (
        client.create_flow_run_from_deployment(deployment, parameters={"until": str(until)}).id
        for _ in range(2)
    )
    engines = {run: start_engine(client, env, run) for run in (alive, killed)}
    try:
        for run in (alive, killed):
            wait_until("a first heartbeat", lambda run=run: heartbeats(env, run))

        server.stop()  # an upgrade, a crash, a reboot: the runs cannot reach it
        engines[killed].send_signal(signal.SIGKILL)  # its machine is lost meanwhile
        engines[killed].wait()
        time.sleep(AWAY)  # longer than the silence the automation allows
        server.start()

        marked = wait_until(
            "the killed run to be marked lost",
            lambda: client.read_flow_run(killed).state.type.value == "CRASHED",
            timeout=240,
        )
        assert marked and client.read_flow_run(killed).state.name == "Lost"
        assert states(client, alive)[-1] == "RUNNING/Running", states(client, alive)
        # The live run's own window, had its heartbeats not counted, ran out with the killed
        # one's: give it one more silence, then let it end.
        time.sleep(SILENCE + 10)
        assert states(client, alive)[-1] == "RUNNING/Running", states(client, alive)
        until.touch()
        wait_until(
            "the live run to end",
            lambda: client.read_flow_run(alive).state.is_final(),
            timeout=120,
        )
        assert states(client, alive)[-1] == "COMPLETED/Completed", states(client, alive)
        assert not [s for s in states(client, alive) if s.startswith("CRASHED")]

        told = wait_until(
            "the lost run's notification",
            lambda: [m for m in hook.received if str(killed) in m.get("body", "")],
        )
        assert len(told) == 1, told
        assert not [m for m in hook.received if str(alive) in m.get("body", "")], hook.received
    finally:
        until.touch()
        for engine in engines.values():
            try:
                engine.wait(timeout=60)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
