"""`relay deploy` run again leaves what an operator paused in Prefect paused, and says so: it used
to send ``paused=False`` and replace the schedules active, so a re-deploy for an unrelated
clinic.yaml change silently resumed a clinic paused on purpose (a data problem, a closure) and it
ticked and sent again. ``--resume-paused`` resumes them, on purpose."""

from __future__ import annotations

import subprocess

import pytest

from tests.flows.conftest import MACHINE, PROJECT_ROOT, RELAY, unschedule

pytestmark = [pytest.mark.prefect]

TICK = "clinic-tick/alpha-tick"


def redeploy(env: dict, *args: str) -> str:
    """`relay deploy` of the test clinics again, as an operator would; its output."""
    result = subprocess.run(
        [RELAY, "deploy", "--home", MACHINE, *args],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"relay deploy failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def schedules(client) -> dict[str, bool]:
    return {s.slug: s.active for s in client.read_deployment_by_name(TICK).schedules}


@pytest.fixture
def alpha_paused(deployed, client):
    """alpha's tick deployment paused by an operator (the Prefect UI's toggle), its nightly
    reconcile switched off, its interval schedule on; as the session had it again afterwards
    (active, every schedule off, no scheduled run: tests/flows/conftest.py, deployed)."""
    tick = client.read_deployment_by_name(TICK)
    client.pause_deployment(tick.id)
    for schedule in tick.schedules:
        client.update_deployment_schedule(
            tick.id, schedule.id, active=schedule.slug != "nightly-reconcile",
            parameters=schedule.parameters,
        )  # fmt: skip
    try:
        yield tick
    finally:
        client.resume_deployment(tick.id)
        unschedule(client)


def test_a_redeploy_leaves_a_paused_deployment_and_schedule_paused_and_says_so(
    deployed, client, alpha_paused
):
    output = redeploy(deployed)

    assert client.read_deployment_by_name(TICK).paused
    assert schedules(client) == {"every-5-minutes": True, "nightly-reconcile": False}
    [line] = [x for x in output.splitlines() if x.startswith("alpha: left ")]
    assert line.startswith(
        f"alpha: left {TICK} and its schedule nightly-reconcile paused, as before this deploy"
    ), line
    nightly = client.read_deployment_by_name(TICK).schedules
    nightly_id = next(s.id for s in nightly if s.slug == "nightly-reconcile")
    assert "its toggle on the Prefect UI's Deployments page" in line
    assert f"`prefect deployment schedule resume {TICK} {nightly_id}`" in line
    assert "`relay deploy --resume-paused`" in line
    # beta's deployment is not paused, its schedules are (the session's unschedule): said so
    assert not client.read_deployment_by_name("clinic-tick/beta-tick").paused
    assert (
        "beta: left clinic-tick/beta-tick's schedules every-5-minutes, nightly-reconcile paused"
    ) in output, output


def test_resume_paused_resumes_them(deployed, client, alpha_paused):
    output = redeploy(deployed, "--resume-paused")

    assert not client.read_deployment_by_name(TICK).paused
    assert schedules(client) == {"every-5-minutes": True, "nightly-reconcile": True}
    assert f"alpha: resumed {TICK} and its schedule nightly-reconcile" in output, output
    assert "alpha: left " not in output, output
