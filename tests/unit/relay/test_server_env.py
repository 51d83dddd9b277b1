"""The Prefect server relay starts (``relay serve``, the benchmarks): a tick put back because the
previous one, in its fast lane, still held the deployment's slot tries again within seconds,
not Prefect's 30 (a gap with no lane polling for bookings); an operator's own value wins."""

from __future__ import annotations

import pytest

from relay import serve

SETTING = "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"


class Started(Exception):
    pass


def server_env(monkeypatch, tmp_path) -> dict:
    seen: dict = {}

    def popen(args, env, **_kwargs):
        seen.update(env)
        raise Started

    monkeypatch.setattr(serve, "port_in_use", lambda port: False)
    monkeypatch.setattr(serve.subprocess, "Popen", popen)
    with pytest.raises(Started), serve.prefect_server(1, home=tmp_path, ui=False):
        pass
    return seen


def test_a_put_back_tick_tries_again_within_seconds(monkeypatch, tmp_path):
    monkeypatch.delenv(SETTING, raising=False)
    assert float(server_env(monkeypatch, tmp_path)[SETTING]) <= 5


def test_the_operators_own_value_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(SETTING, "12")
    assert server_env(monkeypatch, tmp_path)[SETTING] == "12"


def test_relay_prefect_server_is_prefects_with_the_collector_moved_and_the_same_settings(
    monkeypatch,
):
    """`relay prefect-server` (an operator's server) becomes `prefect server start` with its
    options as given, through relay/prefect_server.py, with the settings above."""
    from typer.testing import CliRunner

    from relay.cli import app

    seen: dict = {}

    def execve(path, args, env):
        seen.update(path=path, args=args, env=env)
        raise Started

    monkeypatch.setattr("os.execve", execve)
    monkeypatch.setenv(SETTING, "12")
    result = CliRunner().invoke(app, ["prefect-server", "--host", "10.0.0.5", "--port", "4300"])
    assert isinstance(result.exception, Started)
    assert seen["args"][1:] == [
        "-m", "relay.prefect_server", "server", "start", "--host", "10.0.0.5", "--port", "4300"
    ]  # fmt: skip
    assert seen["env"]["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"].endswith(".filesystem")
    assert seen["env"][SETTING] == "12"
