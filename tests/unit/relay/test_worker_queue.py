"""`relay worker` without --queue serves this machine's queue only, never every queue of the pool
(a worker on every queue takes other machines' ticks, which then refuse: not their home)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


class _Started(Exception):
    pass


@pytest.fixture
def made(monkeypatch):
    import relay.worker

    seen: dict = {}

    class Fake:
        name = "fake"
        running: dict = {}

        def __init__(self, **kwargs):
            seen.update(kwargs)

        async def start(self, printer=None):
            raise _Started

    monkeypatch.setattr(relay.worker, "RelayWorker", Fake)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    return seen


def _run(*args: str):
    from relay.cli import app

    return CliRunner().invoke(app, ["worker", *args])


def test_without_queue_it_serves_this_machines_queue(made, monkeypatch):
    monkeypatch.setenv("RELAY_MACHINE", "box-2")
    result = _run("--pool", "local")
    assert isinstance(result.exception, _Started), result.output
    assert made["work_queues"] == ["machine-box-2"]
    assert "local/machine-box-2" in result.output


def test_a_named_queue_is_served_as_given(made, monkeypatch):
    monkeypatch.setenv("RELAY_MACHINE", "box-2")
    result = _run("--queue", "machine-box-3")
    assert isinstance(result.exception, _Started), result.output
    assert made["work_queues"] == ["machine-box-3"]
