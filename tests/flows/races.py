"""Two machines' `relay` commands at the same moment on one Prefect server, each a process of
its own (its own RELAY_MACHINE and data directory), both reading the clinic's home before either
writes it: the claim, move and restore races (test_claim_race.py, test_move_race.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# `relay <args>`, held after its first read of the home until the other machine's command has
# read it too: the two reads come before either write, every time. RACE_HOLD names a step of
# tasks.home (a move's backup_database, a restore's restore_database) held until the other
# command has ended, so the other's writes come between this one's first read and its own
# writes, every time (at most 20 s: a command waiting for a lock this one holds never ends).
RELAY = """
import os, sys, time
from pathlib import Path

import tasks.home

read, met = tasks.home.PrefectHomes.read, Path(os.environ["RACE_DIR"])
done, hold = met.with_name("done"), os.environ.get("RACE_HOLD")

def held(step):
    def until_the_other_ended(*args, **kwargs):
        deadline = time.monotonic() + 20
        while not list(done.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return step(*args, **kwargs)
    return until_the_other_ended

if hold:
    setattr(tasks.home, hold, held(getattr(tasks.home, hold)))

def read_then_meet(self, clinic):
    found = read(self, clinic)
    if not (met / os.environ["RELAY_MACHINE"]).exists():
        (met / os.environ["RELAY_MACHINE"]).touch()
        deadline = time.monotonic() + 60
        while len(list(met.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return found

tasks.home.PrefectHomes.read = read_then_meet
sys.argv = ["relay", *sys.argv[1:]]
from relay.cli import main
try:
    main()
finally:
    (done / os.environ["RELAY_MACHINE"]).touch()
"""


def race(prefect_server, root: Path, commands: dict[str, list[str]], hold: dict) -> dict:
    """Each machine's command started at once, ``hold`` {machine: step} holding a step of one
    until the other has ended; {machine: (output, exit code)}."""
    (root / "met").mkdir()
    (root / "done").mkdir()
    procs = {
        machine: subprocess.Popen(
            [sys.executable, "-c", RELAY, *args],
            env={
                **prefect_server,
                "RELAY_MACHINE": machine,
                "RACE_DIR": str(root / "met"),
                "RACE_HOLD": hold.get(machine, ""),
                "RELAY_DATA_DIR": str(root / machine),
                "RELAY_BACKUP_DIR": str(root / "backups"),
                "RELAY_CLINICS_DIR": str(root / "clinics"),
                "PYTHONPATH": str(PROJECT_ROOT),
            },
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for machine, args in commands.items()
    }
    return {m: (p.communicate(timeout=300)[0], p.returncode) for m, p in procs.items()}
