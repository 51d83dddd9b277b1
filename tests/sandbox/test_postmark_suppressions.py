"""The Postmark sandbox keeps suppressions per message stream, as Postmark does, over HTTP with
the real postmarker client: an address suppressed on one stream (hard bounce, spam complaint,
the recipient's own unsubscribe through Postmark's link) gets 406 "inactive recipient" on that
stream only, in single and batch sends alike, and each stream's dump lists its own.

Postmark: "manage view, create, and delete suppressions in your Message Stream. If an address is
suppressed it means it's not currently active for sending to"
(https://postmarkapp.com/developer/api/suppressions-api); an unsubscribe "will unsubscribe their
email address from your Message Stream" (.../support/article/1208-how-to-add-an-unsubscribe-link).
"""

from __future__ import annotations

import httpx
import pytest
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from sandbox.postmark import PostmarkSandbox

PATIENT = "pat@example.com"


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:
        sandbox.url = server.url
        sandbox.client = PostmarkClient(
            server_token=sandbox.server_token, root_api_url=server.url + "/", verbosity=0
        )
        yield sandbox
        sandbox.client.session.close()


def send(postmark, stream: str, *, batch: bool = False, to: str = PATIENT) -> dict:
    """One message on a stream; the per-item result (a single send's 406 raises ClientError)."""
    body = {"From": "hello@demo.example", "To": to, "Subject": "s", "HtmlBody": "<p>hi</p>",
            "TextBody": "hi", "MessageStream": stream}  # fmt: skip
    if batch:
        return postmark.client.emails.send_batch(body)[0]
    return postmark.client.emails.send(**body, TrackLinks="None")


def dump(postmark, stream: str) -> list[tuple[str, str]]:
    found = postmark.client.call("GET", f"/message-streams/{stream}/suppressions/dump")
    return [
        (s["EmailAddress"], s["SuppressionReason"])
        for s in found["Suppressions"]
        if s["EmailAddress"] == PATIENT
    ]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("kind", ["HardBounce", "SpamComplaint"])
def test_a_bounce_on_broadcast_suppresses_broadcast_only(postmark, kind, batch):
    postmark.bounce(PATIENT, kind, stream="broadcast")
    assert dump(postmark, "broadcast") == [(PATIENT, kind)]
    assert dump(postmark, "outbound") == []
    # the transactional stream knows nothing of it: the reminder goes
    assert send(postmark, "outbound", batch=batch)["ErrorCode"] == 0
    if batch:
        assert send(postmark, "broadcast", batch=True)["ErrorCode"] == 406
    else:
        with pytest.raises(ClientError) as refused:
            send(postmark, "broadcast")
        assert refused.value.error_code == 406
    assert [m["MessageStream"] for m in postmark.accepted] == ["outbound"]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_a_hard_bounce_on_outbound_leaves_broadcast_sending(postmark, batch):
    postmark.bounce(PATIENT, "HardBounce", stream="outbound")
    assert send(postmark, "broadcast", batch=batch)["ErrorCode"] == 0
    assert dump(postmark, "broadcast") == []
    assert send(postmark, "outbound", batch=True)["ErrorCode"] == 406


def test_a_soft_bounce_suppresses_nothing(postmark):
    postmark.bounce(PATIENT, "SoftBounce", stream="broadcast")
    assert dump(postmark, "broadcast") == []
    assert send(postmark, "broadcast", batch=True)["ErrorCode"] == 0


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_an_unsubscribe_through_postmarks_link_makes_later_broadcasts_406(postmark, batch):
    first = send(postmark, "broadcast", batch=True)
    link = postmark.delivered(first["MessageID"])["Headers"]["List-Unsubscribe"].strip("<>")
    assert httpx.post(link).status_code == 200
    assert dump(postmark, "broadcast") == [(PATIENT, "ManualSuppression")]

    if batch:
        refused = send(postmark, "broadcast", batch=True)
        assert refused["ErrorCode"] == 406 and "inactive" in refused["Message"]
    else:
        with pytest.raises(ClientError) as error:
            send(postmark, "broadcast")
        assert error.value.error_code == 406
    # unsubscribing from the marketing stream does not stop the patient's reminders
    assert send(postmark, "outbound", batch=batch)["ErrorCode"] == 0
    assert len(postmark.accepted) == 2
    assert [r["ErrorCode"] for r in postmark.rejected] == [406]


def test_a_suppression_on_a_stream_is_406_in_a_batch_beside_others_that_go(postmark):
    postmark.suppress(PATIENT, "broadcast")
    results = postmark.client.emails.send_batch(
        *[{"From": "hello@demo.example", "To": to, "Subject": "s", "TextBody": "hi"}
          for to in ("ok@example.com", PATIENT)],
        MessageStream="broadcast",
    )  # fmt: skip
    assert [r["ErrorCode"] for r in results] == [0, 406]
