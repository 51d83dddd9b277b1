"""Dispatch through the local outbox: the re-check before sending, the skip reasons, at most once."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta
from email import policy

import pytest

from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch, reconcile
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready, Skip
from tasks.messages.templates import Templates, build_context
from tasks.providers.outbox import OutboxProvider, list_messages, stem_for
from tasks.unsubscribe import tokens as unsubscribe
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CLINIC = {"name": "Demo Physio", "phone": "03 9000 1234", "website": "https://demo.example",
          "address": "12 Swan St", "email": "hello@demo.example"}  # fmt: skip
KEY = b"unit-test-unsubscribe-key"


class Patients:
    """A tiny stand-in for the planner's prepare(): a patient table and the re-check rules."""

    def __init__(self):
        self.address: dict[int, str] = {}
        self.cancelled: set[int] = set()
        self.unsubscribed: set[int] = set()
        self.context_of = lambda row: build_context(
            clinic=CLINIC, first_name=f"Pat{row.patient_id}",
            appointment_starts_at=NOW + timedelta(days=1), time_zone="Australia/Melbourne",
            appointment_type="Follow-up", practitioner="Dr Who", business="Richmond",
        )  # fmt: skip
        self.prepared: list[int] = []

    def prepare(self, row):
        self.prepared.append(row.message_id)
        if row.appointment_id in self.cancelled:
            return Skip("appointment cancelled", cancel=True)
        if row.patient_id in self.unsubscribed:
            return Skip("patient unsubscribed")
        return Ready(to=self.address[row.patient_id], context=self.context_of(row))


def plan(con, patient_id, *, channel="email", purpose="transactional", template="welcome",
         due=NOW, expires=None, source="welcome"):  # fmt: skip
    message = PlannedMessage(
        send_key=make_send_key("trigger", source, patient_id, f"appointment:{patient_id}"),
        source_kind="trigger", source_name=source, patient_id=patient_id,
        appointment_id=patient_id, channel=channel, purpose=purpose, template=template,
        due_at=due, expires_at=expires,
    )  # fmt: skip
    ledger.insert_planned(con, [message], NOW)
    return message.send_key


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


@pytest.fixture
def outbox(tmp_path):
    return OutboxProvider(
        tmp_path / "outbox", email_from="Demo <hello@demo.example>", sms_from="Demo"
    )


@pytest.fixture
def patients():
    p = Patients()
    for i in range(1, 10):
        p.address[i] = f"pat{i}@example.com"
    return p


def run(con, outbox, patients, now=NOW, **kw):
    return dispatch(
        con, providers={"email": outbox, "sms": outbox}, prepare=patients.prepare,
        templates=Templates(), unsubscribe=Unsubscribe("demo", "https://relay.example/u", KEY),
        clock=lambda: now, **kw,
    )  # fmt: skip


def status(con, key):
    return ledger.get(con, key).status


def test_a_due_message_is_rendered_into_the_outbox_once_even_when_dispatch_runs_again(
    con, outbox, patients
):
    key = plan(con, 1)
    result = run(con, outbox, patients)
    assert result.counts["sent"] == 1
    row = ledger.get(con, key)
    assert (row.status, row.provider, row.attempts) == ("sent", "outbox", 1)
    assert row.provider_message_id == f"outbox-{stem_for(key)}"
    assert row.to_address == "pat1@example.com"
    assert run(con, outbox, patients).counts["sent"] == 0
    (listed,) = list_messages(outbox.folder)
    assert listed["send_key"] == key
    mail = email.message_from_bytes(
        (outbox.folder / listed["file"]).read_bytes(), policy=policy.default
    )
    assert mail["Subject"] == "Welcome to Demo Physio, Pat1"
    assert "index.html" in {p.name for p in outbox.folder.iterdir()}


def test_a_message_not_yet_due_is_left_alone(con, outbox, patients):
    key = plan(con, 1, due=NOW + timedelta(minutes=5))
    run(con, outbox, patients)
    assert status(con, key) == "planned" and patients.prepared == []


def test_the_recheck_cancels_or_skips_with_the_planners_reason(con, outbox, patients):
    cancelled, unsubscribed = plan(con, 1), plan(con, 2)
    patients.cancelled.add(1)
    patients.unsubscribed.add(2)
    result = run(con, outbox, patients)
    assert (result.counts["cancelled"], result.counts["skipped"], result.counts["sent"]) == (
        1,
        1,
        0,
    )
    assert ledger.get(con, cancelled).status_reason == "appointment cancelled"
    assert (status(con, cancelled), status(con, unsubscribed)) == ("cancelled", "skipped")
    assert list_messages(outbox.folder) == []


def test_a_message_past_its_grace_window_is_skipped_not_sent_late(con, outbox, patients):
    key = plan(con, 1, due=NOW - timedelta(hours=3), expires=NOW - timedelta(hours=1))
    run(con, outbox, patients)
    row = ledger.get(con, key)
    assert (row.status, row.status_reason) == ("skipped", "past its grace window")
    assert patients.prepared == []


def test_a_template_with_a_missing_variable_sends_nothing(con, outbox, patients, tmp_path):
    (tmp_path / "templates" / "bad").mkdir(parents=True)
    (tmp_path / "templates" / "bad" / "sms.txt").write_text("Hi {{ patient.nickname }}")
    key = plan(con, 1, channel="sms", template="bad")
    patients.address[1] = "+61400000001"
    dispatch(
        con, providers={"sms": outbox}, prepare=patients.prepare, templates=Templates(tmp_path),
        clock=lambda: NOW,
    )  # fmt: skip
    row = ledger.get(con, key)
    assert row.status == "skipped" and "nickname" in row.status_reason
    assert list_messages(outbox.folder) == []


def test_marketing_skips_an_address_suppressed_for_marketing_but_reminders_still_go(
    con, outbox, patients
):
    ledger.add_suppression(
        con, channel="email", address="PAT1@example.com", scope="marketing",
        reason="unsubscribed", source="unsubscribe_link", evidence="test", occurred_at=NOW,
    )  # fmt: skip
    marketing = plan(con, 1, purpose="marketing", template="recall", source="recall")
    reminder = plan(con, 1, source="welcome")
    run(con, outbox, patients)
    assert ledger.get(con, marketing).status_reason == "address suppressed (marketing)"
    assert (status(con, marketing), status(con, reminder)) == ("skipped", "sent")


def test_an_address_suppressed_for_everything_gets_nothing(con, outbox, patients):
    ledger.add_suppression(
        con, channel="sms", address="+61400000002", scope="all", reason="stop",
        source="twilio", evidence="test", occurred_at=NOW,
    )  # fmt: skip
    patients.address[2] = "+61400000002"
    key = plan(con, 2, channel="sms", template="reminder-24h", source="reminder")
    run(con, outbox, patients)
    assert status(con, key) == "skipped"


def test_an_unusable_address_is_skipped_with_a_reason_that_does_not_repeat_it(
    con, outbox, patients
):
    patients.address[1] = "not-an-email"
    patients.address[2] = "0400 000 000"
    email_key = plan(con, 1)
    sms_key = plan(con, 2, channel="sms", template="reminder-24h", source="reminder")
    run(con, outbox, patients)
    assert ledger.get(con, email_key).status_reason == "the email address on file is not valid"
    assert ledger.get(con, sms_key).status_reason == "the phone number on file is not E.164"


def test_marketing_email_carries_a_signed_unsubscribe_link_and_one_click_headers(
    con, outbox, patients
):
    key = plan(con, 3, purpose="marketing", template="recall", source="recall")
    run(con, outbox, patients)
    row = ledger.get(con, key)
    (listed,) = list_messages(outbox.folder)
    mail = email.message_from_bytes(
        (outbox.folder / listed["file"]).read_bytes(), policy=policy.default
    )
    url = mail["List-Unsubscribe"].strip().strip("<>")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url in mail.get_body(("plain",)).get_content()
    claim = unsubscribe.verify(url.rsplit("/", 1)[1], key=KEY)
    assert (claim.patient_id, claim.message_id, claim.channel) == (3, row.message_id, "email")


class Delivering(OutboxProvider):
    """A provider whose mail reaches patients (Postmark on a stream relay handles, say)."""

    reaches_people = True


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8765/unsubscribe", "http://relay.acme-physio.com.au/unsubscribe",
     "https://localhost/unsubscribe", "https://10.0.0.5/unsubscribe"],
)  # fmt: skip
def test_marketing_email_waits_while_its_unsubscribe_link_could_not_work_for_patients(
    con, tmp_path, patients, base_url
):
    """clinic.yaml's unsubscribe_url left at 127.0.0.1 (or plain http) with a real provider:
    every marketing email would carry a dead link. It waits, said once as a stop; reminders go."""
    provider = Delivering(tmp_path / "out", email_from="D <d@demo.example>", sms_from="D")
    marketing = plan(con, 1, purpose="marketing", template="recall", source="recall")
    reminder = plan(con, 2, source="welcome")
    result = dispatch(
        con, providers={"email": provider}, prepare=patients.prepare, templates=Templates(),
        unsubscribe=Unsubscribe("demo", base_url, KEY), clock=lambda: NOW,
    )  # fmt: skip
    assert (status(con, marketing), status(con, reminder)) == ("planned", "sent")
    assert "unsubscribe_url" in ledger.get(con, marketing).status_reason
    assert len(result.stopped) == 1 and "not a public HTTPS address" in result.stopped[0]

    fixed = Unsubscribe("demo", "https://relay.acme-physio.com.au/unsubscribe", KEY)
    dispatch(
        con, providers={"email": provider}, prepare=patients.prepare, templates=Templates(),
        unsubscribe=fixed, clock=lambda: NOW + timedelta(minutes=5),
    )  # fmt: skip
    assert status(con, marketing) == "sent"


def test_a_row_left_sending_by_a_dead_run_is_resent_only_if_the_outbox_never_got_it(
    con, outbox, patients
):
    went, never_went = plan(con, 1), plan(con, 2)
    rows = ledger.due(con, NOW)
    ledger.transition(
        con, [r.message_id for r in rows], "planned", "sending", NOW,
        values={"provider": ["outbox"] * 2, "claim_id": ["dead-run"] * 2,
                "to_address": ["pat1@example.com", "pat2@example.com"]},
        count_attempt=True,
    )  # fmt: skip
    # the dead run had written the first message before it died
    first = next(r for r in rows if r.send_key == went)
    outbox.send([_outgoing(first, patients)])
    before = {p.name: p.stat().st_mtime_ns for p in outbox.folder.iterdir()}

    result = run(con, outbox, patients)
    assert result.counts["reconciled_sent"] == 1 and result.counts["reconciled_retry"] == 1
    assert (status(con, went), status(con, never_went)) == ("sent", "sent")
    assert ledger.get(con, never_went).attempts == 2
    assert len(list_messages(outbox.folder)) == 2
    for name, mtime in before.items():
        if name != "index.html":
            assert (outbox.folder / name).stat().st_mtime_ns == mtime


def test_a_live_runs_sending_rows_are_not_reconciled(con, outbox, patients):
    from tasks.messages import dispatch as dispatch_module

    plan(con, 1)
    (row,) = ledger.due(con, NOW)
    ledger.transition(
        con, [row.message_id], "planned", "sending", NOW,
        values={"provider": ["outbox"], "claim_id": ["live-run"]},
    )  # fmt: skip
    dispatch_module._live_claims.add("live-run")
    try:
        result = reconcile(con, {"email": outbox}, NOW, settle=timedelta(0))
    finally:
        dispatch_module._live_claims.discard("live-run")
    assert sum(result.counts.values()) == 0
    assert ledger.get(con, row.send_key).status == "sending"


def test_a_row_left_sending_through_a_provider_no_longer_used_becomes_unknown_to_resolve(
    con, outbox, patients
):
    # The clinic moved from Postmark to the outbox after a run died mid-request: only
    # Postmark's account can say whether it went. It stayed 'sending' for good, which
    # `relay ledger resolve` (unknowns only) could not settle.
    key, fresh = plan(con, 1), plan(con, 2)
    rows = {r.send_key: r for r in ledger.due(con, NOW)}
    for send_key, at in ((key, NOW - timedelta(hours=1)), (fresh, NOW)):
        ledger.transition(
            con, [rows[send_key].message_id], "planned", "sending", at,
            values={"provider": ["postmark"], "claim_id": ["dead-run"]},
        )  # fmt: skip
    result = reconcile(con, {"email": outbox}, NOW, settle=timedelta(minutes=2))
    assert status(con, key) == "unknown" and status(con, fresh) == "sending"  # fresh: in flight?
    assert "left sending through postmark" in ledger.get(con, key).status_reason
    assert result.counts["reconciled_unknown"] == 1
    assert "relay ledger resolve" in result.problems[0] and "pat1" not in result.problems[0]
    assert outbox.folder.exists() is False or not list_messages(outbox.folder)  # nothing sent

    ledger.resolve(con, key, "resend", by="ops", note="not in Postmark's activity", now=NOW)
    run(con, outbox, patients, now=NOW + timedelta(minutes=5))
    assert status(con, key) == "sent"


def test_the_run_result_holds_counts_only(con, outbox, patients):
    plan(con, 1)
    patients.unsubscribed.add(1)
    result = run(con, outbox, patients)
    text = json.dumps(result.as_dict())
    assert "pat1@" not in text and "Pat1" not in text


def _outgoing(row, patients):
    from tasks.providers.common import OutgoingMessage

    content = Templates().render(
        row.template, row.channel, patients.context_of(row), marketing=False
    )
    return OutgoingMessage(
        message_id=row.message_id, send_key=row.send_key, channel=row.channel,
        purpose=row.purpose, tag=row.source_name, to=patients.address[row.patient_id],
        content=content,
    )  # fmt: skip


def test_a_recheck_that_crashes_holds_that_message_and_the_rest_still_go(con, outbox, patients):
    broken, fine = plan(con, 1, expires=NOW + timedelta(hours=2)), plan(con, 2)
    real = patients.prepare
    crashing = True

    def prepare(row):
        if row.patient_id == 1 and crashing:
            raise KeyError("pat1@example.com")
        return real(row)

    dispatch(con, providers={"email": outbox}, prepare=prepare, templates=Templates(),
             clock=lambda: NOW)  # fmt: skip
    row = ledger.get(con, broken)
    # it waits while its grace window lasts (it was skipped for good: a reminder lost to a bug,
    # even once the bug was fixed); a message with no grace window is skipped, as every wait is
    assert (row.status, row.waiting_reason) == (
        "planned",
        "the re-check before sending failed (KeyError)",
    )
    assert "pat1" not in row.status_reason
    assert status(con, fine) == "sent"
    crashing = False  # fixed (or the data that tripped it synced again): it goes
    dispatch(con, providers={"email": outbox}, prepare=prepare, templates=Templates(),
             clock=lambda: NOW + timedelta(hours=1))  # fmt: skip
    assert status(con, broken) == "sent"


def test_relay_outbox_lists_send_keys_and_opens_one_by_key(con, outbox, patients, data_dir):
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.providers.outbox import outbox_dir

    demo = OutboxProvider(outbox_dir("demo"), email_from="Demo <d@demo.example>", sms_from="Demo")
    key = plan(con, 1)
    run(con, demo, patients)
    listed = CliRunner().invoke(app, ["outbox", "--clinic", "demo"])
    assert listed.exit_code == 0 and key in listed.output
    assert "pat1@" not in listed.output
    assert (outbox_dir("demo") / "index.html").exists()
    opened = CliRunner().invoke(app, ["outbox", "--clinic", "demo", "--open", key])
    assert opened.output.strip().endswith(".eml")
    missing = CliRunner().invoke(app, ["outbox", "--clinic", "demo", "--open", "no-such-key"])
    assert missing.exit_code != 0
