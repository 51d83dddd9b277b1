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


def _prefect_server_env(monkeypatch, *args: str, **own: str) -> dict:
    """The environment `relay prefect-server ARGS` hands `prefect server start`, with the
    operator's own settings ``own``."""
    from typer.testing import CliRunner

    from relay.cli import app

    seen: dict = {}

    def execve(path, argv, env):
        seen.update(env)
        raise Started

    monkeypatch.setattr("os.execve", execve)
    for name in ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_UI_API_URL",
                 "PREFECT_SERVER_UI_API_URL", "PREFECT_SERVER_API_HOST",
                 "PREFECT_SERVER_API_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in own.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["prefect-server", *args])
    assert isinstance(result.exception, Started), result.output
    return seen


def test_the_ui_and_the_links_in_alerts_follow_the_servers_host_and_port(monkeypatch):
    """Started as the docs say (`relay prefect-server --host H --port P`, no PREFECT_API_URL on
    the server's machine), Prefect's UI called the API on port 4200 whatever --port said, and
    every alert's link to its run read "None" (the server's ui_url filter had no UI address)."""
    env = _prefect_server_env(monkeypatch, "--host", "10.0.0.5", "--port", "4300")
    assert env["PREFECT_UI_URL"] == "http://10.0.0.5:4300"
    assert env["PREFECT_UI_API_URL"] == "http://10.0.0.5:4300/api"
    env = _prefect_server_env(monkeypatch, "--port=4301")
    assert env["PREFECT_UI_URL"] == "http://127.0.0.1:4301"
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4301/api"


def test_the_operators_own_ui_addresses_win_and_a_wildcard_host_is_not_guessed(monkeypatch):
    own = {"PREFECT_UI_URL": "https://prefect.clinic.example",
           "PREFECT_UI_API_URL": "https://prefect.clinic.example/api"}  # fmt: skip
    env = _prefect_server_env(monkeypatch, "--port", "4300", **own)
    assert {name: env[name] for name in own} == own
    env = _prefect_server_env(
        monkeypatch, "--port", "4300", PREFECT_API_URL="http://10.0.0.5:4300/api"
    )  # Prefect derives both from it
    assert "PREFECT_UI_URL" not in env and "PREFECT_UI_API_URL" not in env
    env = _prefect_server_env(monkeypatch, "--host", "0.0.0.0")
    assert "PREFECT_UI_URL" not in env and "PREFECT_UI_API_URL" not in env
