"""The outbox's files as a person opens them: a marketing email's .eml carries RFC 8058's
one-click headers as plain header lines, the way a mail client reads them."""

from __future__ import annotations

import email
import email.policy
import importlib.util
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.templates import Templates
from tasks.providers.outbox import OutboxProvider
from tasks.triggers.prepare import Preparer
from tasks.unsubscribe.tokens import verify

# The planning tests' hand-made clinic (raw rows -> the real models -> the planner).
_spec = importlib.util.spec_from_file_location(
    "plan_clinic", Path(__file__).parents[1] / "triggers" / "test_plan.py"
)
plan_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_clinic)

NOW, DAY, HOUR = plan_clinic.NOW, timedelta(days=1), timedelta(hours=1)
KEY = b"outbox-tests-unsubscribe-key"
BASE_URL = "https://relay.physio.example/unsubscribe"


@pytest.fixture
def clinic():
    c = plan_clinic.Clinic()
    yield c
    c.con.close()


# A clinic's unsubscribe address may be an internationalised domain name: the header carries
# its ASCII (IDNA) form, the URI a mail client can POST to; the link in the body may stay as is.
IDN_URL = "https://abmelden.praxis-müller.example/unsubscribe"
IDN_ASCII = "https://abmelden.xn--praxis-mller-klb.example/unsubscribe"


@pytest.mark.parametrize("base_url, in_header", [(BASE_URL, BASE_URL), (IDN_URL, IDN_ASCII)])
def test_a_marketing_eml_carries_list_unsubscribe_as_a_plain_header_a_mail_client_reads(
    clinic, tmp_path, base_url, in_header
):
    clinic.trigger("recall", **{**plan_clinic.RECALL, "grace": "2 days"})
    plan_clinic.live(clinic, NOW - 90 * DAY)
    clinic.patient(1)
    clinic.appointment(11, 1, NOW - 42 * DAY - HOUR, type_id=plan_clinic.INITIAL, arrived=True)
    clinic.plan(NOW)
    outbox = OutboxProvider(tmp_path, email_from="clinic@example.com", sms_from="Clinic")
    result = dispatch(
        clinic.con,
        providers={"email": outbox},
        prepare=Preparer(clinic.con, clinic.config, clock=lambda: NOW),
        templates=Templates(),
        unsubscribe=Unsubscribe("test", base_url, key=KEY),
        clock=lambda: NOW,
    )
    assert result.counts["sent"] == 1

    (eml,) = tmp_path.glob("*.eml")
    lines = eml.read_bytes().decode("ascii").splitlines()
    (header,) = [line for line in lines if line.startswith("List-Unsubscribe:")]
    assert "=?" not in header  # no RFC 2047 encoded words: a client reads the URL as it is
    assert header.startswith(f"List-Unsubscribe: <{in_header}/") and header.endswith(">")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines

    # A plain (RFC 5322, no RFC 2047 decoding) reader finds the signed link for this message.
    mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.compat32)
    url = mail["List-Unsubscribe"].strip("<>")
    claim = verify(url.rsplit("/", 1)[1], key=KEY)
    assert (claim.clinic, claim.patient_id, claim.channel) == ("test", 1, "email")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
