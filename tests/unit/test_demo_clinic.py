"""The demo clinic's clinic.yaml as a new patient lives it: the insurance welcome (a trigger) and
the new-patient series (a journey) both stay, but never as two "Welcome" emails seconds apart.

Raw rows are written the way the sync writes them, the real models are built (with the segments
the journey reads), then the real planner, journey engine and dispatch run with the demo's own
trigger and journey definitions, through the local outbox."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime, timedelta

import pytest

from tasks.config import load_clinic
from tasks.marketing import campaigns, journeys
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.gate import Gate
from tasks.messages.prepare import by_source_kind
from tasks.messages.templates import Templates
from tasks.models import runner as models
from tasks.providers.outbox import OutboxProvider, list_messages
from tasks.triggers import plan as planning
from tasks.triggers.prepare import Preparer
from tasks.warehouse import RAW_COLUMNS, memory_db, transaction

API = "https://api.au1.cliniko.com/v1"
T = datetime(2026, 11, 3, 1, 0, tzinfo=UTC)  # Tuesday 12:00 in Melbourne (AEDT)
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
INITIAL, TAG, MAIN, ADMIN = 1, 12, 1, 2


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _link(resource: str, id_: int) -> dict:
    return {"links": {"self": f"{API}/{resource}/{id_}"}}


class DemoClinic:
    """The demo's welcome trigger and new-patient journey over a hand-made raw.*."""

    def __init__(self, tmp_path):
        demo = load_clinic("demo")
        self.cfg = demo.model_copy(
            update={
                "triggers": [t for t in demo.triggers if t.name == "welcome-insurance"],
                "journeys": [j for j in demo.journeys if j.name == "new-patient-series"],
                "campaigns": [],
            }
        )
        assert self.cfg.triggers and self.cfg.journeys, "the demo names both"
        self.con = memory_db()
        self.now = T - 2 * DAY
        self.outbox = OutboxProvider(tmp_path, email_from="Demo <d@demo.example>", sms_from="Demo")
        self._written = self.now
        for id_, name in ((MAIN, "Richmond"), (ADMIN, "Admin")):
            self._write("businesses", id_, {"id": str(id_), "business_name": name,
                        "time_zone_identifier": "Australia/Melbourne"})  # fmt: skip
        for id_, name, category in (
            (INITIAL, "Initial Physiotherapy Consultation", "Physiotherapy"),
            (TAG, "Admin - Insurance Patient", "Admin Only"),
        ):
            self._write("appointment_types", id_, {"id": str(id_), "name": name,
                        "category": category})  # fmt: skip
        self._write("practitioners", 7, {"id": "7", "first_name": "Sam", "last_name": "Ex"})

    def _write(self, table: str, id_: int, payload: dict) -> None:
        self._written = max(self.now, self._written + timedelta(milliseconds=1))
        self.con.execute(
            f"INSERT OR REPLACE INTO raw.{table} {RAW_COLUMNS} VALUES (?, NULL, ?, ?, NULL)",
            [id_, json.dumps(payload), self._written],
        )

    def new_patient(self, id_: int, created: datetime) -> None:
        self._write("patients", id_, {
            "id": str(id_), "first_name": f"Pat{id_}", "last_name": "Tester",
            "email": f"patient{id_}@example.com", "created_at": _ts(created), "archived_at": "",
            "accepted_email_marketing": True, "reminder_type": "Email",
            "patient_phone_numbers": [], "date_of_birth": "1980-05-26",
        })  # fmt: skip

    def appointment(self, id_, patient, starts, *, type_id, booked, business=MAIN, arrived=False):
        self._write("individual_appointments", id_, {
            "id": str(id_), "created_at": _ts(booked), "starts_at": _ts(starts),
            "ends_at": _ts(starts + 30 * MIN), "cancelled_at": None, "did_not_arrive": False,
            "patient_arrived": arrived, "archived_at": None, "patient": _link("patients", patient),
            "appointment_type": _link("appointment_types", type_id),
            "business": _link("businesses", business), "practitioner": _link("practitioners", 7),
        })  # fmt: skip

    def tick(self, at: datetime) -> None:
        """What the demo's tick does: build, plan, journeys, dispatch, at ``at``."""
        self.now = at
        models.build(self.con, models.ListSettings.from_config(self.cfg), now=at)
        planning.plan(self.con, self.cfg, at)
        journeys.run_journeys(self.con, self.cfg, at)
        dispatch(
            self.con, providers={"email": self.outbox, "sms": self.outbox},
            prepare=by_source_kind({
                "trigger": Preparer(self.con, self.cfg, clock=lambda: at),
                "journey": journeys.Preparer(self.con, self.cfg),
                "campaign": campaigns.Preparer(self.con, self.cfg),
            }),
            templates=Templates(), gate=Gate.from_config(self.cfg), clock=lambda: at,
            unsubscribe=Unsubscribe("demo", "http://127.0.0.1:8765/unsubscribe", b"k"),
        )  # fmt: skip

    def welcomes(self, patient_id: int) -> list[tuple[datetime, str]]:
        """(sent_at, source) of every email to the patient whose subject starts 'Welcome'."""
        sent = dict(
            self.con.execute(
                "SELECT send_key, sent_at FROM state.messages WHERE status = 'sent' "
                "AND patient_id = ?",
                [patient_id],
            ).fetchall()
        )
        found = []
        for m in list_messages(self.outbox.folder):
            mail = email.message_from_bytes(
                (self.outbox.folder / m["file"]).read_bytes(), policy=email.policy.default
            )
            if m["send_key"] in sent and mail["Subject"].startswith("Welcome"):
                found.append((sent[m["send_key"]], m["source"]))
        return sorted(found)


@pytest.fixture
def clinic(tmp_path):
    c = DemoClinic(tmp_path)
    c.tick(T - DAY)  # the first tick: the trigger and the journey go live, nobody is new yet
    with transaction(c.con):
        planning.activate(c.con, c.cfg.triggers, T - DAY)
    yield c
    c.con.close()


def test_a_new_insurance_patient_never_gets_two_welcome_emails_seconds_apart(clinic):
    # Booked in, tagged as an insurance patient and seen within the hour (the sandbox's
    # new-patient path): both the insurance welcome and the new-patient series are due at once.
    clinic.new_patient(1, created=T - 2 * HOUR)
    clinic.appointment(10, 1, T - 2 * HOUR, type_id=TAG, booked=T - 2 * HOUR, business=ADMIN)
    clinic.appointment(11, 1, T - HOUR, type_id=INITIAL, booked=T - 2 * HOUR, arrived=True)
    for at in (T, T + HOUR, T + DAY, T + DAY + HOUR, T + 2 * DAY):
        clinic.tick(at)

    welcomes = clinic.welcomes(1)
    assert {source for _, source in welcomes} == {
        "trigger welcome-insurance",
        "journey new-patient-series",
    }, "both stay: the insurance note and the series' first email"
    (first, _), (second, _) = welcomes
    assert second - first >= DAY, f"two Welcome emails {second - first} apart"
