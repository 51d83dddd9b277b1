"""A provider base URL requests cannot use (no scheme, a misspelt scheme) sends nothing: it stops
the run naming the setting, as a refusal of our settings does, instead of leaving every message
``unknown`` for a person to resolve by hand (nothing left this machine)."""

from __future__ import annotations

import pytest

from tasks.providers.common import (
    OutgoingMessage,
    ProviderUnavailable,
    RenderedEmail,
    RenderedSms,
)
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings

BAD_URLS = ["127.0.0.1:9999", "localhost:8025/", "htp://127.0.0.1:9999", "http://"]


def message(channel: str) -> OutgoingMessage:
    content = (
        RenderedEmail(subject="s", html="<p>h</p>", text="t")
        if channel == "email"
        else RenderedSms(text="t")
    )
    to = "pat@example.org" if channel == "email" else "+61491570156"
    return OutgoingMessage(1, "trigger:t:1:appointment:1", channel, "transactional", "t", to,
                           content)  # fmt: skip


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_postmark_base_url_without_a_usable_scheme_stops_the_run(url):
    provider = PostmarkProvider(
        PostmarkSettings(server_token="tok", from_address="a@clinic.example", base_url=url)
    )
    with pytest.raises(ProviderUnavailable, match="base_url") as raised:
        provider.send([message("email")] * 3)
    assert "pat@example.org" not in str(raised.value)


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_twilio_base_url_without_a_usable_scheme_stops_the_run(url):
    provider = TwilioProvider(
        TwilioSettings(
            account_sid="AC" + "0" * 32, auth_token="tok", from_number="+61400000000",
            base_url=url,
        )
    )  # fmt: skip
    with pytest.raises(ProviderUnavailable, match="base_url") as raised:
        provider.send([message("sms")] * 3)
    assert "+61491570156" not in str(raised.value)
