"""Shared test setup. Keep this import-light: Prefect's test harness and the sandbox are imported
inside the fixtures that need them, so pure unit tests start in well under a second."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Prefect: a throwaway PREFECT_HOME, offline, quiet.
_PREFECT_HOME = tempfile.mkdtemp(prefix="relay-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

import relay  # noqa: E402,F401


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A private data directory: clinic databases and the outbox land here, not in ./data."""
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    return tmp_path
