"""Shared test setup. Keep this import-light: Prefect's test harness and the sandbox are imported
inside the fixtures that need them, so pure unit tests start in well under a second."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# Before anything imports Prefect: a throwaway PREFECT_HOME, offline, quiet. Removed when the
# process exits: registered before Prefect's own exit handlers, it runs after them.
_PREFECT_HOME = tempfile.mkdtemp(prefix="relay-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
# Started in the background (`make test &`, a script without job control, nohup), the tests
# inherit SIGINT (and under nohup SIGHUP) ignored, and so does every process they start: the
# tests of what Ctrl-C or a hangup does then saw it do nothing. A handler here is reset to the
# default in each process they start; the tests themselves still ignore a hangup.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda signum, frame: None)

import pytest  # noqa: E402

import relay  # noqa: E402,F401


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A private data directory: clinic databases and the outbox land here, not in ./data."""
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    return tmp_path


# Test directories whose tests share one expensive session fixture (a Prefect server).
SHARED_SESSION_AREAS = {"flows"}
TESTS_ROOT = os.path.dirname(os.path.abspath(__file__))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``), each module of a shared-session area goes to one
    worker as a group (``--dist loadgroup``): its module fixtures (deployments, a worker, the
    first ticks) are made once, and a worker's session fixtures (its own Prefect server) serve
    every module it is given. The server modules, listed first, start first on every worker, and
    the unit, sandbox and integration tests fill the cores around them: the server tests mostly
    wait on subprocesses, and one worker running all of them in a row was CI's critical path.

    pytest 9.2 keeps node ids as structured ids, and pytest-xdist 3.8.0 still writes the group
    suffix into the old ``_nodeid`` field, so ``xdist_group`` alone groups nothing
    (pytest-dev/pytest-xdist#1386; fix pending in #1388). Until a release carries it, the suffix
    goes into the structured id here, which is what that fix does."""
    loadgroup = getattr(config.option, "loadgroup", False)  # set in xdist workers only
    for item in items:
        area = os.path.relpath(item.path, TESTS_ROOT).split(os.sep)[0]
        if area in SHARED_SESSION_AREAS:
            group = f"{area}-{item.path.stem}"
            item.add_marker(pytest.mark.xdist_group(group))
            if loadgroup and not item.nodeid.endswith("@" + group):
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(f"{item.nodeid}@{group}")


_NICED = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under pytest-xdist, a worker running the unit, sandbox and integration tests lowers its
    own CPU priority once: the Prefect-server group's server, worker and flow-run processes (at
    normal priority, on the other worker) then get the cores they need, instead of a starved
    SQLite server answering 503 "database is locked" to the ticks under test. Nothing is slower
    overall: the niced tests take whatever CPU the server group leaves."""
    global _NICED
    if _NICED or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    area = os.path.relpath(item.path, TESTS_ROOT).split(os.sep)[0]
    if area not in SHARED_SESSION_AREAS:
        os.nice(10)
        _NICED = True
