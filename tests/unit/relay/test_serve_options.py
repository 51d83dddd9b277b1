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


def test_the_sandbox_clock_keeps_to_the_wall_clock_by_default(monkeypatch):
    """The pipeline sends by the wall clock, and the sandbox stamps what happens with its own:
    at the old default of 10 times real time, a booking made m minutes into `relay serve` was
    stamped 9m minutes ahead, so its welcome ("5 minutes after") came due 9m + 5 minutes later
    (49 minutes for one planned 5.5 minutes in) and the fast lane, on in the demo, could not show
    a welcome going at once."""
    from typer.testing import CliRunner

    import relay.serve
    from relay.cli import app

    started: list[list[str]] = []
    monkeypatch.setattr(relay.serve, "supervise", lambda args, *_: started.append(args) or 0)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    [args] = started
    assert float(args[args.index("--speed") + 1]) == 1.0
