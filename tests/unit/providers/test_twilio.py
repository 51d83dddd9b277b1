"""Twilio's reply words (what counts as STOP or START) and what its error codes mean for a
number (the pulls themselves run against the sandbox in tests/integration/test_feedback.py and
test_feedback_delivery.py)."""

from __future__ import annotations

import pytest

from tasks.providers.common import Suppress
from tasks.providers.twilio import ERROR_CODES, error_meaning, reply_keyword


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "Cancel",
                                  "END", "quit!"])  # fmt: skip
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
