"""Conformance: every record of Cliniko's documented examples, loaded by the real sync loader,
builds through every model, and staging reads its quirks right (ids as strings or ints, "" and
null timestamps, links, phone types, merged patients, an id-less referral source)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.cliniko import resources
from tasks.cliniko.writer import ResourceWriter, parse_records
from tasks.models import runner as models
from tasks.warehouse import memory_db

EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "cliniko-examples"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def con():
    c = memory_db()
    # The archived lists last: their copy of patient 1 (archived, merged) is its newest state.
    for path in sorted(EXAMPLES.glob("*.json"), key=lambda p: ("archived" in p.stem, p.stem)):
        doc = json.loads(path.read_text(encoding="utf-8"))
        parts = doc["request"].removeprefix("GET /").split("/")
        resource = resources.BY_NAME.get(parts[0])
        if resource is None or {"conflicts", "deleted"} & set(parts):
            continue
        records = doc["response"].get(resource.name, [doc["response"]])
        writer = ResourceWriter(c, resource)
        writer.add("/" + resource.name, parse_records(resource, records), NOW)
        writer.commit(NOW)
    models.build(c, models.ListSettings(country="AU"), now=NOW)
    yield c
    c.close()


def one(con, sql: str) -> tuple:
    return con.execute(sql).fetchone()


def test_every_documented_example_builds_through_every_model(con):
    assert models.latest_build(con)["status"] == "succeeded"
    for relation in ("staging.businesses", "staging.practitioners", "staging.appointment_types",
                     "staging.concession_types", "staging.referral_source_types",
                     "staging.referral_sources", "staging.patients",
                     "staging.individual_appointments", "staging.group_appointments",
                     "staging.attendees"):  # fmt: skip
        assert one(con, f"SELECT count(*) FROM {relation}")[0] > 0, relation


def test_a_patient_is_typed_with_its_mobile_in_e164_and_its_merge_followed(con):
    row = one(
        con,
        "SELECT email, email_is_valid, mobile_e164, archived_at, merged_into_patient_id, "
        "accepted_sms_marketing, date_of_birth, concession_type_id "
        "FROM staging.patients WHERE patient_id = 1",
    )
    email, valid, mobile, archived_at, merged_into, sms, born, concession = row
    assert (email, valid, mobile) == ("peter@example.com", True, "+61444444444")
    assert archived_at is not None and merged_into == 1001
    assert (sms, str(born), concession) == (False, "2001-05-26", 123)


def test_links_become_ids_and_empty_timestamps_become_null(con):
    row = one(
        con,
        "SELECT patient_id, practitioner_id, business_id, appointment_type_id, archived_at, "
        "cancelled_at IS NOT NULL FROM staging.individual_appointments WHERE appointment_id = 1",
    )
    assert row[:5] == (82, 1, 1, 2, None)
    big = one(con, "SELECT business_id, time_zone FROM staging.businesses")
    assert big == (514810976554457178, None)  # a 64-bit id sent as a string; no zone in 2022


def test_an_id_less_referral_source_is_keyed_on_its_patient(con):
    row = one(
        con,
        "SELECT patient_id, referral_source_type_id, referrer_type, referrer_id "
        "FROM staging.referral_sources",
    )
    assert row == (123, 1, "Patient", 456)


def test_appointments_of_patients_never_synced_are_kept_as_deleted(con):
    """The examples' appointments belong to patients 82 and 48, who are not in the examples:
    they stay visible, with a status nothing will message."""
    rows = con.execute(
        "SELECT appointment_kind, appointment_id, appointment_type_id, status, "
        "business_time_zone FROM marts.appointments ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("group", 1, 7, "deleted", "Australia/Melbourne"),  # an attendee of class 1 (type 7)
        ("individual", 1, 2, "deleted", "Australia/Melbourne"),
    ]


@pytest.mark.parametrize(
    "email",
    [
        "person1@example.com",
        "First.Last+tag@mail.example.com.au",
        "a_b-c@sub-domain.example.org",
        "broken@@example",
        "no-at-sign.example.com",
        "dot.@example.com",
        "a..b@example.com",
        "a@-example.com",
        "a@example-.com",
        "a@ab--cd.com",
        "a@example.test",
        "a@example.local",
        "a@host.localhost",
        "a@example.c0m",
        "a@example",
        "x" * 60 + "@example.com",
        "x" * 65 + "@example.com",
        "name@" + "a" * 64 + ".com",
        "ünïcode@example.com",
        "a@exämple.com",
        "a@münchen.de",
        "a@example.c",
        "",
        None,
    ],
)
def test_the_sql_email_check_agrees_with_email_validator(email):
    # The SQL fast path may only say "valid" where email-validator does; everything else must
    # come out exactly as email-validator says.
    from tasks.models import functions as models_functions

    con = memory_db()
    models_functions.register(con)
    got = con.execute("SELECT relay_email_is_valid(?::VARCHAR)", [email]).fetchone()[0]
    expected = None if email is None else models_functions.email_is_valid(email)
    assert got is expected


@pytest.mark.parametrize("email", ["a@münchen.de", "a@example.c"])
def test_an_address_dispatch_would_not_send_to_is_not_valid_for_the_list(email):
    """email-validator accepts these; dispatch's shape (addresses.EMAIL) refuses them: they
    were subscribed, counted in the list's size, and skipped at every send."""
    from tasks.messages.addresses import address_problem
    from tasks.models import functions as models_functions

    assert address_problem("email", email)
    assert models_functions.email_is_valid(email) is False
