"""An unsubscribe stops marketing at once, even when the endpoint took the click while a tick
held the clinic's database (it waits in the inbox beside the database, tasks/feedback.py): the
dispatch that comes next (the tick's, the dispatch flow's, the fast lane's: all send through
tasks.due) records the waiting clicks before anything goes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import pytest

from tasks import feedback
from tasks.due import send_due
from tasks.marketing import journeys
from tasks.providers.outbox import OutboxProvider
from tasks.unsubscribe.tokens import UnsubscribeClaim
from tasks.warehouse import ensure_schema

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location(
    "journey_clinic",
    Path(__file__).resolve().parents[1] / "unit" / "marketing" / "journey_clinic.py",
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)

SERIES = {
    "name": "new-patient",
    "entry": {"enters_segment": "new_patients"},
    "steps": [
        {"send": "email", "template": "new-patient-welcome"},
        {"wait": "1 day"},
        {"send": "email", "template": "new-patient-tips"},
    ],
}


def test_a_click_taken_during_a_tick_stops_the_marketing_that_tick_would_send(tmp_path, data_dir):
    db = tmp_path / "clinic.duckdb"
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    ensure_schema(con)
    clinic = journey_clinic.Clinic(con, journeys=[SERIES], database=db)
    clinic.build()
    journeys.run_journeys(con, clinic.cfg(), clinic.now)  # go-live: nobody before it enrols
    clinic.patient(4)
    clinic.visit(4, days_ago=0.1)
    clinic.tick(minutes=5)  # enrols patient 4; the welcome goes
    [welcome] = clinic.messages(status="sent", patient_id=4)

    # a day later, while the tick holds the database, patient 4 clicks the welcome's link: the
    # endpoint cannot wait for the database, so the click waits in the inbox ("received")
    clinic.advance(days=1, minutes=1)
    inbox = feedback.inbox_path(db)
    feedback.spool_unsubscribe(
        inbox, UnsubscribeClaim("test", 4, welcome.message_id, "email"), clinic.now
    )
    # ... and the same tick goes on: build, journeys (the tips step is due), dispatch
    clinic.build()
    journeys.run_journeys(con, clinic.cfg(), clinic.now)
    provider = OutboxProvider(tmp_path / "outbox", email_from="T <t@example.com>", sms_from="T")
    send_due(con, clinic.cfg(), {"email": provider}, lambda: clinic.now, {})

    assert [m.template for m in clinic.messages(status="sent", patient_id=4)] == [
        "new-patient-welcome"
    ]
    assert con.execute(
        "SELECT reason, source FROM state.current_suppressions WHERE channel = 'email'"
    ).fetchall() == [("unsubscribed", "unsubscribe_link")]
    assert inbox.read_text() == ""  # recorded once: the feedback step finds nothing left
    con.close()
