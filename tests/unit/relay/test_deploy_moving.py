"""`relay deploy` leaves a clinic that is being moved to the move (issue 14's operator walk): run
between `relay clinic move --no-wait` and the restore, it used to put the clinic's deployments back
on the old home's queue and resume them, so the old machine's ticks were refused until the move
was done, and after it the new home never saw a tick (its deployments on the old queue)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tasks.home import Home

DEMO = Path(__file__).resolve().parents[3] / "clinics" / "demo" / "clinic.yaml"


@pytest.fixture
def deploy(monkeypatch, tmp_path):
    """`relay deploy` against two clinics, `steady` at home on 'a' and `moving` on its way from
    'b' to 'c'; the server is faked: what would be deployed where is recorded."""
    import prefect.client.orchestration

    # Imported before get_client is faked below: Prefect modules they import (prefect.artifacts)
    # bind get_client when first imported, and would keep the fake for every later test.
    import flows.campaign  # noqa: F401
    import flows.report  # noqa: F401
    import flows.restore  # noqa: F401
    import flows.tick  # noqa: F401
    import relay.cli.deploy as deploy
    import tasks.home

    for clinic in ("steady", "moving"):
        (tmp_path / clinic).mkdir()
        text = DEMO.read_text(encoding="utf-8").replace("clinic: demo", f"clinic: {clinic}", 1)
        (tmp_path / clinic / "clinic.yaml").write_text(text, encoding="utf-8")
    homes = {
        "steady": Home(machine="a", generation=1),
        "moving": Home(machine="b", generation=3, moving_to="c", paused=["d1", "d2"]),
    }
    applied: list[tuple[str, str]] = []
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(tasks.home, "read_home", homes.get)
    monkeypatch.setattr(deploy, "ensure_pool", lambda client, pool: False)
    monkeypatch.setattr(
        deploy,
        "apply",
        lambda client, planned, pool, queue, *_: applied.append((planned.name, queue)),
    )
    monkeypatch.setattr(
        prefect.client.orchestration,
        "get_client",
        lambda sync_client=False: contextlib.nullcontext(
            SimpleNamespace(
                read_deployments=lambda flow_filter: [],
                read_automations_by_name=lambda name: [],
            )
        ),
    )

    def run():
        from relay.cli import app

        result = CliRunner().invoke(app, ["deploy", "--clinics", str(tmp_path)])
        return result, applied

    return run


def test_a_clinic_being_moved_is_left_to_the_move(deploy):
    result, applied = deploy()

    # the steady clinic is deployed on its home's queue as always
    assert ("steady-tick", "machine-a") in applied
    # the moving one is not touched: not back on 'b', not resumed; nor on 'c' ahead of its restore
    assert not [name for name, _ in applied if name.startswith("moving-")], applied
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "moving: being moved from 'b' to 'c'" in output, output
    assert "relay clinic move moving --to c" in output, output
    # and the command says it did not deploy everything
    assert result.exit_code == 1, output
