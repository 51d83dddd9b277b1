"""``relay test-send``: the demo clinic synced from the sandbox Cliniko and built into a real DuckDB
file, its triggers' messages rendered for real patients and sent through the real postmarker and
twilio clients to their sandboxes over HTTP: the staff address gets one message marked [TEST],
the patient nothing, and the ledger does not change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.cli.test_send import send_test
from sandbox.postmark import PostmarkSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.config import load_clinic
from tasks.errors import UserFacingError
from tasks.models import runner as models
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings
from tasks.triggers import plan as planning
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STAFF_EMAIL = "frontdesk-staff@demo-physio.example"
STAFF_MOBILE = "+61499999999"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The demo clinic synced and built, its triggers planned (the ledger holds messages)."""
    from sandbox.cliniko import SandboxClinic, SandboxServer

    clinic = SandboxClinic.generate(seed=11, patients=300, start=START)
    db = tmp_path_factory.mktemp("test-send") / "clinic.duckdb"
    config = load_clinic("demo").model_copy(update={"database": db})
    retry = Retry(initial_seconds=0.01, max_seconds=0.2)
    with (
        SandboxServer(clinic, rate_limit=None) as server,
        ClinikoClient(clinic.api_key, "t@example.com", server.base_url, pace=None,
                      retry=retry) as client,
        open_db(db) as con,
    ):  # fmt: skip
        extract.run_sync(con, client)
        models.build(con, models.ListSettings.from_config(config), now=START)
        planning.plan(con, config, START)
    return config


@pytest.fixture
def sandboxes():
    postmark, twilio = PostmarkSandbox(), TwilioSandbox()
    with postmark.serve() as pm, twilio.serve() as tw:
        providers = {
            "email": PostmarkProvider(PostmarkSettings(
                server_token=postmark.server_token, from_address="hello@demo-physio.example",
                base_url=pm.url, timeout=5)),
            "sms": TwilioProvider(TwilioSettings(
                account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number="+61400000000",
                base_url=tw.url, timeout=5)),
        }  # fmt: skip
        yield postmark, twilio, providers
        for p in providers.values():
            p.close()


def ledger(config):
    with open_db(config.database_path, read_only=True) as con:
        return con.execute("SELECT * FROM state.messages ORDER BY message_id").fetchall()


def patient_with(config, sql: str) -> tuple[int, str | None, str | None]:
    with open_db(config.database_path, read_only=True) as con:
        return con.execute(
            "SELECT p.patient_id, p.email, p.mobile_e164 FROM marts.patients p "
            f"WHERE {sql} AND regexp_full_match(coalesce(p.email, ''), '[a-z0-9._+-]+@[a-z0-9-]+(\\.[a-z0-9-]+)+') "
            "ORDER BY p.patient_id LIMIT 1"
        ).fetchone()


def test_an_sms_test_goes_to_the_staff_mobile_only_marked_and_outside_the_ledger(built, sandboxes):
    _, twilio, providers = sandboxes
    before = ledger(built)
    assert before, "the planned reminders are in the ledger"

    result = send_test(built, "sms-reminder-24h", STAFF_MOBILE, providers, now=START)

    assert result.outcome == "sent" and result.provider == "twilio"
    (message,) = twilio.accepted
    assert message["to"] == STAFF_MOBILE
    assert message["body"].startswith("[TEST] ") and "reminder" in message["body"].lower()
    assert ledger(built) == before, "a test is never the patient's message"
    with open_db(built.database_path, read_only=True) as con:
        logged = con.execute(
            "SELECT trigger_name, patient_id, channel, outcome, to_digest FROM state.test_sends"
        ).fetchall()
    assert [row[:4] for row in logged] == [("sms-reminder-24h", result.patient_id, "sms", "sent")]
    assert STAFF_MOBILE not in str(logged)


def test_an_sms_test_takes_the_mobile_as_staff_type_it_in_the_clinics_country(built, sandboxes):
    """--to "0499 999 999" was refused as not E.164 though the clinic's country is known."""
    _, twilio, providers = sandboxes
    result = send_test(built, "sms-reminder-24h", "0499 999 999", providers, now=START)
    assert result.outcome == "sent"
    assert [m["to"] for m in twilio.accepted] == [STAFF_MOBILE]


def test_an_email_test_renders_a_real_patients_message_and_sends_it_to_staff(built, sandboxes):
    postmark, _, providers = sandboxes
    patient, email, _ = patient_with(
        built,
        "p.email IS NOT NULL AND p.patient_id IN (SELECT patient_id FROM marts.appointments "
        "WHERE appointment_type_name = 'Admin - Insurance Patient')",
    )
    before = ledger(built)

    result = send_test(built, "welcome-insurance", STAFF_EMAIL, providers, patient_id=patient)

    assert result.outcome == "sent" and result.patient_id == patient
    (message,) = postmark.accepted
    assert message["To"] == STAFF_EMAIL and message["To"] != email
    assert message["Subject"].startswith("[TEST] ")
    assert "[TEST]" in message["HtmlBody"] and message["TextBody"].startswith("[TEST] ")
    assert message["MessageStream"] == "outbound" and message["Tag"] == "test-send"
    assert ledger(built) == before


def test_a_patients_address_is_refused_and_nothing_is_sent(built, sandboxes):
    postmark, twilio, providers = sandboxes
    patient, email, _ = patient_with(
        built,
        "p.email IS NOT NULL AND p.patient_id IN (SELECT patient_id FROM marts.appointments "
        "WHERE appointment_type_name = 'Admin - Insurance Patient')",
    )
    other, other_email, _ = patient_with(
        built, f"p.email IS NOT NULL AND p.patient_id <> {patient}"
    )

    with pytest.raises(UserFacingError, match="own address: a test send never goes to the patient"):
        send_test(built, "welcome-insurance", email.upper(), providers, patient_id=patient,
                  allow_patient_address=True)  # fmt: skip
    with pytest.raises(UserFacingError, match="belongs to a patient"):
        send_test(built, "welcome-insurance", other_email, providers, patient_id=patient)
    with pytest.raises(UserFacingError, match=r"give a mobile number \(\+61"):
        send_test(built, "sms-reminder-24h", STAFF_EMAIL, providers)
    with pytest.raises(UserFacingError, match=r"give a mobile number \(\+61"):
        send_test(built, "sms-reminder-24h", "03 9123 4567", providers)  # a landline
    with pytest.raises(UserFacingError, match="an email address"):
        send_test(built, "welcome-insurance", STAFF_MOBILE, providers, patient_id=patient)
    assert postmark.accepted == [] and twilio.accepted == []

    # a staff member who is also a patient may say so
    result = send_test(built, "welcome-insurance", other_email, providers, patient_id=patient,
                       allow_patient_address=True)  # fmt: skip
    assert result.outcome == "sent" and [m["To"] for m in postmark.accepted] == [other_email]
    assert other != patient


def test_a_marketing_test_goes_on_the_marketing_stream_with_postmarks_unsubscribe_link(
    built, sandboxes
):
    postmark, _, providers = sandboxes
    with open_db(built.database_path, read_only=True) as con:
        (patient,) = con.execute(
            "SELECT a.patient_id FROM marts.appointments a JOIN marts.patients p USING "
            "(patient_id) WHERE a.appointment_type_name = 'Initial Physiotherapy Consultation' "
            "AND p.email IS NOT NULL ORDER BY a.patient_id LIMIT 1"
        ).fetchone()

    result = send_test(built, "recall-initial-consult", STAFF_EMAIL, providers, patient_id=patient)

    assert result.outcome == "sent"
    (message,) = postmark.accepted
    assert message["MessageStream"] == "broadcast" and message["To"] == STAFF_EMAIL
    assert "{{{ pm:unsubscribe }}}" in message["HtmlBody"], "Postmark manages the stream's link"


def test_a_from_postmark_refuses_is_said_plainly_and_nothing_is_logged(built, sandboxes):
    """Day one, the sending domain not verified yet: the test send says what to fix (exit 2 in
    the CLI), no traceback, and records no test."""
    postmark, _, providers = sandboxes
    postmark.sender_signatures = {"@acmephysio.com.au"}
    patient, _, _ = patient_with(
        built,
        "p.email IS NOT NULL AND p.patient_id IN (SELECT patient_id FROM marts.appointments "
        "WHERE appointment_type_name = 'Admin - Insurance Patient')",
    )
    with open_db(built.database_path, read_only=True) as con:
        (before,) = con.execute("SELECT count(*) FROM state.test_sends").fetchone()
    with pytest.raises(UserFacingError, match=r"nothing was sent.*\(400\).*PostmarkServer block"):
        send_test(built, "welcome-insurance", STAFF_EMAIL, providers, patient_id=patient)
    assert postmark.accepted == []
    with open_db(built.database_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.test_sends").fetchone() == (before,)
