"""The generated clinic and its clock, without HTTP: the variety real Cliniko data has, records
shaped like the official examples, determinism, and the changes ``advance`` makes."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from sandbox.cliniko.store import link_id, parse_ts

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cliniko-examples"
RESOURCES = (
    "businesses",
    "practitioners",
    "appointment_types",
    "concession_types",
    "referral_source_types",
    "patients",
    "referral_sources",
    "individual_appointments",
    "group_appointments",
    "attendees",
    "medical_alerts",
    "invoices",
)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T_START = int(START.timestamp())
BASE = "http://sandbox.test/v1"


def ts(value) -> int | None:
    return parse_ts(value)


@pytest.fixture(scope="module")
def data(shared_clinic) -> dict[str, dict[int, dict]]:
    """Every stored record, deleted ones too (lists leave those out; ``snapshot`` is a list)."""
    return {
        name: {
            row_id: orjson.loads(row.body.replace(b"~B~", BASE.encode()))
            for row_id, row in shared_clinic.tables[name].rows.items()
        }
        for name in RESOURCES
    }


@pytest.mark.parametrize(
    ("resource", "example"),
    [
        ("patients", "patients"),
        ("individual_appointments", "individual_appointments"),
        ("group_appointments", "group_appointments"),
        ("attendees", "attendees"),
        ("appointment_types", "appointment_types"),
        ("businesses", "businesses"),
        ("practitioners", "practitioners"),
        ("concession_types", "concession_types"),
        ("referral_sources", "referral_sources"),
        ("referral_source_types", "referral_source_types"),
        ("medical_alerts", "medical_alerts"),
        ("invoices", "invoices"),
    ],
)
def test_records_carry_every_field_of_the_official_example(data, resource, example):
    documented = json.loads((EXAMPLES / f"{example}.json").read_text())["response"][resource][0]
    for record in list(data[resource].values())[:50]:
        assert set(documented) <= set(record), set(documented) - set(record)


def test_ids_are_64_bit_strings_and_foreign_keys_are_links_that_resolve(data):
    for rows in data.values():
        for row_id, record in rows.items():
            assert isinstance(record["id"], str) and int(record["id"]) == row_id < 2**63
            assert record["links"]["self"].startswith(BASE + "/")
    for appointment in data["individual_appointments"].values():
        assert link_id(appointment["patient"]) in data["patients"]
        assert link_id(appointment["practitioner"]) in data["practitioners"]
        assert link_id(appointment["appointment_type"]) in data["appointment_types"]
        assert link_id(appointment["business"]) in data["businesses"]
    bookings = data["individual_appointments"].keys() | data["group_appointments"].keys()
    for attendee in data["attendees"].values():
        assert link_id(attendee["booking"]) in bookings
        assert link_id(attendee["patient"]) in data["patients"]


def test_alerts_and_invoices_belong_to_patients_and_invoices_to_visits(data):
    patients = data["patients"]
    assert all(link_id(a["patient"]) in patients for a in data["medical_alerts"].values())
    bookings = data["individual_appointments"].keys() | data["group_appointments"].keys()
    invoices = sorted(data["invoices"].values(), key=lambda i: (i["created_at"], int(i["id"])))
    for invoice in invoices:
        assert link_id(invoice["patient"]) in patients
        assert link_id(invoice["business"]) in data["businesses"]
        if invoice["appointment"]:
            assert link_id(invoice["appointment"]) in bookings
            assert link_id(invoice["practitioner"]) in data["practitioners"]
    assert [i["number"] for i in invoices] == list(range(1, len(invoices) + 1))
    # Alerts tag about three patients in ten; most visits are invoiced.
    tagged = {link_id(a["patient"]) for a in data["medical_alerts"].values()}
    assert 0.15 < len(tagged) / len(patients) < 0.45
    assert len(invoices) > 0.5 * len(data["individual_appointments"])


def test_businesses_span_time_zones_and_countries(data):
    businesses = data["businesses"].values()
    assert 2 <= len(businesses) <= 4
    zones = {b["time_zone_identifier"] for b in businesses}
    assert zones <= {
        "Australia/Melbourne",
        "Australia/Perth",
        "Pacific/Auckland",
        "Australia/Brisbane",
    }
    assert len(zones) >= 2
    assert {b["country_code"] for b in businesses} <= {"AU", "NZ"}


def test_appointment_types_include_the_admin_only_tagging_type_and_archived_types(data):
    types = list(data["appointment_types"].values())
    tag = next(t for t in types if t["name"] == "Admin - Insurance Patient")
    assert tag["category"] == "Admin Only"
    assert {t["category"] for t in types} >= {"Physiotherapy", "Massage", "Pilates", "Admin Only"}
    assert any(t["archived_at"] for t in types)
    tagged = [
        a for a in data["individual_appointments"].values()
        if link_id(a["appointment_type"]) == int(tag["id"])
    ]  # fmt: skip
    assert tagged, "some patients are tagged by booking them into the admin type (seed 000)"


def test_practitioners_are_active_and_inactive(data):
    assert Counter(p["active"] for p in data["practitioners"].values()).keys() == {True, False}


def test_patients_have_the_variety_of_real_clinic_data(data):
    patients = list(data["patients"].values())
    emails = Counter(p["email"] for p in patients if p["email"] and "@" in p["email"])
    assert emails.most_common(1)[0][1] >= 2, "families share an email address"
    assert any(
        p["email"] and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", p["email"], re.I)
        for p in patients
    )
    assert any(not p["email"] for p in patients)
    assert any(p["patient_phone_numbers"] == [] for p in patients)
    assert any(
        {n["phone_type"] for n in p["patient_phone_numbers"]} == {"Home"} for p in patients
    ), "landline only"
    mobiles = [
        n["number"]
        for p in patients
        for n in p["patient_phone_numbers"]
        if n["phone_type"] == "Mobile"
    ]
    assert any(m.startswith("+61") for m in mobiles)
    assert any(m.startswith("61") for m in mobiles)
    assert any(" " in m and m.startswith("04") for m in mobiles)
    for flag in ("accepted_email_marketing", "accepted_sms_marketing"):
        assert {p[flag] for p in patients} == {True, False, None}
    assert any(p["preferred_first_name"] for p in patients)
    assert any(p["date_of_birth"] is None for p in patients)
    assert {p["reminder_type"] for p in patients} == {"SMS & Email", "SMS", "Email", "None"}
    assert {type(p["archived_at"]) for p in patients} == {str, type(None)}, '"" and null both occur'
    assert any(p["archived_at"] for p in patients)
    assert any(p["deleted_at"] for p in patients)


def test_a_merged_patient_is_archived_and_links_to_a_patient_who_exists(data):
    merged = [p for p in data["patients"].values() if p.get("merged_at")]
    assert merged
    for p in merged:
        assert p["archived_at"]
        assert link_id(p["merged_with_patient"]) in data["patients"]


def test_appointments_cover_three_years_of_history_and_eight_weeks_ahead(data):
    appointments = list(data["individual_appointments"].values())
    starts = [ts(a["starts_at"]) for a in appointments]
    assert min(starts) < T_START - 2.5 * 365 * 86_400
    assert T_START + 6 * 7 * 86_400 < max(starts) <= T_START + 9 * 7 * 86_400
    assert all(ts(a["created_at"]) <= ts(a["updated_at"]) <= T_START for a in appointments)
    assert any(a["patient_arrived"] for a in appointments)
    assert any(a["did_not_arrive"] for a in appointments)
    assert any(a["archived_at"] for a in appointments)
    reasons = {a["cancellation_reason"] for a in appointments if a["cancelled_at"]}
    assert reasons <= {10, 20, 30, 31, 40, 50, 60} and len(reasons) >= 5
    future = [a for a in appointments if ts(a["starts_at"]) > T_START]
    assert any(a["cancelled_at"] for a in future) and any(not a["cancelled_at"] for a in future)


def test_classes_list_their_attendees_patient_ids(data):
    assert_classes_match_attendees(data["group_appointments"], data["attendees"])
    assert any(c["archived_at"] for c in data["group_appointments"].values())


def test_a_patient_holds_one_live_place_in_a_class(data):
    """The front desk books a person into a class once; a cancelled place may be booked again.
    (Two records of one person merged can leave two: the change engine's merges.)"""
    places: dict[tuple[int, int], int] = {}
    for attendee in data["attendees"].values():
        booking = link_id(attendee["booking"])
        if booking in data["group_appointments"] and not attendee["cancelled_at"]:
            key = (booking, link_id(attendee["patient"]))
            places[key] = places.get(key, 0) + 1
    assert places and max(places.values()) == 1


def assert_classes_match_attendees(classes: dict, attendees: dict) -> None:
    assert classes
    booked: dict[int, list[str]] = {}  # one entry per live place
    for attendee in attendees.values():
        booking = link_id(attendee["booking"])
        if booking in classes and not attendee["cancelled_at"]:
            booked.setdefault(booking, []).append(str(link_id(attendee["patient"])))
    assert any(len(ids) > 1 for ids in booked.values())
    for class_id, group in classes.items():
        assert sorted(group["patient_ids"]) == sorted(booked.get(class_id, []))
        assert len(group["patient_ids"]) <= group["max_attendees"]


@pytest.mark.parametrize("seed", range(12))
def test_any_seed_makes_a_consistent_clinic(make_clinic, seed):
    clinic = make_clinic(seed=seed, patients=40 + seed * 7)
    for resource in RESOURCES:
        for record in clinic.snapshot(resource, BASE).values():
            assert ts(record["created_at"]) <= ts(record["updated_at"]) <= T_START
            if "starts_at" in record:
                assert ts(record["created_at"]) <= ts(record["starts_at"])


def test_the_same_seed_and_size_make_the_same_clinic(make_clinic):
    one, two = make_clinic(seed=11, patients=120), make_clinic(seed=11, patients=120)
    other = make_clinic(seed=12, patients=120)
    for resource in RESOURCES:
        assert one.snapshot(resource, BASE) == two.snapshot(resource, BASE)
    assert one.snapshot("patients", BASE) != other.snapshot("patients", BASE)
    assert one.api_key == two.api_key and one.api_key.endswith("-au1")


# ---- the clock ------------------------------------------------------------------------------


def changed_rows(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if before.get(k) != v}


@dataclass
class Day:
    clinic: object
    before: dict[str, dict[int, dict]]  # every resource's snapshot before the day
    after: dict[str, dict[int, dict]]
    old: datetime
    done: dict[str, int]


@pytest.fixture(scope="module")
def busy_day() -> Day:
    """Twelve simulated hours of a 200-patient clinic (read-only for the tests that share it)."""
    from sandbox.cliniko import SandboxClinic

    clinic = SandboxClinic.generate(seed=4, patients=200, start=START)
    before = {r: clinic.snapshot(r, BASE) for r in RESOURCES}
    old = clinic.now
    done = clinic.advance(timedelta(hours=12))
    return Day(clinic, before, {r: clinic.snapshot(r, BASE) for r in RESOURCES}, old, done)


def test_advance_makes_every_kind_of_change_inside_the_interval(busy_day):
    assert busy_day.clinic.now == busy_day.old + timedelta(hours=12)
    assert all(n > 0 for n in busy_day.done.values()), busy_day.done
    interval = (busy_day.old.timestamp(), busy_day.clinic.now.timestamp())
    for resource in RESOURCES:
        before = busy_day.before[resource]
        for row_id, record in changed_rows(before, busy_day.after[resource]).items():
            assert interval[0] < ts(record["updated_at"]) <= interval[1]
            if row_id not in before:  # new rows were created in the interval too
                assert interval[0] < ts(record["created_at"]) <= interval[1]


def test_alerts_come_and_go_invoices_get_paid_and_custom_fields_change(busy_day):
    before, after = busy_day.before, busy_day.after
    alerts = changed_rows(before["medical_alerts"], after["medical_alerts"])
    assert any(i not in before["medical_alerts"] for i in alerts), "alerts added"
    removed = [a for i, a in alerts.items() if i in before["medical_alerts"] and a["archived_at"]]
    assert removed, "alerts removed (archived: listed only with archived_at:*)"
    deleted = busy_day.clinic.hard_deleted("medical_alerts")  # some added and deleted today
    assert deleted and not deleted & after["medical_alerts"].keys()
    assert deleted & before["medical_alerts"].keys()
    invoices = changed_rows(before["invoices"], after["invoices"])
    paid = [
        i for i, inv in invoices.items()
        if i in before["invoices"] and before["invoices"][i]["status"] == 10 and inv["status"] == 20
    ]  # fmt: skip
    assert paid and all(invoices[i]["closed_at"] == invoices[i]["updated_at"] for i in paid)
    raised = [inv for i, inv in invoices.items() if i not in before["invoices"]]
    assert {bool(inv["appointment"]) for inv in raised} == {True, False}  # visits and sales
    edited = [
        p for i, p in changed_rows(before["patients"], after["patients"]).items()
        if i in before["patients"] and p["custom_fields"] != before["patients"][i]["custom_fields"]
    ]  # fmt: skip
    assert edited, "custom fields edited (the patient's updated_at moves with them)"


def test_a_minute_of_a_500_patient_clinic_usually_books_someone(make_clinic):
    clinic = make_clinic(seed=5, patients=500, appointments_per_patient=3)
    minutes_with_bookings = sum(
        clinic.advance(timedelta(minutes=1))["bookings"] > 0 for _ in range(20)
    )
    assert minutes_with_bookings >= 16


def test_the_same_advances_make_the_same_changes(make_clinic):
    one, two = make_clinic(seed=9, patients=100), make_clinic(seed=9, patients=100)
    assert one.advance(timedelta(hours=2)) == two.advance(timedelta(hours=2))
    assert one.snapshot("individual_appointments", BASE) == two.snapshot(
        "individual_appointments", BASE
    )


def test_a_merge_repoints_the_merged_patients_bookings_to_the_survivor(busy_day):
    patients = busy_day.after["patients"]
    merged_now = {
        k: p
        for k, p in patients.items()
        if p.get("merged_at") and not busy_day.before["patients"].get(k, {}).get("merged_at")
    }
    assert merged_now
    appointments = busy_day.after["individual_appointments"].values()
    for row in (*appointments, *busy_day.after["attendees"].values()):
        assert link_id(row["patient"]) not in merged_now
    for dup in merged_now.values():
        assert dup["archived_at"] == dup["merged_at"] == dup["updated_at"]
        assert link_id(dup["merged_with_patient"]) in patients


def test_hard_deleted_rows_vanish_and_are_reported(busy_day):
    gone = busy_day.clinic.hard_deleted("individual_appointments")
    before = busy_day.before["individual_appointments"]
    assert gone & before.keys(), "rows synced earlier disappear (others are booked and deleted)"
    assert not gone & busy_day.after["individual_appointments"].keys()
    assert not gone & {link_id(a["booking"]) for a in busy_day.after["attendees"].values()}
    removed = busy_day.clinic.hard_deleted("attendees")
    assert removed and not removed & busy_day.after["attendees"].keys()


def test_classes_still_match_their_attendees_after_a_busy_day(busy_day):
    assert_classes_match_attendees(
        busy_day.after["group_appointments"], busy_day.after["attendees"]
    )


def test_malformed_rows_are_served_broken_and_move_up_the_change_feed(make_clinic):
    clinic = make_clinic(seed=8, patients=100)
    clinic.advance(timedelta(minutes=3))
    keys = clinic.inject_malformed("patients", 4)
    assert len(keys) == 4 and set(keys) == clinic.malformed("patients")
    table = clinic.tables["patients"]
    served = [orjson.loads(table.rows[int(k.lstrip("x"))].body) for k in keys]
    assert [s["id"] for s in served] == keys
    assert any(not s["id"].isdigit() for s in served)
    assert any(s["id"].isdigit() and ts_is_bad(s["updated_at"]) for s in served)
    for k in keys:  # positioned at "now" in the change feed, and left out of the snapshot
        assert table.rows[int(k.lstrip("x"))].updated_at == int(clinic.now.timestamp())
    assert not {int(k.lstrip("x")) for k in keys} & clinic.snapshot("patients", BASE).keys()
    clinic.advance(timedelta(hours=6))  # the clock keeps working on (and may heal) them


def test_a_real_change_to_a_malformed_row_heals_it(make_clinic):
    clinic = make_clinic(seed=8, patients=30)
    keys = set(clinic.inject_malformed("patients", 30))
    clinic.advance(timedelta(hours=24))
    patients = clinic.snapshot("patients", BASE)
    healed = {k for k in keys - clinic.malformed("patients") if int(k.lstrip("x")) in patients}
    assert healed  # (others may have been deleted outright)
    for key in healed:
        record = patients[int(key.lstrip("x"))]
        assert record["id"] == key.lstrip("x") and not ts_is_bad(record["updated_at"])


def ts_is_bad(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return True
    return False


def test_the_clock_refuses_to_go_backwards(make_clinic):
    clinic = make_clinic(seed=1, patients=20)
    with pytest.raises(ValueError):
        clinic.advance(timedelta(seconds=-1))
    assert clinic.now == START.astimezone(UTC)
