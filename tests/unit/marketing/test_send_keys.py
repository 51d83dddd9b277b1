"""Journey send keys last the clinic's life: they name what the message is (journey, patient, the
patient's k-th entry or the anniversary's year, step), never a counter of one database, so the
same clinic planned on two databases names each message the same way; and a database made before
that keeps the keys its enrolments were made with (nothing queued or sent goes again)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tasks.warehouse import ensure_schema

_spec = importlib.util.spec_from_file_location(
    "journey_clinic", Path(__file__).with_name("journey_clinic.py")
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)
Clinic = journey_clinic.Clinic

RECALL = {
    "name": "recall",
    "entry": {"enters_segment": "recall_90_179"},
    "steps": [
        {"send": "email", "template": "recall-checkin"},
        {"wait": "2 days"},
        {"send": "email", "template": "recall-checkin"},
    ],
    "reentry": "after_leaving",
}
BIRTHDAY = {
    "name": "birthday",
    "entry": {"date_field": "date_of_birth", "at": "09:00"},
    "steps": [{"send": "email", "template": "birthday"}],
    "reentry": "after_leaving",
}


def _history(clinic: Clinic) -> list[str]:
    """Two patients: one enters the recall band, leaves it and comes back (two enrolments);
    one has a birthday. Returns the send keys the ledger holds, sorted."""
    cfg = clinic.cfg(journeys=[RECALL, BIRTHDAY])
    clinic.patient(1)
    clinic.visit(1, days_ago=89.5)
    clinic.patient(2, born="1985-11-05")
    clinic.visit(2, days_ago=1)
    clinic.tick(cfg)  # go-live
    clinic.tick(cfg, days=1)  # 1 enters the band; its first email
    booked = clinic.book(1, days_ahead=3)
    clinic.tick(cfg, days=1)  # 1 leaves
    clinic.cancel(booked)
    clinic.tick(cfg, days=1)  # 1 comes back (second enrolment); 2's birthday (5 Nov, 09:00)
    clinic.tick(cfg, days=2, build=False)
    return sorted(k for k, *_ in clinic.all_messages())


def test_the_same_clinic_planned_on_two_fresh_databases_gets_the_same_send_keys():
    first = Clinic()
    second = Clinic()
    # The second database's counters are elsewhere (another machine, another history of
    # membership events and enrolments): nothing of them may reach a key.
    for sequence in ("journey_enrolment_seq", "membership_event_seq", "message_seq"):
        second.con.execute(f"SELECT nextval('state.{sequence}') FROM range(37)")
    keys = _history(first)
    assert keys == _history(second)
    assert keys == [
        "journey:birthday:2:y2026:s0",
        "journey:recall:1:n1:s0",
        "journey:recall:1:n2:s0",
        "journey:recall:1:n2:s2",
    ]


def test_a_database_from_before_keeps_its_enrolments_keys_and_sends_nothing_twice():
    clinic = Clinic()
    cfg = clinic.cfg(journeys=[{**RECALL, "steps": RECALL["steps"]}])
    clinic.patient(1)
    clinic.visit(1, days_ago=89.5)
    clinic.tick(cfg)
    clinic.tick(cfg, days=1)  # enrols, the first email goes
    (enrolment_id,) = clinic.con.execute(
        "SELECT enrolment_id FROM state.journey_enrolments"
    ).fetchone()
    # As the file was before the upgrade: no entry_key, the message under the old key.
    clinic.con.execute("UPDATE state.journey_enrolments SET entry_key = NULL")
    clinic.con.execute(
        "UPDATE state.messages SET send_key = ?", [f"journey:recall:1:e{enrolment_id}:s0"]
    )
    ensure_schema(clinic.con)  # the upgrade: what every writable open runs

    assert clinic.con.execute("SELECT entry_key FROM state.journey_enrolments").fetchall() == [
        (f"e{enrolment_id}",)
    ]
    clinic.tick(cfg, days=1, build=False)
    clinic.tick(cfg, days=2, build=False)
    assert [(k, s) for k, s, *_ in clinic.all_messages()] == [
        (f"journey:recall:1:e{enrolment_id}:s0", "sent"),
        (f"journey:recall:1:e{enrolment_id}:s2", "sent"),
    ]
