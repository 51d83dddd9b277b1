"""`relay serve`'s options are checked before anything starts, as `relay sandbox`'s are: a tick
interval Prefect cannot schedule (`--every 0`) started the server, the sandbox and the outbox,
then ended in pydantic's ValidationError in .prefect/serve.log only; `--speed -1` served a
sandbox whose clock thread had died of a traceback (the clinic never changed again)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "option, value",
    [
        ("--every", "0"),
        ("--every", "-1"),
        ("--every", "0.5"),
        ("--speed", "-1"),
        ("--patients", "-5"),
        ("--port", "70000"),
    ],
)
def test_an_option_out_of_range_is_refused_before_anything_starts(monkeypatch, option, value):
    from typer.testing import CliRunner

    import relay.serve
    from relay.cli import app

    def supervise(*_args, **_kwargs):
        raise AssertionError("relay serve started with an option it should have refused")

    monkeypatch.setattr(relay.serve, "supervise", supervise)
    result = CliRunner().invoke(app, ["serve", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output, result.output
    assert "Traceback" not in result.output
