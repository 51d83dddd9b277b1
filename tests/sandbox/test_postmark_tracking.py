"""The Postmark sandbox's open and link tracking, over HTTP with the real postmarker client, as
Postmark documents it: off unless switched on, the server's open setting forcing it, no open
for plain text, repeated opens, and the Messages API's paging limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from sandbox.postmark import PostmarkSandbox

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    sandbox.now = NOW
    sandbox.clock = lambda: sandbox.now
    with sandbox.serve() as server:
        sandbox.client = PostmarkClient(
            server_token=sandbox.server_token, root_api_url=server.url + "/", verbosity=0
        )
        yield sandbox
        sandbox.client.session.close()


def send(postmark, to="a@example.com", *, html="<p>Hi <a href='https://x.example'>x</a></p>",
         text="Hi https://x.example", stream="broadcast", **tracking) -> str:  # fmt: skip
    body = {"From": "d@demo.example", "To": to, "Subject": "s", "MessageStream": stream,
            **({"HtmlBody": html} if html else {}), **({"TextBody": text} if text else {}),
            **tracking}  # fmt: skip
    return postmark.client.emails.send_batch(body)[0]["MessageID"]


def events(postmark, kind="opens", **query):
    return postmark.client.call(
        "GET", f"/messages/outbound/{kind}", **{"count": 500, "offset": 0, **query}
    )


def test_nothing_is_tracked_unless_the_message_or_the_server_says_so(postmark):
    plain = send(postmark)
    assert not postmark.open_message(plain) and not postmark.click_message(plain)

    postmark.track_opens = True  # the server's "Open tracking": every HTML message, forced
    forced = send(postmark, TrackOpens=False)
    assert postmark.open_message(forced)
    assert postmark.client.call("GET", "/server")["TrackOpens"] is True


def test_a_plain_text_email_never_has_an_open_but_its_tracked_links_can_be_clicked(postmark):
    text_only = send(postmark, html=None, TrackOpens=True, TrackLinks="TextOnly")
    assert not postmark.open_message(text_only)
    assert postmark.click_message(text_only)
    html_only_links = send(postmark, html="<p>no links</p>", TrackLinks="HtmlOnly")
    assert not postmark.click_message(html_only_links), "no link in the tracked part"


def test_repeated_opens_are_listed_newest_first_with_only_the_first_marked(postmark):
    message = send(postmark, TrackOpens=True)
    for minutes in (5, 50, 500):
        postmark.open_message(message, at=NOW + timedelta(minutes=minutes))
    postmark.now = NOW + timedelta(days=1)

    reply = events(postmark, messagestream="broadcast")

    assert reply["TotalCount"] == 3
    assert [o["FirstOpen"] for o in reply["Opens"]] == [False, False, True]
    assert reply["Opens"][0]["MessageID"] == message and reply["Opens"][0]["RecordType"] == "Open"
    assert events(postmark)["TotalCount"] == 0, "without messagestream: the transactional stream"


def test_simulated_opens_appear_only_once_the_clock_passes_them(postmark):
    postmark.open_rate = 1.0
    send(postmark, TrackOpens=True)
    assert events(postmark, messagestream="broadcast")["TotalCount"] == 0
    postmark.now = NOW + timedelta(days=3)
    assert events(postmark, messagestream="broadcast")["TotalCount"] >= 1


@pytest.mark.parametrize(
    "query",
    [{"count": 501}, {"count": 0}, {"count": 500, "offset": 9_501}, {"count": None}],
)
def test_the_paging_limits_are_postmarks(postmark, query):
    query = {k: v for k, v in {"offset": 0, **query}.items() if v is not None}
    with pytest.raises(ClientError) as caught:
        postmark.client.call("GET", "/messages/outbound/clicks", **query)
    assert caught.value.error_code == 300
    assert events(postmark, "clicks", count=500, offset=9_500)["TotalCount"] == 0
