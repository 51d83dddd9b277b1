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
     ("AcmePhysio", "alphanumeric"), ("Acme 2", "alphanumeric")],
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
