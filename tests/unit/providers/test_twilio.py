"""Twilio's reply words: what counts as STOP or START (the pull itself runs against the sandbox
in tests/integration/test_feedback.py)."""

from __future__ import annotations

import pytest

from tasks.providers.twilio import reply_keyword


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
