"""The real feedback flow, once (ephemeral Prefect server, ~10 s): providers from the clinic's
config, every feed pulled, and table artifacts that carry counts and no personal data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import feedback
from tasks.unsubscribe.tokens import UnsubscribeClaim
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

ADDRESSES = ("hard@example.com", "unsub@example.com", "+61411111111")


def test_the_flow_pulls_every_feed_and_its_artifacts_carry_counts_only(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.feedback import pull_feedback
    from sandbox.postmark import PostmarkSandbox
    from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox

    db = tmp_path / "flowtest.duckdb"
    config = tmp_path / "clinic.yaml"
    config.write_text(
        f"clinic: flowtest\nname: Flow test\ndatabase: {db}\n"
        "providers:\n  email: env\n  sms: env\n",
        encoding="utf-8",
    )
    with open_db(db):  # synced once: before that, feedback says to run a sync first
        pass
    now = datetime.now(UTC)
    postmark, twilio = PostmarkSandbox(), TwilioSandbox()
    postmark.bounce(ADDRESSES[0], "HardBounce", at=now - timedelta(hours=1))
    postmark.suppress(ADDRESSES[1], "broadcast", at=now - timedelta(hours=1))
    twilio.receive(ADDRESSES[2], "STOP", at=now - timedelta(hours=1))
    feedback.spool_unsubscribe(  # a click for a message the ledger does not hold
        feedback.inbox_path(db), UnsubscribeClaim("flowtest", 1, 99, "email"), now
    )
    with postmark.serve() as pm, twilio.serve() as tw:
        for name, value in {
            "POSTMARK_SERVER_TOKEN": postmark.server_token, "POSTMARK_FROM": "d@demo.example",
            "POSTMARK_BASE_URL": pm.url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM": "+61400000000",
            "TWILIO_BASE_URL": tw.url,
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        state = pull_feedback(clinic=str(config), return_state=True)

    assert state.is_completed(), state.message
    assert state.result() == {
        "bounces_hard": 1, "suppressed_hard_bounce": 1, "already_suppressed": 1,
        "suppressed_unsubscribed": 1, "sms_stop": 1, "unsubscribe_unmatched": 1,
    }  # fmt: skip
    with open_db(db, read_only=True) as con:
        feeds = con.execute("SELECT provider, feed FROM state.feedback_cursors ORDER BY 1, 2")
        assert feeds.fetchall() == [
            ("postmark", "bounces:broadcast"), ("postmark", "bounces:outbound"),
            # opens and clicks (tasks/engagement.py): read even with nothing tracked yet
            ("postmark", "clicks:broadcast"), ("postmark", "clicks:outbound"),
            ("postmark", "opens:broadcast"), ("postmark", "opens:outbound"),
            ("postmark", "suppressions:broadcast"),
            ("postmark", "suppressions:outbound"), ("twilio", "inbound"),
            ("unsubscribe_link", "clicks"),
        ]  # fmt: skip

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert {a.key for a in artifacts} == {
        "feedback-flowtest", "messages-flowtest", "deliveries-flowtest", "lists-flowtest",
        "suppressions-flowtest",
    }  # fmt: skip
    published = " ".join(str(a.data) for a in artifacts)  # each table is a JSON text
    assert '"reason": "stop"' in published
    for address in ADDRESSES:
        assert address not in published, "personal data in an artifact"
