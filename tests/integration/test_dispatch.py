"""Dispatch end to end: a real DuckDB file, the sandboxes over HTTP, the real client libraries.

Every provider answer ends in the ledger state it should, with suppressions where the address is
dead or opted out, and nothing is sent twice across reruns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from blocks.resolve import providers_for
from sandbox.postmark import PostmarkSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks.config import ClinicConfig
from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready, clinic_details
from tasks.messages.templates import Templates, build_context
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import TwilioProvider, TwilioSettings
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

START = datetime.now(UTC).replace(microsecond=0)
ADDRESS = {
    1: ("ok@example.com", "+61412000001"),
    2: ("inactive@sandbox.example.com", "+15005550004"),  # 406 / 21610 STOP
    3: ("invalid@sandbox.example.com", "+15005550001"),  # 300 / 21211
    4: ("also-ok@example.com", "+15005550009"),  # fine / 21614 landline
}


@pytest.fixture
def sandboxes():
    postmark, twilio = PostmarkSandbox(), TwilioSandbox()
    twilio.clock = lambda: START  # the runs' clock (``run`` moves it with theirs)
    with postmark.serve() as pm, twilio.serve() as tw:
        postmark.url, twilio.url = pm.url, tw.url
        yield postmark, twilio


def providers(postmark, twilio, timeout=5.0):
    return {
        "email": PostmarkProvider(
            PostmarkSettings(postmark.server_token, "Demo <hello@demo.example>",
                             base_url=postmark.url, timeout=timeout)
        ),
        "sms": TwilioProvider(
            TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, from_number="+61400000000",
                           base_url=twilio.url, timeout=timeout)
        ),
    }  # fmt: skip


def prepare(row):
    email, phone = ADDRESS[row.patient_id]
    return Ready(to=email if row.channel == "email" else phone, context=context_for(row))


def context_for(row):
    return build_context(
        clinic={"name": "Demo", "phone": "03 9000 0000", "website": "https://demo.example",
                "address": "1 St", "email": "hello@demo.example"},
        first_name=f"Pat{row.patient_id}", appointment_starts_at=START + timedelta(days=1),
        time_zone="Australia/Melbourne", appointment_type="Follow-up",
        practitioner="Dr Who", business="Richmond",
    )  # fmt: skip


def planned(patient_id, channel, *, purpose="transactional", source=None) -> PlannedMessage:
    template = {("email", "transactional"): "welcome", ("email", "marketing"): "recall",
                ("sms", "transactional"): "reminder-24h", ("sms", "marketing"): "promo-sms"}  # fmt: skip
    source = source or f"{channel}-{purpose}"
    return PlannedMessage(
        send_key=make_send_key("trigger", source, patient_id, "appointment:1"),
        source_kind="trigger", source_name=source, patient_id=patient_id, channel=channel,
        purpose=purpose, template=template[channel, purpose], due_at=START,
        expires_at=START + timedelta(days=1), appointment_id=1,
    )  # fmt: skip


def plan(con, patient_id, channel, **kw):
    message = planned(patient_id, channel, **kw)
    ledger.insert_planned(con, [message], START)
    return message.send_key


def run(con, postmark, twilio, at=START, **kw):
    # Twilio dates what it creates by its own clock, which reconciliation compares with the
    # attempt's moment: the run's clock, as the two agree within seconds in production
    twilio.clock = lambda: at
    return dispatch(
        con, providers=providers(postmark, twilio, **kw), prepare=prepare, templates=Templates(),
        unsubscribe=Unsubscribe("demo", "https://relay.example/u", b"k"), clock=lambda: at,
    )  # fmt: skip


def suppressions(con):
    return con.execute(
        "SELECT channel, address, scope, reason, source FROM state.suppressions ORDER BY 1, 2, 3"
    ).fetchall()


def test_each_provider_answer_ends_in_the_right_state_with_suppressions(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    with open_db(tmp_path / "c.duckdb") as con:
        keys = {(p, ch): plan(con, p, ch) for p in ADDRESS for ch in ("email", "sms")}
        marketing_inactive = plan(con, 2, "email", purpose="marketing")
        result = run(con, postmark, twilio)

        def row(p, ch):
            return ledger.get(con, keys[p, ch])

        assert row(1, "email").status == row(4, "email").status == "sent"
        assert row(1, "sms").status == "sent"
        assert (row(2, "email").status, row(2, "email").error_code) == ("failed", "406")
        assert (row(3, "email").status, row(3, "email").error_code) == ("failed", "300")
        assert [row(p, "sms").error_code for p in (2, 3, 4)] == ["21610", "21211", "21614"]
        assert ledger.get(con, marketing_inactive).status == "failed"
        assert row(1, "email").provider_message_id == postmark.accepted[0]["MessageID"]
        assert row(1, "sms").provider_message_id == twilio.accepted[0]["sid"]
        assert suppressions(con) == [
            # a hard bounce in each stream's dump: dead for every kind of mail, once per message
            ("email", "inactive@sandbox.example.com", "all", "hard_bounce", "postmark"),
            ("email", "inactive@sandbox.example.com", "all", "hard_bounce", "postmark"),
            ("email", "invalid@sandbox.example.com", "all", "invalid_address", "postmark"),
            ("sms", "+15005550001", "all", "invalid_address", "twilio"),
            ("sms", "+15005550004", "all", "stop", "twilio"),
            ("sms", "+15005550009", "all", "invalid_address", "twilio"),
        ]
        assert (result.counts["sent"], result.counts["failed"], result.counts["suppressed"]) == (
            3,
            6,
            6,
        )

        # a later message to a suppressed address is skipped before any provider call
        again = plan(con, 2, "sms", source="another-reminder")
        requests_before = len(twilio.requests)
        run(con, postmark, twilio, at=START + timedelta(minutes=1))
        assert ledger.get(con, again).status_reason == "address suppressed (transactional)"
        assert len(twilio.requests) == requests_before


def test_a_marketing_send_racing_a_postmark_unsubscribe_is_an_unsubscribe_not_a_bounce(
    tmp_path, sandboxes
):
    """The patient unsubscribed through Postmark's link after the last suppression sync: the
    recall gets 406. It is recorded as the unsubscribe the broadcast dump says it is (marketing
    only), not a hard bounce, and the patient's reminders still go."""
    postmark, twilio = sandboxes
    postmark.suppress("ok@example.com", "broadcast")  # ManualSuppression, origin Recipient
    with open_db(tmp_path / "c.duckdb") as con:
        recall = plan(con, 1, "email", purpose="marketing")
        run(con, postmark, twilio)
        row = ledger.get(con, recall)
        assert (row.status, row.error_code) == ("failed", "406")
        assert row.status_reason == "postmark: inactive recipient (unsubscribed)"
        assert suppressions(con) == [
            ("email", "ok@example.com", "marketing", "unsubscribed", "postmark")
        ]
        assert con.execute("SELECT count(*) FROM state.email_bounces").fetchone() == (0,)

        reminder = plan(con, 1, "email")
        another_recall = plan(con, 1, "email", purpose="marketing", source="recall-2")
        sent_before = len(postmark.accepted)
        run(con, postmark, twilio, at=START + timedelta(minutes=1))
        assert ledger.get(con, reminder).status == "sent"
        assert ledger.get(con, another_recall).status_reason == "address suppressed (marketing)"
    assert len(postmark.accepted) == sent_before + 1
    assert postmark.accepted[-1]["MessageStream"] == "outbound"


def test_marketing_goes_on_the_broadcast_stream_and_transactional_on_outbound(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    postmark.set_unsubscribe_handling("broadcast", "Custom")  # our link and headers
    with open_db(tmp_path / "c.duckdb") as con:
        plan(con, 1, "email", purpose="marketing")
        plan(con, 1, "email")
        run(con, postmark, twilio)
    streams = {m["Tag"]: m["MessageStream"] for m in postmark.accepted}
    assert streams == {"email-marketing": "broadcast", "email-transactional": "outbound"}
    marketing = next(m for m in postmark.accepted if m["Tag"] == "email-marketing")
    headers = {h["Name"] for h in marketing["Headers"]}
    assert headers == {"List-Unsubscribe", "List-Unsubscribe-Post"}


def test_marketing_never_goes_on_a_transactional_stream_a_block_names_for_it(tmp_path, sandboxes):
    """A PostmarkServer block saved by hand (the Prefect UI) with marketing_stream 'outbound':
    marketing waits, with what to fix, and reminders still go on their own stream."""
    postmark, twilio = sandboxes
    postmark.streams["promos"] = ("Transactional", "None")
    with open_db(tmp_path / "c.duckdb") as con:
        recall, welcome = plan(con, 1, "email", purpose="marketing"), plan(con, 1, "email")
        result = dispatch(
            con, prepare=prepare, templates=Templates(), clock=lambda: START,
            providers={"email": PostmarkProvider(PostmarkSettings(
                postmark.server_token, "Demo <hello@demo.example>", base_url=postmark.url,
                marketing_stream="promos"))},
            unsubscribe=Unsubscribe("demo", "https://relay.example/u", b"k"),
        )  # fmt: skip
        assert ledger.get(con, recall).status == "planned"
        assert ledger.get(con, welcome).status == "sent"
    assert [m["MessageStream"] for m in postmark.accepted] == ["outbound"]
    assert any("'promos' is a Transactional stream" in s for s in result.stopped)


def test_a_busy_provider_is_tried_again_on_a_later_run_and_sends_once(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    postmark.faults.add("429")
    twilio.faults.add("5xx")
    with open_db(tmp_path / "c.duckdb") as con:
        email, sms = plan(con, 1, "email"), plan(con, 1, "sms")
        first = run(con, postmark, twilio)
        assert first.counts["retry"] == 2
        assert first.problems and first.stopped == []  # busy: the next run gets past it, no alert
        for key in (email, sms):
            row = ledger.get(con, key)
            assert (row.status, row.attempts) == ("planned", 1)
            assert row.next_attempt_at == START + timedelta(minutes=1)
        run(con, postmark, twilio, at=START + timedelta(seconds=30))  # too early: waits
        assert ledger.get(con, email).status == "planned"
        run(con, postmark, twilio, at=START + timedelta(minutes=1))
        assert ledger.get(con, email).status == ledger.get(con, sms).status == "sent"
        assert ledger.get(con, sms).attempts == 2
    assert postmark.send_key_counts() == {email: 1}
    assert len(twilio.accepted) == 1


def test_a_timeout_after_sending_is_unknown_and_a_rerun_does_not_resend(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    twilio.faults.add("timeout_after_receipt", delay=1.5)
    postmark.faults.add("timeout_after_receipt", delay=1.5)
    with open_db(tmp_path / "c.duckdb") as con:
        email, sms = plan(con, 1, "email"), plan(con, 1, "sms")
        run(con, postmark, twilio, timeout=0.5)
        assert ledger.get(con, email).status == ledger.get(con, sms).status == "unknown"
        # the next run asks the providers: both confirm they have it
        later = START + timedelta(minutes=10)
        result = run(con, postmark, twilio, at=later)
        assert result.counts["reconciled_sent"] == 2
        assert ledger.get(con, email).provider_message_id == postmark.accepted[0]["MessageID"]
        assert ledger.get(con, sms).provider_message_id == twilio.accepted[0]["sid"]
    assert len(postmark.accepted) == len(twilio.accepted) == 1


def test_a_twilio_500_after_it_took_the_sms_is_unknown_and_a_rerun_confirms_not_resends(
    tmp_path, sandboxes
):
    postmark, twilio = sandboxes
    twilio.faults.add("500_after_receipt")  # Twilio's 20500: created, yet answered 500
    with open_db(tmp_path / "c.duckdb") as con:
        sms = plan(con, 1, "sms")
        first = run(con, postmark, twilio)
        assert ledger.get(con, sms).status == "unknown" and first.counts["retry"] == 0
        result = run(con, postmark, twilio, at=START + timedelta(minutes=10))
        assert result.counts["reconciled_sent"] == 1
        assert ledger.get(con, sms).provider_message_id == twilio.accepted[0]["sid"]
    assert len(twilio.accepted) == 1


@pytest.mark.parametrize("kept", [True, False])
def test_a_postmark_500_is_settled_by_send_key_so_the_email_goes_once(tmp_path, sandboxes, kept):
    """Postmark answers 500 whether it kept the batch or lost it ("in most cases the message is
    lost"): the email stays in doubt, the next run finds it by send key (sent) or, once settled
    and still absent, sends it again; never blindly at once."""
    postmark, twilio = sandboxes
    postmark.faults.add("500_after_receipt" if kept else "500", path_prefix="/email/batch")
    with open_db(tmp_path / "c.duckdb") as con:
        email = plan(con, 1, "email")
        first = run(con, postmark, twilio)
        row = ledger.get(con, email)
        assert (row.status, row.error_code) == ("sending", "500") and first.counts["retry"] == 0
        assert first.counts["doubt"] == 1 and first.problems
        # a minute later: found by its send key, or too early to believe Postmark lost it
        soon = run(con, postmark, twilio, at=START + timedelta(minutes=1))
        assert ledger.get(con, email).status == ("sent" if kept else "sending")
        assert soon.counts["reconciled_sent"] == kept and soon.counts["sent"] == 0
        later = run(con, postmark, twilio, at=START + timedelta(minutes=10))
        assert ledger.get(con, email).status == "sent"
        assert later.counts["reconciled_retry"] == later.counts["sent"] == (not kept)
    assert postmark.send_key_counts() == {email: 1}


def test_the_clinic_config_can_point_both_channels_at_the_sandboxes(
    tmp_path, sandboxes, monkeypatch, data_dir
):
    postmark, twilio = sandboxes
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", postmark.server_token)
    monkeypatch.setenv("POSTMARK_FROM", "Demo <hello@demo.example>")
    monkeypatch.setenv("POSTMARK_BASE_URL", postmark.url)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("TWILIO_FROM", "+61400000000")
    monkeypatch.setenv("TWILIO_BASE_URL", twilio.url)
    cfg = ClinicConfig(clinic="t", name="Test Clinic", providers={"email": "env", "sms": "env"})
    chosen = providers_for(cfg)
    assert {c: p.name for c, p in chosen.items()} == {"email": "postmark", "sms": "twilio"}
    assert clinic_details(cfg)["name"] == "Test Clinic"
    with open_db(tmp_path / "c.duckdb") as con:
        key = plan(con, 1, "sms")
        dispatch(con, providers=chosen, prepare=prepare, templates=Templates(), clock=lambda: START)
        assert ledger.get(con, key).status == "sent"
    assert len(twilio.accepted) == 1


def test_an_unknown_block_name_is_a_config_error_naming_the_setting(data_dir):
    from tasks.config import ConfigError

    cfg = ClinicConfig(clinic="t", name="T", providers={"email": "outbox", "sms": "env"})
    with pytest.raises(ConfigError, match="providers.sms"):
        providers_for(cfg)


def test_two_dispatch_runs_in_one_process_at_once_send_each_message_once(tmp_path, sandboxes):
    import threading

    postmark, twilio = sandboxes
    postmark.faults.add("slow_reply", times=10**6, delay=0.02)
    with open_db(tmp_path / "c.duckdb") as con:
        ledger.insert_planned(
            con, [planned(p, "email", source="many") for p in range(1, 300)], START
        )

        def prepare_many(row):
            return Ready(to=f"p{row.patient_id}@example.com", context=context_for(row))

        errors: list[BaseException] = []

        def one_run():
            cursor = con.cursor()
            provider = providers(postmark, twilio)["email"]
            provider.batch_size = 20
            try:
                dispatch(cursor, providers={"email": provider}, prepare=prepare_many,
                         templates=Templates(), clock=lambda: START)  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        runs = [threading.Thread(target=one_run) for _ in range(2)]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        assert errors == []
        dispatch(con, providers={"email": providers(postmark, twilio)["email"]},
                 prepare=prepare_many, templates=Templates(), clock=lambda: START)  # fmt: skip
        assert ledger.status_counts(con) == {"sent": 299}
    assert max(postmark.send_key_counts().values()) == 1
    assert len(postmark.accepted) == 299


def test_rejected_credentials_put_the_batch_back_and_say_what_to_fix(tmp_path, sandboxes):
    postmark, twilio = sandboxes
    with open_db(tmp_path / "c.duckdb") as con:
        key = plan(con, 1, "email")
        postmark.server_token = "rotated"  # the block still holds the old token
        stale = PostmarkProvider(
            PostmarkSettings("old-token", "Demo <hello@demo.example>", base_url=postmark.url)
        )
        result = dispatch(con, providers={"email": stale}, prepare=prepare,
                          templates=Templates(), clock=lambda: START)  # fmt: skip
        row = ledger.get(con, key)
    assert (row.status, row.status_reason) == ("planned", "provider unavailable")
    assert any("PostmarkServer block" in p for p in result.problems)


def test_a_from_postmark_has_no_signature_for_fails_no_email_and_goes_once_verified(
    tmp_path, sandboxes
):
    """Day one with the sending domain not yet verified: Postmark's batch answers 200 with
    ErrorCode 400 on every item. No reminder is failed for it: the run stops, says what to fix,
    and once the domain is verified the next run sends each once."""
    postmark, twilio = sandboxes
    postmark.sender_signatures = {"@acme-physio.com.au"}  # not demo.example: not verified yet
    with open_db(tmp_path / "c.duckdb") as con:
        keys = [plan(con, p, "email") for p in (1, 4)]
        result = run(con, postmark, twilio)
        assert ledger.status_counts(con) == {"planned": 2}  # nothing failed, sent or in doubt
        assert any("(400)" in p and "PostmarkServer block" in p for p in result.stopped)
        assert postmark.accepted == [] and suppressions(con) == []

        postmark.sender_signatures.add("@demo.example")  # DKIM and Return-Path now verified
        run(con, postmark, twilio, at=START + timedelta(minutes=5))
        assert [ledger.get(con, k).status for k in keys] == ["sent", "sent"]
    assert sorted(postmark.send_key_counts().values()) == [1, 1]


def test_a_batch_postmark_takes_in_part_refusing_our_stream_still_says_sending_stopped(
    tmp_path, sandboxes
):
    """Marketing accepted on its stream, reminders refused for a transactional stream the
    server lacks (ErrorCode 1235): the refused were tried again later, but the run raised no
    "sending stopped" (only a batch refused whole did), so reminders waited unannounced."""
    postmark, twilio = sandboxes
    pm = providers(postmark, twilio)
    pm["email"] = PostmarkProvider(PostmarkSettings(
        postmark.server_token, "Demo <hello@demo.example>", transactional_stream="reminders",
        base_url=postmark.url, timeout=5))  # fmt: skip
    with open_db(tmp_path / "c.duckdb") as con:
        reminder = plan(con, 1, "email")
        newsletter = plan(con, 4, "email", purpose="marketing")
        result = dispatch(
            con, providers=pm, prepare=prepare, templates=Templates(),
            unsubscribe=Unsubscribe("demo", "https://relay.example/u", b"k"), clock=lambda: START,
        )  # fmt: skip
        assert ledger.get(con, newsletter).status == "sent"
        assert ledger.get(con, reminder).status == "planned"  # tried again later, not failed
        assert result.stopped and all("(1235)" in s and "PostmarkServer block" in s
                                      for s in result.stopped)  # fmt: skip
        assert len(result.stopped) == 1


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        ("released", "21606"),  # the block's number was released, ported away or mistyped
        ("trial", "21608"),  # a Trial account: verified numbers only
    ],
)
def test_a_sender_twilio_refuses_stops_the_run_and_leaves_every_sms_planned(
    tmp_path, sandboxes, refusal, code
):
    postmark, twilio = sandboxes
    with open_db(tmp_path / "c.duckdb") as con:
        keys = [plan(con, 1, "sms", source=s) for s in ("reminder-24h", "reminder-2h")]
        if refusal == "released":
            del twilio.numbers["+61400000000"]
        else:
            twilio.account_type = "Trial"
        result = run(con, postmark, twilio)
        rows = [ledger.get(con, k) for k in keys]
        # the first was claimed, refused and put back; the second was never tried
        assert [(r.status, r.status_reason, r.error_code) for r in rows] == [
            ("planned", "provider unavailable", None), ("planned", None, None),
        ]  # fmt: skip
        assert ledger.status_counts(con) == {"planned": 2}  # nothing failed, sent or in doubt
        assert result.counts["failed"] == result.counts["sent"] == 0
        (problem, stopped) = [p for p in result.problems if p.startswith("sms:")]
        assert f"({code})" in problem and "TwilioAccount block" in problem
        assert "took nothing" in stopped
        assert result.stopped == [problem]  # what the "sending stopped" alert says
        assert not any(ADDRESS[p][1] in " ".join(result.problems) for p in ADDRESS)
        assert twilio.accepted == [] and len(twilio.requests) == 1  # the run stopped at once
        assert suppressions(con) == []

        # fixed in the Console: the next run after the back-off sends each SMS once
        twilio.numbers["+61400000000"], twilio.account_type = True, "Full"
        run(con, postmark, twilio, at=START + timedelta(minutes=5))
        sent = [ledger.get(con, k) for k in keys]
        assert [r.status for r in sent] == ["sent", "sent"]
    assert sorted(r.provider_message_id for r in sent) == sorted(m["sid"] for m in twilio.accepted)


class Killed(BaseException):
    """The process dies where it stands (a kill -9): nothing of the run records anything more."""


def test_a_run_killed_mid_batch_leaves_the_sms_it_never_tried_planned_and_a_rerun_sends_each_once(
    tmp_path, sandboxes
):
    postmark, twilio = sandboxes

    def prepare_phones(row):
        return Ready(to=f"+614120000{row.patient_id:02d}", context=context_for(row))

    def rerun(con, at, sms):
        twilio.clock = lambda: at
        return dispatch(con, providers={"sms": sms}, prepare=prepare_phones,
                        templates=Templates(), clock=lambda: at)  # fmt: skip

    with open_db(tmp_path / "c.duckdb") as con:
        ledger.insert_planned(
            con, [planned(p, "sms", source="reminder") for p in range(1, 7)], START
        )
        sms = providers(postmark, twilio)["sms"]
        http, posted = sms.client.http_client, []
        real_request = http.request

        def dies_after_the_third_sms(method, url, *args, **kwargs):
            response = real_request(method, url, *args, **kwargs)  # the SMS went, Twilio took it
            posted.append(kwargs["data"]["To"])
            if len(posted) == 3:
                raise Killed  # ... and the run dies before recording the answer
            return response

        http.request = dies_after_the_third_sms
        with pytest.raises(Killed):
            rerun(con, START, sms)
        # in doubt: only the one whose answer was never recorded; those never tried stay planned
        assert ledger.status_counts(con) == {"sent": 2, "sending": 1, "planned": 3}

        result = rerun(con, START + timedelta(minutes=10), providers(postmark, twilio)["sms"])
        assert result.counts["reconciled_sent"] == 1 and result.counts["sent"] == 3
        assert ledger.status_counts(con) == {"sent": 6}
    assert sorted(twilio.body_counts().values()) == [1] * 6


def test_a_run_killed_between_claiming_an_sms_and_sending_it_leaves_nothing_in_doubt(
    tmp_path, sandboxes
):
    postmark, twilio = sandboxes
    with open_db(tmp_path / "c.duckdb") as con:
        key = plan(con, 1, "sms")
        sms = providers(postmark, twilio)["sms"]

        def dies_before_the_request_leaves(*args, **kwargs):
            raise Killed

        sms.client.http_client.request = dies_before_the_request_leaves
        with pytest.raises(Killed):
            run_with(con, sms, START)
        assert ledger.get(con, key).status == "sending"  # the claim was committed
        # too soon to believe "Twilio does not have it": the row waits
        run_with(con, providers(postmark, twilio)["sms"], START + timedelta(minutes=1))
        assert ledger.get(con, key).status == "sending"
        result = run_with(con, providers(postmark, twilio)["sms"], START + timedelta(minutes=10))
        row = ledger.get(con, key)
        assert result.counts["reconciled_retry"] == 1
        assert (row.status, row.attempts) == ("sent", 2)
    assert len(twilio.accepted) == 1


def test_sms_the_old_batch_claim_left_unknown_are_listed_without_numbers_and_resent_by_a_person(
    sandboxes, data_dir
):
    """A database from before one claim per request: a dead run's never-tried SMS are unknown."""
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.config import load_clinic

    postmark, twilio = sandboxes
    relay = CliRunner()
    with open_db(load_clinic("demo").database_path) as con:
        went = plan(con, 1, "sms")
        run_with(con, providers(postmark, twilio)["sms"], START)  # went: sent
        never = plan(con, 1, "sms", purpose="marketing")
        ids = [ledger.get(con, never).message_id]
        ledger.transition(con, ids, "planned", "sending", START, count_attempt=True,
                          values={"provider": ["twilio"]})  # fmt: skip
        ledger.transition(con, ids, "sending", "unknown", START, values={
            "status_reason": ["reconcile: no matching message at Twilio; review"]})  # fmt: skip

    listed = relay.invoke(app, ["ledger", "unknown", "--clinic", "demo"])
    assert listed.exit_code == 0, listed.output
    assert never in listed.output and went not in listed.output
    assert "no matching message at Twilio" in listed.output and "twilio" in listed.output
    assert ADDRESS[1][1] not in listed.output and "Pat1" not in listed.output
    assert "1 unknown messages in demo" in listed.output

    undecided = relay.invoke(app, ["ledger", "resolve", never, "--clinic", "demo"])
    assert undecided.exit_code != 0 and "--sent" in str(undecided.exception)
    not_unknown = relay.invoke(app, ["ledger", "resolve", went, "--sent", "--clinic", "demo"])
    assert "demo: message" in str(not_unknown.exception)
    assert "is sent, not unknown" in str(not_unknown.exception)
    resolved = relay.invoke(app, ["ledger", "resolve", never, "--resend", "--clinic", "demo",
                                  "--by", "alice", "--note", "not in the Twilio console"])  # fmt: skip
    assert resolved.exit_code == 0, resolved.output

    with open_db(load_clinic("demo").database_path) as con:
        # the CLI resolves on the real clock, so the resend is due from then (not from START,
        # taken when this module was imported, possibly minutes earlier in a full run)
        run_with(con, providers(postmark, twilio)["sms"], datetime.now(UTC) + timedelta(minutes=1))
        row = ledger.get(con, never)
        by, resolution = con.execute(
            "SELECT resolved_by, resolution FROM state.messages WHERE send_key = ?", [never]
        ).fetchone()
    assert row.status == "sent" and row.provider_message_id == twilio.accepted[-1]["sid"], row
    assert by == "alice" and resolution.startswith(
        "resend, decided by a person (alice: not in the Twilio console); was unknown: reconcile"
    )
    assert sorted(twilio.body_counts().values()) == [1, 1]


def run_with(con, sms, at):
    return dispatch(con, providers={"sms": sms}, prepare=prepare, templates=Templates(),
                    clock=lambda: at)  # fmt: skip


def test_a_run_killed_before_its_second_sms_to_a_shared_number_leaves_nothing_in_doubt(
    tmp_path, sandboxes
):
    """Two children on a parent's mobile: the first reminder went, the run died before the second
    one's request left. The SMS Twilio holds for that number from that minute is the first
    reminder's, already in the ledger as its own: the second is resent, not left for a person."""
    postmark, twilio = sandboxes
    shared = "+61412000077"

    def prepare_shared(row):
        return Ready(to=shared, context=context_for(row))

    def rerun(con, at, sms):
        twilio.clock = lambda: at
        return dispatch(con, providers={"sms": sms}, prepare=prepare_shared,
                        templates=Templates(), clock=lambda: at)  # fmt: skip

    with open_db(tmp_path / "c.duckdb") as con:
        first, second = plan(con, 1, "sms"), plan(con, 2, "sms")
        sms = providers(postmark, twilio)["sms"]
        real_request, requests = sms.client.http_client.request, []

        def dies_before_the_second_request_leaves(*args, **kwargs):
            requests.append(1)
            if len(requests) == 2:
                raise Killed
            return real_request(*args, **kwargs)

        sms.client.http_client.request = dies_before_the_second_request_leaves
        with pytest.raises(Killed):
            rerun(con, START, sms)
        assert [ledger.get(con, k).status for k in (first, second)] == ["sent", "sending"]
        result = rerun(con, START + timedelta(minutes=10), providers(postmark, twilio)["sms"])
        assert result.counts["reconciled_retry"] == 1, result.counts
        assert [ledger.get(con, k).status for k in (first, second)] == ["sent", "sent"]
        assert ledger.in_status(con, "unknown") == []
    assert sorted(twilio.body_counts().values()) == [1, 1]
