"""kill -9 a dispatch run at random moments, run again: nobody gets a message twice, nothing is lost.

The sandboxes run in the test process; dispatch runs in a subprocess (this file, run as a script)
against a real DuckDB file, so a SIGKILL can land anywhere: mid-claim, between committing
`sending` and the HTTP call, mid-request, before the outcome is recorded. Counted at the
provider stand-ins: each message delivered exactly once, and `unknown` only for a request that
reached the provider.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMAILS, SMS = 300, 100
INACTIVE_EVERY = 17  # every 17th email address is inactive at Postmark (406)
STOPPED_EVERY = 13  # every 13th number replied STOP (21610)
KILLS = 15  # runs killed at random moments before one is let finish


def email_of(patient_id: int) -> str:
    if patient_id % INACTIVE_EVERY == 0:
        return f"gone{patient_id}@example.com"
    return f"p{patient_id}@example.com"


def phone_of(patient_id: int) -> str:
    return f"+6141{patient_id:07d}"


def worker(db: str, postmark_url: str, twilio_url: str, first: str) -> None:
    """One dispatch run, as a tick would do it: open the clinic database, send what is due."""
    sys.path.insert(0, str(ROOT))
    from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN
    from tasks.messages.dispatch import dispatch
    from tasks.messages.prepare import Ready
    from tasks.messages.templates import Templates, build_context
    from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
    from tasks.providers.twilio import TwilioProvider, TwilioSettings
    from tasks.warehouse import open_db

    email = PostmarkProvider(
        PostmarkSettings(
            "sandbox-postmark-token", "Demo <hello@demo.example>", base_url=postmark_url
        )
    )
    email.batch_size = 10  # many small claims: more moments for the kill to land between
    sms = TwilioProvider(
        TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, from_number="+61400000000", base_url=twilio_url)
    )
    sms.batch_size = 5

    def prepare(row):
        to = email_of(row.patient_id) if row.channel == "email" else phone_of(row.patient_id)
        context = build_context(
            clinic={"name": "Demo", "phone": "03 9000 0000", "website": "https://d.example",
                    "address": "1 St", "email": "hello@demo.example"},
            first_name=f"Patient{row.patient_id}",
            appointment_starts_at=datetime(2026, 3, 2, 23, 0, tzinfo=UTC),
            time_zone="Australia/Melbourne", appointment_type="Follow-up",
            practitioner="Dr Who", business="Richmond",
        )  # fmt: skip
        return Ready(to=to, context=context)

    providers = {"email": email, "sms": sms} if first == "email" else {"sms": sms, "email": email}
    with open_db(db) as con:
        print("ready", flush=True)  # imports done, database open: the kill window starts here
        dispatch(
            con, providers=providers, prepare=prepare, templates=Templates(), settle=timedelta(0)
        )


def plan_all(db: Path) -> None:
    from tasks.messages import ledger
    from tasks.messages.ledger import PlannedMessage, make_send_key
    from tasks.warehouse import open_db

    now = datetime.now(UTC) - timedelta(minutes=1)
    messages = [
        PlannedMessage(
            make_send_key("trigger", "welcome", i, f"appointment:{i}"),
            "trigger",
            "welcome",
            i,
            "email",
            "transactional",
            "welcome",
            now,
            appointment_id=i,
        )  # fmt: skip
        for i in range(1, EMAILS + 1)
    ] + [
        PlannedMessage(
            make_send_key("trigger", "reminder", i, f"appointment:{i}"),
            "trigger",
            "reminder",
            i,
            "sms",
            "transactional",
            "reminder-24h",
            now,
            appointment_id=i,
        )  # fmt: skip
        for i in range(1, SMS + 1)
    ]
    with open_db(db) as con:
        ledger.insert_planned(con, messages, now)


@pytest.fixture
def sandboxes():
    from sandbox.postmark import PostmarkSandbox
    from sandbox.twilio import TwilioSandbox

    postmark = PostmarkSandbox(
        inactive={email_of(i) for i in range(INACTIVE_EVERY, EMAILS + 1, INACTIVE_EVERY)}
    )
    twilio = TwilioSandbox(
        stopped={phone_of(i) for i in range(STOPPED_EVERY, SMS + 1, STOPPED_EVERY)}
    )
    # every reply a little late, after the provider has acted: kills land in the window where
    # a message went but the ledger does not know yet, the one reconciliation exists for
    postmark.faults.add("slow_reply", times=10**6, delay=0.05)
    twilio.faults.add("slow_reply", times=10**6, delay=0.04)
    with postmark.serve() as pm_server, twilio.serve() as tw_server:
        postmark.url, twilio.url = pm_server.url, tw_server.url
        yield postmark, twilio


def spawn(db: Path, postmark, twilio, first: str = "email") -> subprocess.Popen:
    """A dispatch run in its own process; ``first`` says which channel it sends first."""
    return subprocess.Popen(
        [sys.executable, __file__, str(db), postmark.url, twilio.url, first],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]


def assert_at_most_once_and_accounted_for(db: Path, postmark, twilio) -> dict[str, int]:
    from tasks.messages import ledger
    from tasks.warehouse import open_db

    assert max(postmark.send_key_counts().values()) == 1
    assert max(twilio.body_counts().values()) == 1
    with open_db(db, read_only=True) as con:
        rows = {r.send_key: r for s in ledger.STATUSES for r in ledger.in_status(con, s)}
        counts = ledger.status_counts(con)
    assert len(rows) == EMAILS + SMS
    assert set(counts) <= {"sent", "failed", "unknown"}, counts
    by_key = {m["Metadata"]["send_key"]: m["MessageID"] for m in postmark.accepted}
    for key, row in rows.items():
        if row.channel != "email":
            continue
        if row.status == "sent":
            assert by_key[key] == row.provider_message_id
        elif row.status == "failed":
            assert key not in by_key and row.error_code == "406"
        else:  # unknown: allowed only if it may really have gone
            pytest.fail(f"email {key} is unknown although Postmark can be searched by send key")
    sids = {m["sid"] for m in twilio.accepted}
    for row in rows.values():
        if row.channel == "sms" and row.status == "sent":
            assert row.provider_message_id in sids
    # everything the providers accepted is in the ledger as sent, or unknown (for a person)
    for key in by_key:
        assert rows[key].status == "sent"
    sent_sids = {r.provider_message_id for r in rows.values() if r.status == "sent"}
    unknown_sms = sum(1 for r in rows.values() if r.channel == "sms" and r.status == "unknown")
    assert len(sids - sent_sids) <= unknown_sms
    return counts


def reconciled(db: Path) -> int:
    """Rows whose fate a later run settled with the provider: the kill landed mid-flight."""
    from tasks.warehouse import open_db

    with open_db(db, read_only=True) as con:
        return con.execute(
            "SELECT count(*) FROM state.messages WHERE status_reason LIKE 'reconcile%' OR attempts > 1"
        ).fetchone()[0]


def figures(db: Path, postmark, twilio) -> dict[str, int]:
    """What the stand-ins received against what should have gone, and what is left in doubt."""
    from tasks.messages import ledger
    from tasks.warehouse import open_db

    deliverable_email = EMAILS - EMAILS // INACTIVE_EVERY
    deliverable_sms = SMS - SMS // STOPPED_EVERY
    emails, texts = postmark.send_key_counts(), twilio.body_counts()
    with open_db(db, read_only=True) as con:
        unknown = ledger.in_status(con, "unknown")
    reached = {m["to"] for m in twilio.accepted} | {m["to"] for m in twilio.rejected}
    reached_email = {m["To"] for m in postmark.accepted} | {m["To"] for m in postmark.rejected}
    return {
        "messages": EMAILS + SMS,
        "duplicates": sum(n - 1 for n in [*emails.values(), *texts.values()]),
        "lost": (deliverable_email - len(emails)) + (deliverable_sms - len(texts)),
        "unknown": len(unknown),
        "unknown_never_reached": sum(
            1
            for r in unknown
            if r.to_address not in (reached if r.channel == "sms" else reached_email)
        ),
    }


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_until_done_delivers_each_message_exactly_once(
    tmp_path, sandboxes
):
    postmark, twilio = sandboxes
    db = tmp_path / "clinic.duckdb"
    plan_all(db)
    rng = random.Random(int(os.environ.get("RELAY_CRASH_SEED", "5")))
    kills = 0
    for attempt in range(KILLS + 1):  # KILLS runs killed at random moments, then one to the end
        proc = spawn(db, postmark, twilio, first=("email", "sms")[attempt % 2])
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-3000:]
        try:
            # the kill lands inside dispatch, not in Python's start-up, whatever the machine;
            # a run that finishes before its moment ends the test early. (Waiting for a run to
            # finish inside a random 1.5 s took up to 100 runs on a loaded machine: 7 minutes.)
            proc.wait(timeout=rng.uniform(0.0, 1.5) if kills < KILLS else 300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode()
            proc.stderr.close()
        assert proc.returncode == 0, err[-3000:]
        break
    else:
        pytest.fail(f"dispatch never finished ({kills} runs killed, the last not)")
    counts = assert_at_most_once_and_accounted_for(db, postmark, twilio)
    found = figures(db, postmark, twilio)
    print(f"kill -9: trials={kills} {found} ledger={counts}")
    assert kills >= 5, "the runs finished before they could be killed: slow them down"
    assert reconciled(db) > 0, "no kill landed while messages were in flight"
    assert (found["duplicates"], found["lost"], found["unknown_never_reached"]) == (0, 0, 0)
    assert counts["sent"] == (EMAILS - EMAILS // INACTIVE_EVERY) + (SMS - SMS // STOPPED_EVERY)


@pytest.mark.integration
@pytest.mark.slow
def test_two_dispatch_processes_started_together_send_each_message_once(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    db = tmp_path / "clinic.duckdb"
    plan_all(db)
    first, second = spawn(db, postmark, twilio), spawn(db, postmark, twilio)
    finish(first)
    finish(second)
    counts = assert_at_most_once_and_accounted_for(db, postmark, twilio)
    assert counts.get("unknown", 0) == 0
    assert len(postmark.accepted) == EMAILS - EMAILS // INACTIVE_EVERY
    assert len(twilio.accepted) == SMS - SMS // STOPPED_EVERY


if __name__ == "__main__":
    worker(*sys.argv[1:5])
