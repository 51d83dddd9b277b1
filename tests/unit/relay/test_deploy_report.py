"""`relay deploy` and the owner's weekly report: the report deployment exists only while
clinic.yaml has a `report:` section (docs/scaling.md, Deploying). With the section taken out, a
re-deploy left the deployment of an earlier deploy in place, and it failed every week asking
for the section back."""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

DEMO = Path(__file__).resolve().parents[3] / "clinics" / "demo" / "clinic.yaml"


class Server:
    """The deployments on a faked server: names, and which were deleted."""

    def __init__(self, *names: str, quiet_minutes: float | None = None) -> None:
        self.deployments = {name: uuid.uuid4() for name in names}
        self.deleted: list[str] = []
        self.quiet_minutes = quiet_minutes  # the "no tick completed" automation's window

    def read_automations_by_name(self, name: str) -> list:
        from datetime import timedelta

        from relay.alerts import QUIET_NAME

        if name != QUIET_NAME or self.quiet_minutes is None:
            return []
        return [
            SimpleNamespace(trigger=SimpleNamespace(within=timedelta(minutes=self.quiet_minutes)))
        ]

    def read_deployment_by_name(self, name: str):
        from prefect.exceptions import ObjectNotFound

        if name not in self.deployments:
            raise ObjectNotFound(http_exc=Exception(name))
        return SimpleNamespace(id=self.deployments[name])

    def read_deployments(self, flow_filter) -> list:
        (flow,) = flow_filter.name.any_
        return [
            SimpleNamespace(
                name=name.split("/")[1], parameters={"clinic": name.split("/")[1].rsplit("-", 1)[0]}
            )
            for name in self.deployments
            if name.startswith(f"{flow}/")
        ]

    def delete_deployment(self, deployment_id) -> None:
        name = next(n for n, i in self.deployments.items() if i == deployment_id)
        self.deleted.append(name)
        del self.deployments[name]


@pytest.fixture
def deploy(monkeypatch, tmp_path):
    """`relay deploy` of two clinics: `owned` with a report: section, `plain` without one."""
    import prefect.client.orchestration

    # Imported before get_client is faked below: Prefect modules they import (prefect.artifacts)
    # bind get_client when first imported, and would keep the fake for every later test.
    import flows.campaign  # noqa: F401
    import flows.report  # noqa: F401
    import flows.restore  # noqa: F401
    import flows.tick  # noqa: F401
    import relay.cli.deploy as deploy
    import tasks.home

    text = DEMO.read_text(encoding="utf-8")
    without = re.sub(r"\nreport:\n(  .*\n)+", "\n", text)
    assert "report:" not in without.replace("# ", "")
    for clinic, body in (("owned", text), ("plain", without)):
        (tmp_path / clinic).mkdir()
        (tmp_path / clinic / "clinic.yaml").write_text(
            body.replace("clinic: demo", f"clinic: {clinic}", 1), encoding="utf-8"
        )
    applied: list[str] = []
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(tasks.home, "read_home", lambda clinic: None)
    monkeypatch.setattr(deploy, "ensure_pool", lambda client, pool: False)
    monkeypatch.setattr(deploy, "apply", lambda client, planned, *_: applied.append(planned.name))

    def run(server: Server):
        monkeypatch.setattr(
            prefect.client.orchestration,
            "get_client",
            lambda sync_client=False: contextlib.nullcontext(server),
        )
        from relay.cli import app

        result = CliRunner().invoke(app, ["deploy", "--clinics", str(tmp_path), "--home", "a"])
        return result, applied

    return run


def test_the_report_deployment_goes_with_the_report_section(deploy):
    server = Server("owner-report/owned-report", "owner-report/plain-report")
    result, applied = deploy(server)

    assert result.exit_code == 0, result.output
    assert "owned-report" in applied and "plain-report" not in applied
    assert server.deleted == ["owner-report/plain-report"]
    assert (
        "plain: deleted owner-report/plain-report (clinic.yaml has no report: section)"
        in result.output
    ), result.output


def test_a_clinic_that_never_had_a_report_deletes_nothing(deploy):
    server = Server()
    result, _ = deploy(server)

    assert result.exit_code == 0, result.output
    assert server.deleted == [] and "deleted" not in result.output


def test_a_copied_folder_still_naming_another_clinic_deploys_nothing(deploy, tmp_path):
    """A copy of a clinic folder whose `clinic:` line was not changed deployed as the clinic it
    names (its runs load that clinic's folder), whatever --clinics folder it was in."""
    (tmp_path / "copy").mkdir()
    text = (tmp_path / "owned" / "clinic.yaml").read_text(encoding="utf-8")
    (tmp_path / "copy" / "clinic.yaml").write_text(text, encoding="utf-8")
    result, applied = deploy(Server())

    assert result.exit_code != 0 and applied == []
    assert "clinic: owned is not its folder's name (copy)" in str(result.exception), result.output


def test_the_deployments_of_a_clinic_whose_folder_is_gone_are_named_not_deleted(deploy):
    """A clinic that left (its folder removed, then `relay deploy`) kept its deployments: its
    ticks failed every 5 minutes, each with an alert saying to create its clinic.yaml, and the
    deploy said nothing. They are named, with how to delete them; deleting is left to a person
    (a mistyped --clinics would otherwise take every clinic's)."""
    server = Server("clinic-tick/gone-tick", "campaign/gone-campaign", "clinic-tick/owned-tick")
    result, _ = deploy(server)

    assert result.exit_code == 0, result.output
    said = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "clinic-tick/gone-tick, campaign/gone-campaign: a clinic that left?" in said, said
    assert "prefect deployment delete" in said and "owned-tick:" not in said
    assert "clinic-tick/gone-tick" in server.deployments  # named, not deleted


def test_two_clinics_whose_names_differ_only_in_dash_and_underscore_deploy_nothing(
    deploy, tmp_path
):
    """`acme-east` and `acme_east` are both valid clinic names, but their home records are one
    Prefect Variable (relay_home_acme_east): `relay clinic claim acme_east` answered "already
    lives on 'a'" (acme-east's home), each clinic's ticks were refused as the other's, and a
    claim --fresh of one took the other's home. The fleet is refused before anything deploys."""
    text = (tmp_path / "plain" / "clinic.yaml").read_text(encoding="utf-8")
    for clinic in ("acme-east", "acme_east"):
        (tmp_path / clinic).mkdir()
        (tmp_path / clinic / "clinic.yaml").write_text(
            text.replace("clinic: plain", f"clinic: {clinic}", 1), encoding="utf-8"
        )
    result, applied = deploy(Server())

    assert result.exit_code != 0 and applied == []
    said = str(result.exception)
    assert "acme-east and acme_east" in said and "relay_home_acme_east" in said, result.output
    assert "Rename one" in said


def test_a_clinic_ticking_too_seldom_for_the_quiet_alert_is_told_how_to_widen_it(deploy, tmp_path):
    """`relay alerts create` made the "no tick completed" window from the clinics deployed then
    (15 minutes for 5-minute ticks). A clinic deployed since with 30-minute ticks was named
    "no tick completed in 15 minutes" between every two ticks that came on time, and nothing
    said why; the deploy now says so, and how to widen the window."""
    path = tmp_path / "plain" / "clinic.yaml"
    path.write_text(
        path.read_text(encoding="utf-8") + "\nschedule:\n  tick_every_minutes: 30\n",
        encoding="utf-8",
    )
    result, _ = deploy(Server(quiet_minutes=15))
    assert result.exit_code == 0, result.output
    said = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "alert names a clinic after 15 minutes" in said, said
    assert "(plain ticks every 30 minutes)" in said and "owned ticks" not in said
    assert "--quiet-minutes 90" in said

    result, _ = deploy(Server(quiet_minutes=90))  # wide enough: nothing to say
    said = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0 and "warning" not in said, said
