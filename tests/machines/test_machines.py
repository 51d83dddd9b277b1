"""Two machines against one Prefect server (scripts/machines.py): the home rule, a misrouted tick,
a killed machine and a moved clinic, and each message sent once. Marked ``machines``: its own
group, not part of ``make test`` (a few minutes; ``make machines`` runs the same with figures).

The whole run happens once for the module (``proof``); each test reads one scenario's result, so
a scenario that fails says which part of the proof is missing. On this machine it uses
PostgreSQL when ``initdb`` is found; ``RELAY_MACHINES_SQLITE=1`` forces Prefect's SQLite server
(the CI machine has no PostgreSQL and gets SQLite anyway).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Minutes on a quiet machine; on a loaded one (load 25 on 2 cores) a tick takes 3 min, not 5 s.
pytestmark = [pytest.mark.machines, pytest.mark.timeout(2700)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _harness():
    spec = importlib.util.spec_from_file_location(
        "machines_harness", PROJECT_ROOT / "scripts" / "machines.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def proof():
    harness = _harness()
    # Not pytest's temp folder: its parents are private to this user, and PostgreSQL runs as
    # its own user when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="relay-machines-"))
    root.chmod(0o755)
    sqlite = os.environ.get("RELAY_MACHINES_SQLITE") == "1"
    try:
        figures = harness.run(root, use_postgres=False if sqlite else None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    return figures


def test_every_clinic_ticks_on_its_home_only(proof):
    home = proof["home"]
    assert home["ok"], home
    assert not home["ticks_away_from_home"]


def test_a_misrouted_tick_refuses_and_alerts(proof):
    misroute = proof["misroute"]
    assert misroute["state"] == "FAILED", misroute
    assert misroute["events"] >= 1, misroute
    assert misroute["alert_seconds"] is not None, misroute
    assert misroute["sent_from_wrong_machine"] == 0, misroute


def test_a_killed_machine_is_noticed_and_its_clinic_moves(proof):
    kill = proof["kill"]
    assert kill.get("state") == "CRASHED", kill
    assert kill.get("slot_released"), kill
    assert kill.get("alert_seconds") is not None, kill
    assert kill.get("move_exit") == 0, kill
    assert kill.get("seconds_until_ticks_again") is not None, kill
    # Every run the lost machine left unfinished is Crashed, not Running for good.
    assert set(kill["left_unfinished_now"].values()) == {"CRASHED"}, kill
    # ...and no live run was taken for a lost one (heartbeats late beyond the window's margin).
    assert kill["live_runs_crashed"] == [], kill


def test_the_clinic_left_on_the_lost_machine_is_named(proof):
    kill = proof["kill"]
    assert kill.get("quiet_alert_seconds") is not None, kill
    notifications = kill["notifications_before_the_kill"] + kill["alerts"]
    named = {a.get("clinic") for a in notifications if a["alert"] == "no tick completed"}
    assert kill["quiet_alert_for"] in named, notifications
    # A clinic ticking on the other machine all along is not named.
    assert not kill["quiet_alerts_for_clinics_elsewhere"], kill["alerts"]


def test_no_message_is_sent_twice(proof):
    duplicates = proof["duplicates"]
    assert duplicates["outbox_files"] > 0, "nothing was sent: the proof proves nothing"
    assert duplicates["outbox_duplicates"] == 0, duplicates
    assert duplicates["ledger_duplicates"] == 0, duplicates
    assert duplicates["sent_without_ledger_row"] == 0, duplicates
