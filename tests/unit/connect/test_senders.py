"""What a Twilio sender is, in the connect check and in the block that keeps it."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from tasks.connect import ConnectFailed
from tasks.connect.twilio import sender_kind

SID = "AC" + "0" * 32


@pytest.mark.parametrize(
    "sender, kind",
    [("+61400000000", "number"), ("MG" + "a" * 32, "messaging_service"),
     ("AcmePhysio", "alphanumeric"), ("Acme 2", "alphanumeric"), ("MGPhysio", "alphanumeric")],
)  # fmt: skip
def test_sender_kinds(sender, kind):
    assert sender_kind(sender) == kind


@pytest.mark.parametrize("sender", ["0400 000 000", "12345", "Acme Physio Clinic", "Acme-Physio"])
def test_not_a_sender(sender):
    with pytest.raises(ConnectFailed) as caught:
        sender_kind(sender)
    assert caught.value.problem == "bad_sender"


def test_block_keeps_a_number_or_an_alphanumeric_id_only():
    from blocks.twilio import TwilioAccount

    for sender in ("+61400000000", "AcmePhysio"):
        assert TwilioAccount(account_sid=SID, auth_token=SecretStr("t"), from_number=sender)
    with pytest.raises(ValidationError):
        TwilioAccount(account_sid=SID, auth_token=SecretStr("t"), from_number="0400 000 000")


@pytest.mark.parametrize(
    ("sender", "from_number", "service"),
    [("+61400000000", "+61400000000", None), ("AcmePhysio", "AcmePhysio", None),
     ("MGPhysio", "MGPhysio", None), ("MG" + "a" * 32, None, "MG" + "a" * 32)],
)  # fmt: skip
def test_connect_builds_the_block_by_what_the_sender_is_not_by_its_first_letters(
    sender, from_number, service
):
    """An alphanumeric ID may start with MG: only an MG SID is a messaging service."""
    from relay.cli.connect import _build_blocks
    from tasks.connect.clinic_file import Accounts

    accounts = Accounts(cliniko="acme-cliniko", email="outbox", sms="acme-twilio")
    blocks = dict(_build_blocks(
        accounts, cliniko_key="k-au1", contact_email="owner@acme-physio.com.au",
        cliniko_base_url=None, twilio_sid=SID, twilio_token="t", sender=sender,
        twilio_base_url=None,
    ))  # fmt: skip
    block = blocks["acme-twilio"]
    assert (block.from_number, block.messaging_service_sid) == (from_number, service)


@pytest.mark.parametrize(
    "value",
    ["hello@acme.com.au", "Acme Physio <hello@acme.com.au>", "<hello@acme.com.au>",
     '"Acme Physio, Bondi" <hello@acme.com.au>', "Dr. Lee's Physio <hello@acme.com.au>",
     "Ácme Físio <hello@acme.com.au>", "Acme Physio & Pilates <hello@acme.com.au>"],
)  # fmt: skip
def test_a_from_of_one_address_passes(value):
    from tasks.connect.postmark import from_address_problem

    assert from_address_problem(value) is None


@pytest.mark.parametrize(
    "value, said",
    [("hello@acme.com.au, info@acme.com.au", "one address"),
     ("Acme Physio, Bondi <hello@acme.com.au>", "double quotes"),
     ("Acme <hello@acme.com.au", "not an email address")],
)  # fmt: skip
def test_a_from_postmark_would_refuse_is_explained(value, said):
    from tasks.connect.postmark import from_address_problem

    assert said in (from_address_problem(value) or "")
