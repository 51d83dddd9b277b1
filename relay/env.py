"""Process-wide defaults that must be in place before Prefect is imported.

Prefect's telemetry reaches for the internet and its ephemeral server needs more than the default
20 s to start on a loaded 2-core box (docs/reference.md, Prefect). Values already in the
environment win, so an operator can point at a real server with PREFECT_API_URL.
"""

from __future__ import annotations

import os

from tasks.paths import PROJECT_ROOT, clinics_dir, data_dir

__all__ = [
    "CRASH_AFTER_SECONDS",
    "HEARTBEAT_SECONDS",
    "PROJECT_ROOT",
    "apply_defaults",
    "clinics_dir",
    "data_dir",
]

# Seconds between a run's heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY below, and in the env of
# every deployment relay deploy makes): Prefect's least (its setting refuses less, and the
# engine's MINIMUM_HEARTBEAT_INTERVAL raises it to 30 anyway).
HEARTBEAT_SECONDS = 30
# How long without a heartbeat before a run counts as lost: two intervals, so a live run's next
# heartbeat may be a whole interval (30 s) late before it is taken for a dead one. A heartbeat is
# timed by its ``occurred`` (stamped in the run's process when sent), and Prefect evaluates the
# window every 5 s (PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY) as of the time of the events it
# has processed, so a server slow to process events does not fire early. A run killed u seconds
# after a heartbeat (0 <= u < 30) is Crashed 60 - u (+ up to 5) seconds after the kill: 30-65 s.
# The lost-run automation's window (relay/alerts.py; relay alerts create --crash-after-seconds).
CRASH_AFTER_SECONDS = 2 * HEARTBEAT_SECONDS

DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    # The CLI prints its own summaries; Prefect's state chatter belongs in the UI.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # ...so the runs' own loggers still send INFO and up to the API (the run's Logs tab; counts
    # and names of triggers, never a patient's details), while the terminal shows warnings only.
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    # A run's heartbeat every 30 s (Prefect's default is 180), so the lost-run automation of
    # relay/alerts.py never takes a live run for a dead one (HEARTBEAT_SECONDS above).
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
}


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
