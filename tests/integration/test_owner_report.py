"""The owner's weekly report through Postmark (the sandbox, over HTTP, through postmarker): on the
transactional stream, to the owner only, and a crash between sending and recording settled by
Postmark's search by send key, never a second email."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tasks import owner_report
from tests.integration.test_providers import pm_provider
from tests.unit.test_owner_report import NOW, TZ, _send, config
from tests.unit.triggers.test_plan import Clinic

pytestmark = pytest.mark.integration


@pytest.fixture
def postmark():
    from sandbox.postmark import PostmarkSandbox

    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


def test_the_report_goes_on_the_transactional_stream_once_even_across_a_crash(postmark):
    clinic = Clinic()
    clinic.patient(1)
    clinic.build(NOW)
    provider = pm_provider(postmark)
    week = owner_report.week_for("test", config().report, TZ, NOW)
    assert _send(clinic.con, week, provider, NOW, crash_before_record=True) == "crashed"
    assert owner_report.current(clinic.con, week)["status"] == "sending"
    # the next run, a minute later: Postmark is asked by send key and has it
    assert _send(clinic.con, week, provider, NOW + timedelta(minutes=1)) == "sent"
    (sent,) = postmark.accepted
    assert (sent["To"], sent["MessageStream"], sent["Tag"]) == (
        "owner@clinic.example", "outbound", "owner-report",
    )  # fmt: skip
    assert sent["Metadata"] == {"send_key": week.send_key}
    assert "<svg" in sent["HtmlBody"] and "Bookings won" in sent["TextBody"]
    row = owner_report.current(clinic.con, week)
    assert row["provider_message_id"] == sent["MessageID"]
    clinic.con.close()
