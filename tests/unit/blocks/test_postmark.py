"""blocks/postmark.py: the PostmarkServer block takes only the link-tracking values Postmark
documents (None, HtmlAndText, HtmlOnly, TextOnly: docs/reference.md, Postmark, Tracking)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks.postmark import PostmarkServer


def _block(**fields) -> PostmarkServer:
    return PostmarkServer(server_token=SecretStr("token"), from_address="hi@acme.com.au", **fields)


@pytest.mark.parametrize("mode", ["None", "HtmlAndText", "HtmlOnly", "TextOnly"])
def test_the_block_takes_each_link_tracking_value_postmark_documents(mode):
    assert _block(track_links=mode).provider().settings.track_links == mode


def test_the_value_is_read_without_regard_to_case():
    assert _block(track_links="htmlandtext").track_links == "HtmlAndText"


@pytest.mark.parametrize("mode", ["HtmlAndTxt", "html", "true", ""])
def test_a_misspelt_link_tracking_value_is_refused_when_the_block_is_made(mode):
    """Saved as it was, it went on every email (reminders too) for Postmark to refuse, message
    after message; it is refused here, naming the field and the values."""
    with pytest.raises(ValidationError, match="track_links") as refused:
        _block(track_links=mode)
    assert "HtmlAndText" in str(refused.value)
