"""kill -9 a feedback pull at random moments, pull again: every bounce, complaint, provider
suppression, STOP and SMS delivery status is recorded exactly once, the fifth soft bounce
suppresses once, and each landline once.

The sandboxes run in the test process; the pull runs in a subprocess (this file, run as a script)
against a real DuckDB file, so a SIGKILL can land anywhere: mid-request, mid-transaction, between
one feed's commit and the next feed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
ROUNDS = 6  # each round: new feedback at the providers, then a pull killed at a random moment
HARD, SOFT, SOFT_FEW, COMPLAINTS, UNSUBSCRIBES, STOPS = 60, 60, 40, 10, 30, 60
LANDLINES, MOBILES = 5, 5  # SMS sent each round: Twilio accepts them, the carrier reports later
OUR_NUMBER = "+61400000000"


def more_feedback(postmark, twilio, r: int) -> None:
    """Round r's news. The SOFT addresses bounce once a round (their fifth comes in round 4);
    the SOFT_FEW ones only in the first four rounds (never five)."""
    at = NOW - timedelta(hours=6) + timedelta(minutes=10 * r)
    for i in range(HARD):
        postmark.bounce(f"hard{r}.{i}@example.com", "HardBounce", at=at + timedelta(seconds=i))
    for i in range(SOFT):
        postmark.bounce(f"soft{i}@example.com", "SoftBounce", stream="broadcast", at=at)
    for i in range(SOFT_FEW if r < 4 else 0):
        postmark.bounce(f"few{i}@example.com", "SoftBounce", stream="broadcast", at=at)
    for i in range(COMPLAINTS):
        postmark.bounce(f"complaint{r}.{i}@example.com", "SpamComplaint", stream="broadcast",
                        at=at)  # fmt: skip
    for i in range(UNSUBSCRIBES):
        postmark.suppress(f"unsub{r}.{i}@example.com", "broadcast", at=at)
    for i in range(STOPS):
        twilio.receive(f"+614{r}{i:06d}", "STOP", to=OUR_NUMBER, at=at + timedelta(seconds=i))
    for i in range(0, STOPS if r else 0, 4):  # a quarter of last round's came back
        twilio.receive(f"+614{r - 1}{i:06d}", "START", to=OUR_NUMBER, at=at + timedelta(minutes=1))


def more_sms(db: Path, twilio, r: int) -> None:
    """Round r's SMS: sent through the real client to the sandbox and recorded in the ledger as
    dispatch records them; the landlines among them come back undelivered (30006)."""
    from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN
    from tasks.messages import ledger
    from tasks.messages.ledger import PlannedMessage, make_send_key
    from tasks.providers.common import OutgoingMessage, RenderedSms
    from tasks.providers.twilio import TwilioProvider, TwilioSettings
    from tasks.warehouse import open_db

    numbers = [f"+612555{r}{i:04d}" for i in range(LANDLINES)]
    numbers += [f"+614555{r}{i:04d}" for i in range(MOBILES)]
    twilio.delivery_errors.update({n: 30006 for n in numbers[:LANDLINES]})
    provider = TwilioProvider(
        TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, from_number=OUR_NUMBER, base_url=twilio.url)
    )
    now = datetime.now(UTC)
    with open_db(db) as con:
        for i, number in enumerate(numbers):
            key = make_send_key("trigger", "reminder", 1000 * r + i, "crash")
            ledger.insert_planned(con, [PlannedMessage(key, "trigger", "reminder", 1000 * r + i,
                                                       "sms", "transactional", "t", now)], now)  # fmt: skip
            (mid,) = [ledger.get(con, key).message_id]
            message = OutgoingMessage(mid, key, "sms", "transactional", "reminder", number,
                                      RenderedSms("Your appointment is tomorrow."))  # fmt: skip
            (outcome,) = provider.send([message])
            ledger.transition(con, [mid], "planned", "sending", now,
                              values={"to_address": [number], "provider": ["twilio"]})  # fmt: skip
            ledger.transition(con, [mid], "sending", "sent", now,
                              values={"provider_message_id": [outcome.provider_message_id]})  # fmt: skip
    provider.close()


def worker(db: str, postmark_url: str, twilio_url: str) -> None:
    """Every feed once, as the tick's feedback step pulls them."""
    sys.path.insert(0, str(ROOT))
    from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN
    from tasks.config import MarketingListSettings
    from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
    from tasks.providers.twilio import TwilioProvider, TwilioSettings
    from tasks.warehouse import open_db

    postmark = PostmarkProvider(
        PostmarkSettings("sandbox-postmark-token", "d@demo.example", base_url=postmark_url)
    )
    twilio = TwilioProvider(
        TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, from_number=OUR_NUMBER, base_url=twilio_url)
    )
    now = datetime.now(UTC)
    limit = MarketingListSettings().soft_bounce_limit
    feeds = [*postmark.feedback_feeds(limit), *twilio.feedback_feeds(limit)]
    with open_db(db) as con:
        for feed in feeds:
            print(f"pulling {feed.name}", flush=True)  # the test kills us some time after this
            feed.pull(con, now)
    print("done", flush=True)


@pytest.fixture
def sandboxes():
    from sandbox.postmark import PostmarkSandbox
    from sandbox.twilio import TwilioSandbox

    postmark, twilio = PostmarkSandbox(inactive=set()), TwilioSandbox()
    # every answer a little late, so a pull spends time both waiting and writing
    postmark.faults.add("slow", times=10**6, delay=0.1)
    twilio.faults.add("slow", times=10**6, delay=0.1)
    twilio.progression = (timedelta(0), timedelta(0), timedelta(0))  # final by the next pull
    with postmark.serve() as pm_server, twilio.serve() as tw_server:
        postmark.url, twilio.url = pm_server.url, tw_server.url
        yield postmark, twilio


def spawn(db: Path, postmark, twilio) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(db), postmark.url, twilio.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_during_feedback_pulls_then_pull_again_records_everything_once(tmp_path, sandboxes):
    from tasks.warehouse import open_db

    postmark, twilio = sandboxes
    db = tmp_path / "clinic.duckdb"
    rng = random.Random(int(os.environ.get("RELAY_CRASH_SEED", "11")))
    killed_mid_pull = 0
    for r in range(ROUNDS):
        more_feedback(postmark, twilio, r)
        more_sms(db, twilio, r)
        proc = spawn(db, postmark, twilio)
        feed = rng.choice(["postmark-bounces", "postmark-suppressions-outbound",
                           "postmark-suppressions-broadcast", "twilio-replies",
                           "twilio-delivery"])  # fmt: skip
        target = f"pulling {feed}"
        for line in proc.stdout:
            if line.decode().strip() in (target, "done"):
                break
        time.sleep(rng.uniform(0.0, 0.4))  # into the request, or into the transaction
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        killed_mid_pull += b"done" not in out
    final = spawn(db, postmark, twilio)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()[-3000:]
    assert killed_mid_pull, "no kill landed while a pull was running: nothing was tested"

    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.email_bounces").fetchone() == (
            ROUNDS * (HARD + SOFT + COMPLAINTS) + 4 * SOFT_FEW,
        )
        rows = dict(
            con.execute(
                "SELECT channel || ' ' || action || ' ' || reason, count(*) FROM state.suppressions "
                "GROUP BY 1"
            ).fetchall()
        )
        duplicates = con.execute(
            "SELECT count(*) FROM (SELECT address, action, reason, count(*) AS n "
            "FROM state.suppressions GROUP BY ALL HAVING n > 1)"
        ).fetchone()
        deliveries = dict(
            con.execute(
                "SELECT status || coalesce(' ' || error_code, ''), count(*) "
                "FROM state.sms_deliveries WHERE final GROUP BY 1"
            ).fetchall()
        )
        delivery_items = con.execute(
            "SELECT count(*) FROM state.feedback_items WHERE feed = 'delivery'"
        ).fetchone()
    assert deliveries == {"undelivered 30006": ROUNDS * LANDLINES, "delivered": ROUNDS * MOBILES}
    assert delivery_items == (ROUNDS * (LANDLINES + MOBILES),)
    assert rows == {
        "email suppress hard_bounce": ROUNDS * HARD,
        "email suppress soft_bounce_limit": SOFT,
        "email suppress spam_complaint": ROUNDS * COMPLAINTS,
        "email suppress unsubscribed": ROUNDS * UNSUBSCRIBES,
        "sms suppress stop": ROUNDS * STOPS,
        "sms lift opt_in": (ROUNDS - 1) * len(range(0, STOPS, 4)),
        "sms suppress undeliverable": ROUNDS * LANDLINES,
    }
    assert duplicates == (0,)


if __name__ == "__main__":
    worker(*sys.argv[1:])
