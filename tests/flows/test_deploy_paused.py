"""`relay deploy` run again leaves what an operator paused in Prefect paused, and says so: it used
to send ``paused=False`` and replace the schedules active, so a re-deploy for an unrelated
clinic.yaml change silently resumed a clinic paused on purpose (a data problem, a closure) and it
ticked and sent again. ``--resume-paused`` resumes them, on purpose. Nor does it touch what did
not change: the other clinics' schedules and their next runs stay as they were."""

from __future__ import annotations

import subprocess
import time

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


def scheduled_runs(client, deployment_id) -> dict:
    """The deployment's scheduled runs: id -> expected start."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"])),
        )
    )
    return {run.id: run.expected_start_time for run in runs}


@pytest.fixture
def alpha_scheduled(deployed, client, clinics):
    """alpha's tick schedules on and its runs scheduled by the server (none taken: the test
    machine's work queue paused); beta's clinic.yaml as the test leaves it is put back and
    deployed again afterwards, and the session's schedules are off again (conftest, deployed)."""
    queue = client.read_work_queue_by_name(f"machine-{MACHINE}", work_pool_name="local")
    client.update_work_queue(queue.id, is_paused=True)
    beta = clinics["beta"].read_text(encoding="utf-8")
    tick = client.read_deployment_by_name(TICK)
    try:
        for schedule in tick.schedules:
            client.update_deployment_schedule(
                tick.id, schedule.id, active=True, parameters=schedule.parameters
            )
        deadline = time.monotonic() + 150  # the scheduler's loop: a minute
        while len(scheduled_runs(client, tick.id)) < 3:
            assert time.monotonic() < deadline, "the server scheduled no run of alpha's tick"
            time.sleep(2)
        yield client.read_deployment_by_name(TICK)
    finally:
        clinics["beta"].write_text(beta, encoding="utf-8")
        redeploy(deployed)
        unschedule(client)
        client.update_work_queue(queue.id, is_paused=False)


def test_a_redeploy_changes_only_what_changed_and_keeps_the_schedules_next_runs(
    deployed, client, clinics, alpha_scheduled
):
    """docs/scaling.md tells an operator to edit one clinic's clinic.yaml and deploy again: it
    deleted and made anew every schedule of every clinic (new ids), anchored every interval at
    the deploy's moment (each clinic's ticks moved: one came early or late) and made all the
    scheduled runs again."""
    runs = scheduled_runs(client, alpha_scheduled.id)
    beta = client.read_deployment_by_name("clinic-tick/beta-tick")
    with clinics["beta"].open("a", encoding="utf-8") as yaml:
        yaml.write(
            'schedule:\n  tick_every_minutes: 10\n  nightly_reconcile: "04:30"\n'
            "  max_lateness_minutes: 12\n"
        )

    output = redeploy(deployed)

    alpha = client.read_deployment_by_name(TICK)
    assert [(s.id, s.schedule, s.active) for s in alpha.schedules] == [
        (s.id, s.schedule, s.active) for s in alpha_scheduled.schedules
    ]
    after = scheduled_runs(client, alpha.id)
    kept = {i: at for i, at in after.items() if i in runs}
    assert kept == runs, "alpha's scheduled runs were deleted or moved"
    # beta's changes are made in place: its schedules keep their ids and what was paused (the
    # session's schedules are off), the new interval taking the old one's place
    changed = client.read_deployment_by_name("clinic-tick/beta-tick")
    assert changed.parameters["max_lateness_minutes"] == 12
    was = {s.slug: s for s in beta.schedules}
    now = {s.slug: s for s in changed.schedules}
    assert now.keys() == {"every-10-minutes", "nightly-reconcile"}
    assert now["every-10-minutes"].id == was["every-5-minutes"].id
    assert now["every-10-minutes"].schedule.interval.total_seconds() == 600
    assert now["nightly-reconcile"].id == was["nightly-reconcile"].id
    assert now["nightly-reconcile"].schedule.cron == "30 4 * * *"
    assert not any(s.active for s in changed.schedules)
    assert (
        "beta: left clinic-tick/beta-tick's schedules every-10-minutes, nightly-reconcile paused"
    ) in output, output
