"""Two "machines" on this one, against one real Prefect server: the proof of docs/scaling.md.

Each machine is what an operator runs on a host of its own: its own data folder
(``RELAY_DATA_DIR``: the clinics' DuckDB files and outbox), its own ``RELAY_MACHINE`` name and
``PREFECT_HOME``, and one process worker polling only its work queue,
``prefect worker start --pool machines --work-queue machine-<name>``. Both share what a fleet
shares: the Prefect server (on PostgreSQL when ``initdb`` is found, else SQLite), the clinics
folder (``RELAY_CLINICS_DIR``: three clinics, each its own sandbox Cliniko with its clock
running), the unsubscribe secret and a backup folder (``RELAY_BACKUP_DIR``) both can read.

The run, in order (``run``), each part a scenario with its own figures:

1. **home**: every clinic ticks, and each tick runs on its home machine's queue only.
2. **misroute**: a tick of a clinic put on the other machine's queue refuses (Failed), emits
   ``relay.clinic.misrouted`` and the alert webhook hears of it; nothing is sent from there.
3. **kill**: machine ``a`` (its worker and every run it started) is killed with SIGKILL while a
   tick runs; the run must go Crashed (heartbeats + the automation of ``relay alerts create``),
   the deployment's slot be given back and the alert fire; then ``relay clinic move`` puts the
   clinic on machine ``b``, where it ticks again.
4. **duplicates**: at the end, every outbox file of both machines and every ``sent`` ledger row
   of both machines' databases are counted per clinic and send key: each message once.

    .venv/bin/python scripts/machines.py            # = make machines; PG=1 insists on PostgreSQL
    .venv/bin/python scripts/machines.py --sqlite   # the CI machine's case

prints the figures and appends them to ``bench/results/machines.jsonl``. The pytest version is
``tests/machines/test_machines.py`` (marker ``machines``). No figure is asserted on wall-clock
time: times are measured and printed; the assertions are about states and counts.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from relay.env import CRASH_AFTER_SECONDS as CRASH_AFTER  # noqa: E402 (the lost-run window)
from relay.serve import alive, descendants, free_port, prefect_server  # noqa: E402

BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
RELAY = str(BIN / "relay")
POOL = "machines"
MACHINES = ("a", "b")
# Three clinics: two at home on a (one of them is killed with it and moved), one on b.
HOMES = {"north": "a", "south": "a", "east": "b"}
MOVED = "north"  # the clinic moved to b after a is killed
TICK_SECONDS = 60  # relay deploy's least; a tick takes 5 s on a quiet 2-core machine
# The per-clinic "no tick completed" alert (15 min by default): four ticks, and longer than a
# tick takes at load 20 (2-3 min; with 2 minutes south was named during a slow tick, before the
# kill, and once per silence means not again after it).
QUIET_MINUTES = 4
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# A welcome email for every booking: each ledger row and outbox file is one booking's message.
CLINIC_YAML = """clinic: {name}
name: Clinic {name}
time_zone: Australia/Melbourne
cliniko:
  account: {name}-cliniko
triggers:
  - name: welcome
    enabled: true
    event: appointment_booked
    timing: immediately
    channel: email
    template: welcome
    purpose: transactional
schedule:
  tick_every_minutes: {tick_minutes}
  nightly_reconcile: null
  max_lateness_minutes: 30  # at load 25 every tick started > 2 min late and gave way: none held the database
"""


def log(text: str) -> None:
    print(f"[machines {datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


# --- PostgreSQL: a throwaway cluster in a temp folder -------------------------------------------


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None on a machine without."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@contextlib.contextmanager
def postgres(root: Path) -> Iterator[str]:
    """A PostgreSQL cluster of its own on a free loopback port until the block ends; yields the
    SQLAlchemy URL for Prefect. PostgreSQL refuses to run as root: as root, it runs as the
    ``postgres`` user (Debian's package creates it)."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed here (no initdb); run without PG=1")
    folder = Path(tempfile.mkdtemp(prefix="relay-pg-", dir=root))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "relay", "--auth=trust", "-E", "UTF8",
        "--no-locale", "-N")  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"),
        "-w", "start")  # fmt: skip
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "relay", "prefect")
        yield f"postgresql+asyncpg://relay@127.0.0.1:{port}/prefect"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# --- The alert webhook: what a Slack hook would receive -----------------------------------------


class Webhook:
    """An HTTP endpoint on 127.0.0.1 recording each notification POSTed to it (time, JSON)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    payload = {"raw": body.decode("utf-8", "replace")}
                received.append((time.monotonic(), payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def since(self, after: float) -> list[tuple[float, dict]]:
        """Every notification that arrived after ``after`` (time.monotonic), oldest first."""
        return [(at, payload) for at, payload in list(self.received) if at >= after]

    def first(self, *words: str, after: float = 0.0) -> float | None:
        """When the first notification after ``after`` containing every word arrived."""
        for at, payload in list(self.received):
            text = json.dumps(payload)
            if at >= after and all(w in text for w in words):
                return at
        return None

    def close(self) -> None:
        self.server.shutdown()


# --- Machines -------------------------------------------------------------------------------------


@dataclass
class Machine:
    name: str
    env: dict
    data: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def queue(self) -> str:
        return f"machine-{self.name}"

    def start(self) -> None:
        out = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                PREFECT,
                "worker",
                "start",
                "--pool",
                POOL,
                "--work-queue",
                self.queue,
                "--name",
                f"worker-{self.name}",
                "--limit",
                "4",
            ],  # fmt: skip
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> int:
        """SIGKILL the worker and every process below it (its runs) at once, as a lost host.
        Returns how many processes were killed."""
        assert self.proc is not None
        # Stopped first, so that the worker starts no run between the count and the kill (a
        # run started then would be orphaned, not killed).
        os.kill(self.proc.pid, signal.SIGSTOP)
        tree = descendants(self.proc.pid) | {self.proc.pid}
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        while any(alive(pid) for pid in tree):
            time.sleep(0.05)
        self.proc = None
        return len(tree)

    def stop(self) -> None:
        """The worker ignores SIGTERM for long; SIGINT stops it (prefect.md §2)."""
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in tree:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None

    def relay(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the relay command as this machine's operator would."""
        return subprocess.run(
            [RELAY, *args], env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@dataclass
class Fleet:
    """Everything started: the server, the sandboxes, the clinics, the machines, the webhook."""

    root: Path
    server: str  # "postgresql" or "sqlite"
    api: str
    env: dict  # the operator's environment (no machine of its own)
    machines: dict[str, Machine]
    clinics_dir: Path
    backups: Path
    webhook: Webhook
    sandboxes: dict
    deployments: dict = field(default_factory=dict)  # clinic -> deployment id
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    notes: list[str] = field(default_factory=list)

    # -- the Prefect API, read in this process --

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def runs(self, clinic: str) -> list:
        from prefect.client.schemas import filters

        with self.client() as c:
            return c.read_flow_runs(
                flow_run_filter=filters.FlowRunFilter(
                    deployment_id=filters.FlowRunFilterDeploymentId(any_=[self.deployments[clinic]])
                ),
                limit=200,
            )

    def completed_on(self, clinic: str) -> Counter:
        """Completed ticks of the clinic per work queue (= per machine: a worker polls only its own)."""
        return Counter(
            r.work_queue_name
            for r in self.runs(clinic)
            if r.state and r.state.type.value == "COMPLETED"
        )

    def wait(self, what: str, check, timeout: float, every: float = 0.5):
        """Poll ``check`` until it returns something truthy; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = check()
            except (httpx.HTTPError, OSError) as exc:  # a busy server times out: ask again
                log(f"while waiting for {what}: {type(exc).__name__}: {exc}")
                found = None
            if found:
                return found
            time.sleep(every)
        log(f"gave up waiting for {what} after {timeout:.0f} s")
        return None

    def events(self, name: str | list[str], since: datetime) -> list[dict]:
        """Events of this name (or names) the server recorded since ``since``, every page
        (Prefect's /events/filter answers 50 at a time)."""
        body = {
            "filter": {
                "event": {"name": [name] if isinstance(name, str) else name},
                "occurred": {
                    "since": since.isoformat(),
                    "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
                },
            },
            "limit": 50,
        }
        response = httpx.post(f"{self.api}/events/filter", json=body, timeout=120)
        response.raise_for_status()
        page = response.json()
        found = list(page.get("events", []))
        while page.get("next_page"):
            response = httpx.get(page["next_page"], timeout=120)
            response.raise_for_status()
            page = response.json()
            found += page.get("events", [])
        return found

    def slots_taken(self, clinic: str) -> int | None:
        with self.client() as c:
            limit = c.read_deployment(self.deployments[clinic]).global_concurrency_limit
        return None if limit is None else limit.active_slots


def write_clinics(folder: Path, sandboxes: dict) -> None:
    from pydantic import SecretStr

    from blocks.cliniko import ClinikoAccount

    for name, server in sandboxes.items():
        ClinikoAccount(
            api_key=SecretStr(server.clinic.api_key), contact_email="machines@example.com",
            base_url=server.base_url, requests_per_minute=100000,
        ).save(f"{name}-cliniko", overwrite=True)  # fmt: skip
        path = folder / name / "clinic.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            CLINIC_YAML.format(name=name, tick_minutes=TICK_SECONDS / 60), encoding="utf-8"
        )


def deploy(fleet: Fleet) -> None:
    """As an operator would: each clinic claimed on its home machine (`relay clinic claim`, there),
    then `relay deploy`, which puts each clinic's deployments on its home's queue."""
    for clinic, home in HOMES.items():
        claimed = fleet.machines[home].relay("clinic", "claim", clinic)
        if claimed.returncode != 0:
            raise RuntimeError(
                f"relay clinic claim {clinic} failed:\n{claimed.stdout}\n{claimed.stderr}"
            )
    deployed = subprocess.run(
        [RELAY, "deploy", "--pool", POOL], env=fleet.env, cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if deployed.returncode != 0:
        raise RuntimeError(f"relay deploy failed:\n{deployed.stdout}\n{deployed.stderr}")


def find_deployments(fleet: Fleet) -> None:
    with fleet.client() as c:
        for clinic in HOMES:
            fleet.deployments[clinic] = c.read_deployment_by_name(f"clinic-tick/{clinic}-tick").id


@contextlib.contextmanager
def started(root: Path, use_postgres: bool | None = None) -> Iterator[Fleet]:
    """Start everything under ``root``; stop it all when the block ends."""
    from sandbox.cliniko import SandboxClinic, SandboxServer

    if use_postgres is None:
        use_postgres = postgres_bin() is not None
    home = root / "server-home"
    clinics_dir, backups = root / "clinics", root / "backups"
    for folder in (home, clinics_dir, backups):
        folder.mkdir(parents=True, exist_ok=True)
    base = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "RELAY_CLINICS_DIR": str(clinics_dir),
        "RELAY_BACKUP_DIR": str(backups),
        # One secret for the fleet (an operator sets it on every machine, or saves the block).
        "RELAY_UNSUBSCRIBE_SECRET": "machines-harness-" + "s" * 48,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        # No heartbeat setting here: the deployments must carry it (relay deploy), so a worker
        # needs no setup; Prefect refuses a frequency under 30 s.
    }
    base.pop("PREFECT_API_URL", None)
    with contextlib.ExitStack() as stack:
        server_env = dict(base)
        if use_postgres:
            url = stack.enter_context(postgres(root))
            server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(server_env)
        try:
            api = stack.enter_context(
                prefect_server(free_port(), home=home, ui=False, log=root / "server.log")
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        env = {**base, "PREFECT_API_URL": api}
        from prefect.settings import PREFECT_API_URL, temporary_settings

        stack.enter_context(temporary_settings({PREFECT_API_URL: api}))
        start = datetime.now(UTC).replace(microsecond=0)
        sandboxes = {}
        for seed, clinic in enumerate(HOMES, start=21):
            generated = SandboxClinic.generate(
                seed=seed, patients=60, start=start, appointments_per_patient=4
            )
            sandboxes[clinic] = stack.enter_context(
                SandboxServer(generated, rate_limit=None, auto_advance_speed=120)
            )
        write_clinics(clinics_dir, sandboxes)
        webhook = Webhook()
        stack.callback(webhook.close)
        machines = {}
        for name in MACHINES:
            data = root / f"machine-{name}"
            (data / "prefect-home").mkdir(parents=True, exist_ok=True)
            machines[name] = Machine(
                name,
                {
                    **env,
                    "RELAY_MACHINE": name,
                    "RELAY_DATA_DIR": str(data),
                    "PREFECT_HOME": str(data / "prefect-home"),
                },  # fmt: skip
                data,
                root / f"worker-{name}.log",
            )
        fleet = Fleet(
            root, "postgresql" if use_postgres else "sqlite", api, env, machines, clinics_dir,
            backups, webhook, sandboxes,
        )  # fmt: skip
        deploy(fleet)
        find_deployments(fleet)
        alerts = subprocess.run(
            [RELAY, "alerts", "create", "--webhook-url", webhook.url,
             "--quiet-minutes", str(QUIET_MINUTES), "--crash-after-seconds", str(CRASH_AFTER)],
            env=env, cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if alerts.returncode != 0:
            raise RuntimeError(f"relay alerts create failed:\n{alerts.stdout}\n{alerts.stderr}")
        for machine in machines.values():
            stack.callback(machine.stop)  # started by run(), in the order the scenarios need
        yield fleet


# --- The scenarios ----------------------------------------------------------------------------------


def scenario_home(fleet: Fleet, ticks: int = 1, timeout: float = 900) -> dict:
    """Every clinic completes ``ticks`` ticks, all on its home machine's queue."""
    started = time.monotonic()

    def enough():
        return all(sum(fleet.completed_on(c).values()) >= ticks for c in HOMES)

    done = fleet.wait(f"{ticks} completed ticks per clinic", enough, timeout, every=2)
    per_machine = {c: dict(fleet.completed_on(c)) for c in HOMES}
    away = {
        c: {q: n for q, n in counts.items() if q != f"machine-{HOMES[c]}"}
        for c, counts in per_machine.items()
    }
    databases = {
        m.name: sorted(p.stem for p in m.data.glob("*.duckdb")) for m in fleet.machines.values()
    }
    misplaced = {c for c in HOMES for m, dbs in databases.items() if (c in dbs) != (m == HOMES[c])}
    return {
        "ok": bool(done) and not any(away.values()) and not misplaced,
        "seconds": round(time.monotonic() - started, 1),
        "ticks_per_machine": per_machine,
        "ticks_away_from_home": {c: a for c, a in away.items() if a},
        "databases": databases,
        "databases_missing_or_away": sorted(misplaced),
    }


def scenario_misroute(fleet: Fleet, clinic: str = "east", timeout: float = 600) -> dict:
    """A tick of ``clinic`` put on the other machine's queue: refused, evented, alerted."""
    wrong = next(m for m in MACHINES if m != HOMES[clinic])
    outbox = fleet.machines[wrong].data / "outbox" / clinic
    since = datetime.now(UTC) - timedelta(seconds=5)
    asked = time.monotonic()
    with fleet.client() as c:
        run = c.create_flow_run_from_deployment(
            fleet.deployments[clinic], work_queue_name=f"machine-{wrong}"
        )

    def final():
        with fleet.client() as c:
            r = c.read_flow_run(run.id)
        return r if r.state and r.state.type.value in FINAL else None

    ended = fleet.wait("the misrouted tick to end", final, timeout)
    state = ended.state.type.value if ended else "NOT ENDED"
    message = (ended.state.message or "") if ended else ""
    events = (
        fleet.wait(
            "relay.clinic.misrouted",
            lambda: fleet.events("relay.clinic.misrouted", since),
            30,
            every=1,
        )
        or []
    )
    alerted = fleet.wait(
        "the misroute alert",
        lambda: fleet.webhook.first(clinic, "ran off its home", after=asked),
        180,
    )
    sent_there = len(list(outbox.glob("*.json"))) if outbox.exists() else 0
    return {
        "ok": state == "FAILED" and bool(events) and alerted is not None and sent_there == 0,
        "state": state,
        "message": message[:300],
        "ran_on_queue": ended.work_queue_name if ended else None,
        "events": len(events),
        "alert_seconds": round(alerted - asked, 1) if alerted else None,
        "sent_from_wrong_machine": sent_there,
    }


def scenario_kill(fleet: Fleet, clinic: str = MOVED, timeout: float = 600) -> dict:
    """Kill the clinic's home machine mid-tick; Crashed, slot back, alert; move; ticks again;
    the clinic left on the lost machine named by the quiet alert. Every notification after the
    kill is recorded with the run or clinic it names (``alerts``)."""
    home = fleet.machines[HOMES[clinic]]
    target = next(m for n, m in fleet.machines.items() if n != home.name)
    result: dict = {"clinic": clinic, "from": home.name, "to": target.name}

    from tasks.warehouse import in_use

    database = home.data / f"{clinic}.duckdb"

    def running():
        """A Running tick holding the clinic's database, well into its work (not one giving
        way), whose first heartbeat the server has recorded. A tick killed before that is
        noticed by its Running state only, which Prefect's automations see 15 minutes late, or
        never, when the run started within 5 minutes of being scheduled (docs/scaling.md, "A
        lost machine"; the harness deploys minutes before the kill)."""
        run = next(
            (r for r in fleet.runs(clinic) if r.state and r.state.type.value == "RUNNING"), None
        )
        if run is None or not database.exists() or not in_use(database):
            return None
        since = datetime.now(UTC) - timedelta(hours=1)
        beats = fleet.events("prefect.flow-run.heartbeat", since)
        mine = f"prefect.flow-run.{run.id}"
        return run if any(e["resource"]["prefect.resource.id"] == mine for e in beats) else None

    victim = fleet.wait(f"a running tick of {clinic}", running, 900, every=0.3)
    if victim is None:
        return {**result, "ok": False, "why": "no tick of the clinic ran to kill"}
    killed_wall = datetime.now(UTC)
    killed_at = time.monotonic()
    result["processes_killed"] = home.kill()
    log(f"killed machine {home.name} during {victim.name} ({victim.id})")
    # Every tick the machine had started and not finished: each must be noticed.
    lost = {
        str(r.id): {"clinic": c, "state": r.state_name}
        for c, m in HOMES.items()
        if m == home.name
        for r in fleet.runs(c)
        if r.state and r.state.type.value in {"RUNNING", "PENDING"}
    }
    result["runs_left_unfinished"] = lost
    # Whether the server had a heartbeat from each: a run lost before its first heartbeat reached
    # the server is noticed by its Running state only, which Prefect's automations may see 15
    # minutes late (a run started within 5 minutes of being scheduled: docs/scaling.md, Alerts).
    beats = Counter(
        e["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run.")
        for e in fleet.events("prefect.flow-run.heartbeat", killed_wall - timedelta(hours=1))
    )
    for run_id, entry in lost.items():
        entry["heartbeats_recorded_at_kill"] = beats.get(run_id, 0)

    # Each run the machine left unfinished, Running or Submitting: when it ended (seconds after
    # the kill), watched together until the killed tick has ended and the rest have or 3 minutes
    # have passed (a run lost while Submitting is watched from Submitting, relay/alerts.py).
    ended_at: dict = {}

    def crashed():
        with fleet.client() as c:
            for run_id in set(lost) - set(ended_at):
                state = c.read_flow_run(run_id).state
                if state and state.type.value in FINAL:
                    ended_at[run_id] = round(time.monotonic() - killed_at, 1)
            r = c.read_flow_run(victim.id)
        if not (r.state and r.state.type.value in FINAL):
            return None
        return r if set(lost) <= set(ended_at) or time.monotonic() - killed_at > 180 else None

    ended = fleet.wait("the killed tick (and the rest it left) to go Crashed", crashed, timeout)
    result["state"] = ended.state.type.value if ended else "STILL RUNNING"
    result["seconds_to_crashed"] = ended_at.get(str(victim.id)) if ended else None
    for run_id, entry in lost.items():
        entry["seconds_to_final"] = ended_at.get(run_id)
    if ended:
        beats = [
            datetime.fromisoformat(e["occurred"])
            for e in fleet.events("prefect.flow-run.heartbeat", killed_wall - timedelta(hours=1))
            if e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{victim.id}"
        ]
        if beats and ended.state.timestamp:
            result["crashed_seconds_after_its_last_heartbeat"] = round(
                (ended.state.timestamp - max(beats)).total_seconds(), 1
            )
    released = fleet.wait("its slot back", lambda: fleet.slots_taken(clinic) == 0, 30)
    result["slot_released"] = bool(released)
    alerted = fleet.wait(
        f"the alert naming {victim.name}",
        lambda: fleet.webhook.first(str(victim.id), after=killed_at),
        180,
    )
    result["alert_seconds"] = round(alerted - killed_at, 1) if alerted else None

    # The move: `relay clinic move` where the database is (the lost machine's disk survived its
    # worker), then `relay clinic restore` on the new home (docs/scaling.md, "Moving a clinic").
    moving_at = time.monotonic()
    for machine, args in (
        (home, ("clinic", "move", clinic, "--to", target.name)),
        (target, ("clinic", "restore", clinic)),
    ):
        step = machine.relay(*args)
        result["move_exit"] = step.returncode
        result["move_output"] = (step.stdout + step.stderr)[-600:]
        log(f"relay {' '.join(args)} on {machine.name}: exit {step.returncode}")
        if step.returncode != 0:
            return {**result, "ok": False}
    result["move_seconds"] = round(time.monotonic() - moving_at, 1)

    def ticked_there():
        return any(
            r.work_queue_name == target.queue and r.state and r.state.type.value == "COMPLETED"
            for r in fleet.runs(clinic)
        )

    again = fleet.wait(f"{clinic} to complete a tick on {target.name}", ticked_there, timeout, 1)
    result["seconds_until_ticks_again"] = round(time.monotonic() - killed_at, 1) if again else None

    # The clinic left on the lost machine (not moved) completes no tick after the kill: the
    # per-clinic alert must name it once the window has passed since its last completed tick
    # (which may be before the kill, if its tick then was slow). Waited for up to three windows.
    left = next(c for c, m in HOMES.items() if m == home.name and c != clinic)
    result["quiet_alert_for"] = left
    last = last_completed(fleet, left)
    since_last = time.monotonic() - (datetime.now(UTC) - last).total_seconds() if last else 0.0
    quiet = fleet.wait(
        f"the alert naming {left}",
        lambda: fleet.webhook.first(f"no tick of {left} completed", after=since_last),
        max(0.0, killed_at + 3 * QUIET_MINUTES * 60 + 60 - time.monotonic()),
        every=1,
    )
    result["quiet_alert_seconds"] = round(quiet - killed_at, 1) if quiet else None
    result["quiet_alert_after_its_last_tick_seconds"] = (
        round(quiet - since_last, 1) if quiet else None
    )
    with fleet.client() as c:  # every run the machine left unfinished: now Crashed (its type:
        # the lost-run automation names it Lost, a tick that found it Crashed)?
        result["left_unfinished_now"] = {i: c.read_flow_run(i).state_type.value for i in lost}
    result["alerts"] = alerts_since(fleet, killed_at, lost)
    result["notifications_before_the_kill"] = [
        entry for entry in alerts_since(fleet, 0.0, lost, zero=killed_at) if entry["seconds"] < 0
    ]
    result["quiet_alerts_for_clinics_elsewhere"] = sorted(
        {
            a["clinic"]
            for a in result["notifications_before_the_kill"] + result["alerts"]
            if a["alert"] == "no tick completed"
        }
        - {c for c, m in HOMES.items() if m == home.name}
    )
    result["lost_run_automation"] = zombie_actions(fleet, since_deploy(fleet))
    # A live run taken for a dead one: the automation's change accepted for a run the kill did not
    # leave unfinished (refusals are finished runs: harmless).
    result["live_runs_crashed"] = [
        a["run"] for a in result["lost_run_automation"]
        if a["outcome"] == "executed" and a["run"] not in lost
    ]  # fmt: skip
    result["heartbeat_gaps"] = heartbeat_gaps(fleet)
    result["ok"] = bool(result["state"] == "CRASHED" and released and alerted and again and quiet)
    return result


def last_completed(fleet: Fleet, clinic: str) -> datetime | None:
    """When the clinic's last completed tick ended (the server's clock: this machine's)."""
    ends = [
        r.state.timestamp
        for r in fleet.runs(clinic)
        if r.state and r.state.type.value == "COMPLETED" and r.state.timestamp
    ]
    return max(ends) if ends else None


def alerts_since(fleet: Fleet, after: float, lost: dict, zero: float | None = None) -> list[dict]:
    """Every notification after ``after``: when (seconds after ``zero``, by default ``after``),
    which alert, and the run or clinic it names, with what that run was at the kill (``lost``:
    runs the machine left unfinished) and its state now. relay/alerts.py's messages carry the
    run's id."""
    import re

    zero = after if zero is None else zero
    found = []
    for at, payload in fleet.webhook.since(after):
        subject, body = payload.get("subject", ""), payload.get("body", "")
        entry: dict = {"seconds": round(at - zero, 1), "subject": subject[:160]}
        quiet = re.search(r"no tick of (\S+) completed", subject)
        if quiet:
            entry["alert"] = "no tick completed"
            entry["clinic"] = quiet.group(1)
        elif "was lost" in subject or "went silent" in subject:
            entry["alert"] = "a lost run was marked Crashed"
        elif "ran off its home" in subject:
            entry["alert"] = "tick refused"
        else:
            entry["alert"] = "a run failed or crashed"
        run_id = re.search(r"run ([0-9a-f]{8}-[0-9a-f-]{27})", body)
        if run_id:
            entry["run"] = run_id.group(1)
            with contextlib.suppress(Exception), fleet.client() as c:
                run = c.read_flow_run(run_id.group(1))
                entry["run_name"] = run.name
                entry["clinic"] = entry.get("clinic") or (run.parameters or {}).get("clinic")
                entry["run_state_now"] = run.state_name
            entry["at_the_kill"] = (
                f"unfinished ({lost[entry['run']]['state']})"
                if entry["run"] in lost
                else "not running"
            )
        found.append(entry)
    return found


def since_deploy(fleet: Fleet) -> datetime:
    return fleet.started_at - timedelta(minutes=1)


def heartbeat_gaps(fleet: Fleet) -> dict:
    """Seconds between consecutive heartbeats of each run, by their ``occurred`` (stamped in the
    run's process), over the whole run: the margin the lost-run window leaves a live run
    (relay/env.py, CRASH_AFTER_SECONDS) is this window less the longest gap."""
    per_run: dict = defaultdict(list)
    for e in fleet.events("prefect.flow-run.heartbeat", since_deploy(fleet)):
        per_run[e["resource"]["prefect.resource.id"]].append(datetime.fromisoformat(e["occurred"]))
    gaps = sorted(
        (b - a).total_seconds()
        for beats in per_run.values()
        for a, b in zip(sorted(beats), sorted(beats)[1:], strict=False)
    )
    if not gaps:
        return {"runs": len(per_run), "gaps": 0}
    return {
        "runs": len(per_run),
        "gaps": len(gaps),
        "median": round(gaps[len(gaps) // 2], 2),
        "max": round(gaps[-1], 2),
        "window": CRASH_AFTER,
    }


def zombie_actions(fleet: Fleet, since: datetime) -> list[dict]:
    """What the lost-run automation did after ``since``: each run it tried to mark Crashed
    and whether Prefect let it (a run that had already finished stays as it was)."""
    from relay.alerts import ZOMBIE_NAME

    done = []
    names = ["prefect.automation.action.executed", "prefect.automation.action.failed"]
    for event in fleet.events(names, since - timedelta(seconds=5)):
        if event["resource"].get("prefect.resource.name") != ZOMBIE_NAME:
            continue
        payload = event.get("payload", {})
        target = next(
            (
                r["prefect.resource.id"].removeprefix("prefect.flow-run.")
                for r in event.get("related", [])
                if r.get("prefect.resource.role") == "target"
            ),
            None,
        )
        done.append({
            "action": payload.get("action_type"),
            "run": target,
            "outcome": event["event"].rsplit(".", 1)[1],
            "reason": (payload.get("reason") or "")[:200],
        })  # fmt: skip
    return done


def ledger_rows(db: Path) -> list[tuple[str, str]]:
    """(send_key, sent_at) of every sent message in one database (read-only)."""
    import duckdb

    if not db.exists():
        return []
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [
            (k, str(t))
            for k, t in con.execute(
                "SELECT send_key, sent_at FROM state.messages WHERE status = 'sent'"
            ).fetchall()
        ]
    finally:
        con.close()


def count_duplicates(fleet: Fleet) -> dict:
    """Per clinic: outbox files of both machines by send key, and sent ledger rows of both
    machines' databases by send key. A key in two outboxes was sent twice; a key sent in two
    databases at two different moments was sent twice (a moved database carries the same row)."""
    per_clinic = {}
    for clinic in HOMES:
        files = Counter()
        for machine in fleet.machines.values():
            for path in (machine.data / "outbox" / clinic).glob("*.json"):
                with contextlib.suppress(ValueError, OSError):
                    files[json.loads(path.read_text(encoding="utf-8"))["send_key"]] += 1
        sent_at: dict[str, set[str]] = defaultdict(set)
        for machine in fleet.machines.values():
            for key, at in ledger_rows(machine.data / f"{clinic}.duckdb"):
                sent_at[key].add(at)
        per_clinic[clinic] = {
            "outbox_files": sum(files.values()),
            "outbox_duplicates": sum(n - 1 for n in files.values() if n > 1),
            "ledger_sent": len(sent_at),
            "ledger_duplicates": sum(len(t) - 1 for t in sent_at.values() if len(t) > 1),
            "sent_without_ledger_row": len(set(files) - set(sent_at)),
        }
    total = {
        k: sum(c[k] for c in per_clinic.values())
        for k in (
            "outbox_files",
            "outbox_duplicates",
            "ledger_sent",
            "ledger_duplicates",
            "sent_without_ledger_row",
        )  # fmt: skip
    }
    return {
        "ok": total["outbox_duplicates"] == 0
        and total["ledger_duplicates"] == 0
        and total["sent_without_ledger_row"] == 0,
        **total,
        "per_clinic": per_clinic,
    }


SCENARIOS = ("home", "misroute", "kill")


def run(root: Path, use_postgres: bool | None = None) -> dict:
    """The whole proof; returns every scenario's figures (a scenario that raised says why)."""
    begun = time.monotonic()
    figures: dict = {}
    with started(root, use_postgres) as fleet:
        figures["server"] = fleet.server
        figures["setup_seconds"] = round(time.monotonic() - begun, 1)
        # The misrouted tick first, with only machine a running: a run of east's deployment put on
        # a's queue then takes east's one slot at once. With b running too, b's worker asks for
        # the slot for every new scheduled tick, and the slot is not first come, first served
        # across workers: the misrouted run waited 10 min at load 25 and never ran.
        fleet.machines["a"].start()
        for name, scenario in (
            ("misroute", scenario_misroute), ("home", scenario_home), ("kill", scenario_kill),
        ):  # fmt: skip
            if name == "home":
                fleet.machines["b"].start()
            log(f"scenario {name}")
            try:
                figures[name] = scenario(fleet)
            except Exception as exc:  # noqa: BLE001 (reported as the scenario's result)
                figures[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
            log(f"scenario {name}: {json.dumps(figures[name])[:400]}")
        figures["ticks_per_machine"] = {c: dict(fleet.completed_on(c)) for c in HOMES}
        # Every tick run's end state per clinic: a server that cannot keep up (SQLite answering
        # 503 under load) shows as Failed ticks and runs Crashed before they started.
        figures["tick_states"] = {
            c: dict(
                Counter(
                    r.state_name for r in fleet.runs(c) if r.state and r.state.type.value in FINAL
                )
            )
            for c in HOMES
        }
        figures["notes"] = fleet.notes
        for machine in fleet.machines.values():
            machine.stop()  # the databases are read after every tick has ended
        # A run the worker started while it was stopping runs on by itself (Prefect starts each
        # run in a session of its own): its tick ends within minutes and frees the database.
        from tasks.warehouse import in_use

        databases = [m.data / f"{c}.duckdb" for m in fleet.machines.values() for c in HOMES]
        fleet.wait(
            "the last ticks to free their databases",
            lambda: not any(db.exists() and in_use(db) for db in databases),
            600,
            every=2,
        )
        figures["duplicates"] = count_duplicates(fleet)
    figures["total_seconds"] = round(time.monotonic() - begun, 1)
    return figures


def targets(figures: dict) -> list[tuple[str, object, str]]:
    """Each headline figure next to its target (issue 14): (figure, value, target)."""
    home, misroute = figures.get("home", {}), figures.get("misroute", {})
    kill, dup = figures.get("kill", {}), figures.get("duplicates", {})
    return [
        ("ticks away from home", home.get("ticks_away_from_home"), "{} (none)"),
        ("misrouted tick", misroute.get("state"), "FAILED, nothing sent"),
        ("misroute alert, s after the run was made", misroute.get("alert_seconds"), "arrives"),
        ("killed tick Crashed, s after the kill", kill.get("seconds_to_crashed"),
         f"about a minute ({CRASH_AFTER} s of silence after its last heartbeat)"),
        ("every run it left unfinished ended, s after the kill",
         {r: e.get("seconds_to_final") for r, e in kill.get("runs_left_unfinished", {}).items()},
         "each about a minute"),
        ("live runs the lost-run automation crashed", kill.get("live_runs_crashed"), "[] (none)"),
        ("heartbeat gaps of all runs, s", kill.get("heartbeat_gaps"), f"max well under {CRASH_AFTER}"),
        ("its slot released", kill.get("slot_released"), "True"),
        ("alert naming the killed tick, s", kill.get("alert_seconds"), "arrives"),
        (f"alert naming {kill.get('quiet_alert_for')} (left on the lost machine), s",
         kill.get("quiet_alert_seconds"),
         f"<= {QUIET_MINUTES * 60} s after its last completed tick (+ 5 s evaluation)"),
        ("quiet alerts for clinics ticking elsewhere", kill.get("quiet_alerts_for_clinics_elsewhere"),
         "[] (none)"),
        ("moved clinic ticks again on the other machine, s after the kill",
         kill.get("seconds_until_ticks_again"), "a tick"),
        ("duplicates at the outbox / in the ledgers",
         f"{dup.get('outbox_duplicates')} / {dup.get('ledger_duplicates')}", "0 / 0"),
    ]  # fmt: skip


def record(figures: dict, load_at_start: list[float]) -> dict:
    """bench/_results.py's one line in bench/results/machines.jsonl (date, machine, cores,
    commit, load at start and end) with every figure."""
    from bench._results import record as write

    return write("machines", figures, load_at_start=load_at_start)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/machines.py", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres", action="store_true", help="PostgreSQL or fail")
    group.add_argument("--sqlite", action="store_true", help="Prefect's SQLite server")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, DBs)")
    a = parser.parse_args(argv)
    use = True if a.postgres else False if a.sqlite else None
    root = Path(tempfile.mkdtemp(prefix="relay-machines-"))
    os.chmod(root, 0o755)  # PostgreSQL's user must reach its folder inside
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    log(f"load average at start {load_at_start} on {os.cpu_count()} cores")
    try:
        figures = run(root, use)
    finally:
        if a.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    line = record(figures, load_at_start)
    print(json.dumps(line, indent=2))
    print(f"\nserver: {figures.get('server')}; load average {load_at_start} at start, "
          f"{line['load_average']} at the end, {os.cpu_count()} cores")  # fmt: skip
    for name, value, target in targets(figures):
        print(f"  {name}: {value}   (target: {target})")
    return 0 if all(figures.get(s, {}).get("ok") for s in (*SCENARIOS, "duplicates")) else 1


if __name__ == "__main__":
    import relay  # noqa: F401  (offline Prefect defaults, before Prefect is imported)

    sys.exit(main())
