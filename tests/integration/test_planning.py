"""Triggers end to end: sandbox Cliniko over HTTP -> sync -> models -> plan -> dispatch, into a real
DuckDB file, out through the local outbox and through the real Postmark and Twilio clients to
their sandboxes. The demo clinic's three triggers (clinics/demo/clinic.yaml) are the ones used.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from sandbox.postmark import PostmarkSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry
from tasks.config import load_clinic
from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.templates import Templates
from tasks.models import runner as models
from tasks.providers.outbox import OutboxProvider
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings
from tasks.triggers import plan as planning
from tasks.triggers.prepare import Preparer
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=11, patients=300, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


def tick(db, server, clinic, config, now: datetime) -> planning.PlanResult:
    """What the scheduled tick does before sending: sync, build the models, plan."""
    retry = Retry(initial_seconds=0.01, max_seconds=0.2)
    with (
        ClinikoClient(
            clinic.api_key, "t@example.com", server.base_url, pace=None, retry=retry
        ) as c,
        open_db(db) as con,
    ):
        extract.run_sync(con, c)
        models.build(con, models.ListSettings.from_config(config), now=now)
        return planning.plan(con, config, now)


def send(con, config, providers, now: datetime):
    planning.recheck(con, config, now)
    return dispatch(
        con,
        providers=providers,
        prepare=Preparer(con, config, clock=lambda: now),
        templates=Templates(config.folder),
        unsubscribe=Unsubscribe(config.clinic, config.providers.unsubscribe_url),
        clock=lambda: now,
    )


def by_status(con) -> Counter:
    return Counter(
        (name, status)
        for name, status in con.execute("SELECT source_name, status FROM state.messages").fetchall()
    )


def test_sandbox_clinic_to_outbox_and_providers(tmp_path, clinic, server):
    config = load_clinic("demo")
    db = tmp_path / "clinic.duckdb"

    # First tick: the triggers go live now; nothing from before fires.
    tick(db, server, clinic, config, START)
    with open_db(db) as con:
        assert con.execute(
            "SELECT count(*) FROM state.trigger_activations WHERE went_live_at = ?", [START]
        ).fetchone() == (sum(t.enabled for t in config.triggers),)  # every demo trigger
        assert con.execute(
            "SELECT count(*) FROM state.messages WHERE due_at < ?", [START]
        ).fetchone() == (0,)
        reminders = con.execute(
            """SELECT a.category, a.starts_at FROM state.messages m
               JOIN marts.appointments a ON a.appointment_id = m.appointment_id
               WHERE m.source_name = 'sms-reminder-24h'"""
        ).fetchall()
        assert reminders, "a 300-patient clinic has appointments in the next two days"
        assert all(category != "Admin Only" for category, _ in reminders)

    # Two hours of clinic life: bookings, cancellations, reschedules, arrivals.
    clinic.advance(timedelta(hours=2))
    later = START + timedelta(hours=2)
    result = tick(db, server, clinic, config, later)
    outbox = tmp_path / "outbox"
    with open_db(db) as con:
        # nothing planned for an appointment that is no longer kept
        stale = con.execute(
            """SELECT count(*) FROM state.messages m
               JOIN marts.appointments a ON a.appointment_id = m.appointment_id
               WHERE m.status = 'planned' AND m.source_name = 'sms-reminder-24h'
                 AND a.status NOT IN ('upcoming', 'arrived', 'unmarked')"""
        ).fetchone()
        assert stale == (0,)
        sent = send(con, config, {"email": OutboxProvider(outbox, email_from="a@b.example",
                                  sms_from="Demo"), "sms": OutboxProvider(outbox,
                                  email_from="a@b.example", sms_from="Demo")}, later)  # fmt: skip
        assert sent.counts["sent"] > 0
        assert not ledger.due(con, later), "every due message was decided"
        sent_keys = {r.send_key for r in ledger.in_status(con, "sent")}
        assert len(list(outbox.glob("*.json"))) == len(sent_keys)
    assert result.totals["planned"] >= 0

    # Two more hours, then send through the real clients to the provider sandboxes.
    clinic.advance(timedelta(hours=2))
    latest = START + timedelta(hours=4)
    tick(db, server, clinic, config, latest)
    postmark, twilio = PostmarkSandbox(), TwilioSandbox()
    with postmark.serve() as pm, twilio.serve() as tw, open_db(db) as con:
        before = by_status(con)
        providers = {
            "email": PostmarkProvider(PostmarkSettings(postmark.server_token,
                                      "Demo <hello@demo.example>", base_url=pm.url)),
            "sms": TwilioProvider(TwilioSettings(ACCOUNT_SID, AUTH_TOKEN,
                                  from_number="+61400000000", base_url=tw.url)),
        }  # fmt: skip
        outcome = send(con, config, providers, latest)
        after = by_status(con)
        sms_sent = after["sms-reminder-24h", "sent"] - before["sms-reminder-24h", "sent"]
        assert sms_sent > 0 and len(twilio.accepted) == sms_sent
        assert all(n == 1 for n in twilio.body_counts().values())
        email_sent = sum(
            after[t.name, "sent"] - before[t.name, "sent"]
            for t in config.triggers
            if t.channel == "email"
        )
        assert len(postmark.accepted) == email_sent
        assert all(n == 1 for n in postmark.send_key_counts().values())
        assert outcome.counts["sent"] == sms_sent + email_sent
        # marketing mail went only to the subscribed list, on the broadcast stream
        subscribed = {
            r[0]
            for r in con.execute(
                "SELECT email FROM marts.email_marketing_list WHERE status = 'subscribed'"
            ).fetchall()
        }
        for message in postmark.accepted:
            if message.get("MessageStream") == "broadcast":
                assert message["To"].lower() in subscribed
        # a rerun sends nothing again
        again = send(con, config, providers, latest)
        assert again.counts["sent"] == 0
