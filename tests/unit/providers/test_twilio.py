"""Twilio's reply words (what counts as STOP or START) and what its error codes mean for a
number (the pulls themselves run against the sandbox in tests/integration/test_feedback.py and
test_feedback_delivery.py)."""

from __future__ import annotations

import pytest

from tasks.providers.common import Suppress
from tasks.providers.twilio import ERROR_CODES, error_meaning, reply_keyword


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "Cancel",
                                  "END", "quit!", "REVOKE", "OptOut"])  # fmt: skip
def test_opt_out_words_in_any_case_stop_sms(body):
    assert reply_keyword(body) == "stop"


@pytest.mark.parametrize("body", ["START", "yes", "Unstop"])
def test_opt_in_words_start_sms_again(body):
    assert reply_keyword(body) == "start"


@pytest.mark.parametrize("body", ["Please stop texting me on Sundays", "yes please", "", None,
                                  "STOP IT"])  # fmt: skip
def test_a_sentence_is_not_a_keyword(body):
    assert reply_keyword(body) is None


# --- what an error code means for the number (one table: sending and delivery) ---------------


@pytest.mark.parametrize("code", [30005, 30006, "30006"])
def test_a_number_that_can_never_receive_is_suppressed_for_every_sms(code):
    assert error_meaning(code)[1] == Suppress("all", "undeliverable")


@pytest.mark.parametrize("code", [30001, 30002, 30003, 30004, 30007, 30008, 99999, None, "x"])
def test_temporary_content_or_account_failures_suppress_nothing(code):
    assert error_meaning(code)[1] is None


def test_refusals_at_send_read_the_same_table():
    assert ERROR_CODES[21610][1] == Suppress("all", "stop")
    assert ERROR_CODES[21614][1] == ERROR_CODES[21211][1] == Suppress("all", "invalid_address")


# --- which refusals at send stop the run, which fail one message ------------------------------


def refusal(code: int, status: int = 400):
    from twilio.base.exceptions import TwilioRestException

    # Twilio's own text quotes the numbers: the outcome and the stop must not repeat it
    return TwilioRestException(status, "/Messages.json", "The number +61412345678 ...", code=code)


@pytest.mark.parametrize(
    "code", [21606, 21601, 21659, 21660, 21661, 21212, 21603, 21701, 21705, 21608, 20005, 10001]
)
def test_a_refusal_of_our_sender_or_account_stops_the_run_and_names_no_number(code):
    from tasks.providers.common import ProviderUnavailable
    from tasks.providers.twilio import SETTINGS_CODES, _error_outcome

    assert code in SETTINGS_CODES
    with pytest.raises(ProviderUnavailable, match="TwilioAccount block") as stopped:
        _error_outcome(refusal(code))
    assert f"({code})" in str(stopped.value) and "+614" not in str(stopped.value)


def test_a_missing_account_at_create_stops_the_run():
    from tasks.providers.common import ProviderUnavailable
    from tasks.providers.twilio import _error_outcome

    with pytest.raises(ProviderUnavailable, match="account was not found"):
        _error_outcome(refusal(20404, 404))


@pytest.mark.parametrize(
    ("code", "kind"),
    [(21211, "failed"), (21610, "failed"), (21614, "failed"), (21635, "failed"),
     (21408, "failed"), (21612, "failed"), (21702, "retry"), (20429, "retry")],
)  # fmt: skip
def test_a_refusal_about_one_recipient_stays_that_messages_outcome(code, kind):
    from tasks.providers.twilio import SETTINGS_CODES, _error_outcome

    assert code not in SETTINGS_CODES
    outcome = _error_outcome(refusal(code, 429 if code == 20429 else 400))
    assert (outcome.kind, outcome.error_code) == (kind, str(code))
    assert "+614" not in (outcome.reason or "")
