"""Process-wide defaults that must be in place before Prefect is imported.

Prefect's telemetry reaches for the internet and its ephemeral server needs more than the default
20 s to start on a loaded 2-core box (docs/reference.md, Prefect). Values already in the
environment win, so an operator can point at a real server with PREFECT_API_URL.
"""

from __future__ import annotations

import os

from tasks.paths import PROJECT_ROOT, clinics_dir, data_dir

__all__ = ["PROJECT_ROOT", "apply_defaults", "clinics_dir", "data_dir"]

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
    # A run's heartbeat every 30 s (Prefect's minimum; its default is 180), so the lost-run
    # automation of relay/alerts.py (90 s) never takes a live run for a dead one.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
