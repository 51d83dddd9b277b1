"""Postmark and Twilio providers against the sandboxes, over real HTTP, through the real clients.

Each provider answer maps to one ledger outcome: sent, failed (with or without a suppression),
retry later (the provider certainly did not take it) or unknown (it may have).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandbox.postmark import PostmarkSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks.messages.ledger import LedgerRow
from tasks.messages.templates import RenderedEmail, RenderedSms, sms_size, unsubscribe_headers
from tasks.providers.common import OutgoingMessage, ProviderUnavailable, Suppress, content_hash
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.twilio import AMBIGUOUS, TwilioProvider, TwilioSettings

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


@pytest.fixture
def twilio():
    sandbox = TwilioSandbox()
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


def pm_provider(sandbox, **kw) -> PostmarkProvider:
    settings = dict(server_token=sandbox.server_token, from_address="Demo <hello@demo.example>",
                    base_url=sandbox.url, timeout=0.5)  # fmt: skip
    return PostmarkProvider(PostmarkSettings(**{**settings, **kw}))


def tw_provider(sandbox, **kw) -> TwilioProvider:
    settings = dict(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number="+61400000000",
                    base_url=sandbox.url, timeout=0.5)  # fmt: skip
    return TwilioProvider(TwilioSettings(**{**settings, **kw}))


def email(i: int, to: str, *, marketing: bool = False) -> OutgoingMessage:
    headers = unsubscribe_headers(f"https://relay.example/u/{i}") if marketing else {}
    return OutgoingMessage(
        message_id=i, send_key=f"trigger:t:{i}:x", channel="email",
        purpose="marketing" if marketing else "transactional", tag="t", to=to,
        content=RenderedEmail(subject=f"S{i}", html=f"<p>{i}</p>", text=str(i), headers=headers),
    )  # fmt: skip


def sms(i: int, to: str) -> OutgoingMessage:
    text = f"Reminder number {i}"
    return OutgoingMessage(
        message_id=i, send_key=f"trigger:r:{i}:x", channel="sms", purpose="transactional",
        tag="r", to=to, content=RenderedSms(text=text, size=sms_size(text)),
    )  # fmt: skip


def as_row(msg: OutgoingMessage, status: str, provider: str, sending_at: datetime) -> LedgerRow:
    return LedgerRow(
        message_id=msg.message_id, send_key=msg.send_key, source_kind="trigger",
        source_name=msg.tag, patient_id=msg.message_id, appointment_id=None,
        channel=msg.channel, purpose=msg.purpose, template="t", due_at=sending_at,
        expires_at=None, status=status, status_reason=None, attempts=1, next_attempt_at=None,
        claim_id="dead", provider=provider, provider_message_id=None, error_code=None,
        to_address=msg.to, content_hash=content_hash(msg.content), sending_at=sending_at,
        sent_at=None,
    )  # fmt: skip


# -- Postmark ---------------------------------------------------------------------------------


def test_postmark_accepts_a_batch_with_the_send_key_in_metadata_and_the_right_stream(postmark):
    provider = pm_provider(postmark)
    outcomes = provider.send([email(1, "a@example.com"), email(2, "b@example.com", marketing=True)])
    assert [o.kind for o in outcomes] == ["sent", "sent"]
    first, second = postmark.accepted
    assert first["MessageID"] == outcomes[0].provider_message_id
    assert first["Metadata"] == {"send_key": "trigger:t:1:x"}
    assert (first["MessageStream"], second["MessageStream"]) == ("outbound", "broadcast")
    assert first["TrackLinks"] == "None" and first["Headers"] == []
    headers = {h["Name"]: h["Value"] for h in second["Headers"]}
    assert headers == {
        "List-Unsubscribe": "<https://relay.example/u/2>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert postmark.requests == [("POST", "/email/batch")]


def test_postmark_batches_hold_at_most_500_messages(postmark):
    outcomes = pm_provider(postmark, timeout=10).send(
        [email(i, f"p{i}@example.com") for i in range(1001)]
    )
    assert [o.kind for o in outcomes] == ["sent"] * 1001
    assert postmark.requests == [("POST", "/email/batch")] * 3


def test_a_406_from_postmark_fails_the_message_and_suppresses_the_address(postmark):
    # the sandbox's inactive@ hard-bounced on every stream: each stream's dump says HardBounce
    outcomes = pm_provider(postmark).send(
        [
            email(1, "inactive@sandbox.example.com"),
            email(2, "inactive@sandbox.example.com", marketing=True),
            email(3, "fine@example.com"),
        ]
    )
    transactional, marketing, fine = outcomes
    assert (transactional.kind, transactional.error_code) == ("failed", "406")
    assert transactional.suppress == marketing.suppress == Suppress("all", "hard_bounce")
    assert transactional.reason == "postmark: inactive recipient (hard_bounce)"
    assert fine.kind == "sent"


# What a 406 is depends on the suppression Postmark holds on the message's stream, which the 406
# itself does not name: the stream's dump does (SuppressionReason, Origin).
@pytest.mark.parametrize(
    ("stream", "reason", "origin", "expected"),
    [
        # the patient unsubscribed through Postmark's link: marketing stops, reminders do not
        ("broadcast", "ManualSuppression", "Recipient", Suppress("marketing", "unsubscribed")),
        ("broadcast", "SpamComplaint", "Recipient", Suppress("marketing", "spam_complaint")),
        ("broadcast", "ManualSuppression", "Customer", Suppress("marketing", "manual")),
        # an address that hard-bounced is dead for every kind of mail (as the suppression sync)
        ("broadcast", "HardBounce", "Recipient", Suppress("all", "hard_bounce")),
        ("outbound", "ManualSuppression", "Customer", Suppress("all", "manual")),
    ],
)
def test_a_406_is_classified_by_the_streams_own_suppression(
    postmark, stream, reason, origin, expected
):
    postmark.suppress("pat@example.com", stream, reason=reason, origin=origin)
    marketing = stream == "broadcast"
    before = len(postmark.accepted)
    refused, other = pm_provider(postmark).send(
        [email(1, "pat@example.com", marketing=marketing),
         email(2, "pat@example.com", marketing=not marketing)]
    )  # fmt: skip
    assert (refused.kind, refused.error_code, refused.suppress) == ("failed", "406", expected)
    assert refused.reason == f"postmark: inactive recipient ({expected.reason})"
    assert "pat@" not in refused.reason
    # Postmark keeps suppressions per stream: the same address on the other stream went
    assert other.kind == "sent" and len(postmark.accepted) == before + 1


def test_a_406_whose_reason_the_dump_cannot_give_is_still_never_sent_again_on_its_stream(postmark):
    postmark.suppress("pat@example.com", "broadcast")
    postmark.faults.add("5xx", path_prefix="/message-streams/broadcast/suppressions")
    (marketing,) = pm_provider(postmark).send([email(1, "pat@example.com", marketing=True)])
    assert (marketing.kind, marketing.error_code) == ("failed", "406")
    # not a bounce (nothing says it was one), but marketing to it stops
    assert marketing.suppress == Suppress("marketing", "inactive_recipient")


def test_a_300_invalid_recipient_fails_the_message_and_marks_the_address_invalid(postmark):
    (outcome,) = pm_provider(postmark).send([email(1, "invalid@sandbox.example.com")])
    assert (outcome.kind, outcome.error_code) == ("failed", "300")
    assert outcome.suppress == Suppress("all", "invalid_address")
    assert "invalid@" not in (outcome.reason or "")


@pytest.mark.parametrize("fault", ["5xx", "429"])
def test_a_busy_postmark_is_retried_later_and_nothing_went(postmark, fault):
    postmark.faults.add(fault)
    outcomes = pm_provider(postmark).send([email(1, "a@example.com"), email(2, "b@example.com")])
    assert [o.kind for o in outcomes] == ["retry", "retry"]
    assert postmark.accepted == []


def test_a_failed_batch_leaves_later_batches_unsent(postmark):
    postmark.faults.add("5xx", path_prefix="/email/batch")
    provider = pm_provider(postmark, timeout=10)
    outcomes = provider.send([email(i, f"p{i}@example.com") for i in range(600)])
    assert {o.kind for o in outcomes} == {"retry"}
    assert postmark.requests == [("POST", "/email/batch")]


def test_a_postmark_timeout_after_the_request_arrived_is_unknown_never_retried(postmark):
    postmark.faults.add("timeout_after_receipt", delay=1.5)
    (outcome,) = pm_provider(postmark).send([email(1, "a@example.com")])
    assert outcome.kind == "unknown"
    assert postmark.send_key_counts() == {"trigger:t:1:x": 1}


def test_a_postmark_500_after_it_took_the_batch_is_in_doubt_not_retried_blind(postmark):
    """Postmark's 500: "in most cases the message is lost", so not always: a retry could send it
    twice. The send key is searchable, so the row waits for reconciliation (found = sent)."""
    postmark.faults.add("500_after_receipt", path_prefix="/email/batch")
    outcomes = pm_provider(postmark).send([email(1, "a@example.com"), email(2, "b@example.com")])
    assert [o.kind for o in outcomes] == ["doubt", "doubt"]
    assert outcomes[0].error_code == "500" and "a@example.com" not in (outcomes[0].reason or "")
    assert postmark.send_key_counts() == {"trigger:t:1:x": 1, "trigger:t:2:x": 1}


def test_no_postmark_server_listening_is_a_retry():
    provider = PostmarkProvider(
        PostmarkSettings(
            server_token="t", from_address="x@example.com", base_url="http://127.0.0.1:9"
        )
    )
    (outcome,) = provider.send([email(1, "a@example.com")])
    assert outcome.kind == "retry"


def test_a_rejected_postmark_token_stops_the_run_with_what_to_fix(postmark):
    with pytest.raises(ProviderUnavailable, match="PostmarkServer block"):
        pm_provider(postmark, server_token="wrong").send([email(1, "a@example.com")])


@pytest.mark.parametrize(
    "settings, code",
    [
        ({"from_address": "Acme <hello@acme-physio.com.au>"}, "400"),  # domain not verified
        ({"from_address": "hello"}, "300"),  # not an address: Postmark's "Invalid 'From'"
        ({"transactional_stream": "reminders"}, "1235"),  # no such stream on the server
    ],
)
def test_a_batch_postmark_refuses_for_our_settings_item_by_item_fails_nothing(
    postmark, settings, code
):
    """The batch endpoint answers 200 and refuses each item for a From that is no confirmed
    sender signature (or a stream the server lacks): every message would get the same answer,
    so the run stops with what to fix and nothing is failed, as for a whole-request refusal."""
    postmark.sender_signatures = {"@demo.example"}
    with pytest.raises(ProviderUnavailable, match=rf"\({code}\).*PostmarkServer block") as stopped:
        pm_provider(postmark, **settings).send(
            [email(1, "a@example.com"), email(2, "b@example.com")]
        )
    assert "a@example.com" not in str(stopped.value)  # no recipient in the words
    assert postmark.accepted == []


@pytest.mark.parametrize(
    "code, message",
    [(405, "Not allowed to send: you have run out of credits."), (413, "Account may not send.")],
)
def test_a_postmark_account_that_may_not_send_stops_the_run_and_fails_nothing(
    postmark, code, message
):
    # out of credits (405) or not allowed to send (413): every email of the run gets the same
    # answer; it failed each for good (a clinic's reminders lost until someone noticed)
    postmark.account_refusal = (code, message)
    for batch in ([email(1, "a@example.com")], [email(1, "a@example.com"), email(2, "b@ex.com")]):
        with pytest.raises(ProviderUnavailable, match=rf"\({code}\).*PostmarkServer block"):
            pm_provider(postmark).send(batch)
    assert postmark.accepted == []


def test_a_settings_refusal_of_some_items_keeps_what_went_and_retries_the_rest(postmark):
    """Reminders accepted on their stream, marketing refused for a missing stream: the accepted
    are sent, the refused go back to be tried again (never failed, never sent twice)."""
    provider = pm_provider(postmark, marketing_stream="newsletters")
    outcomes = provider.send([email(1, "a@example.com"), email(2, "b@example.com", marketing=True)])
    assert [o.kind for o in outcomes] == ["sent", "retry"]
    assert "1235" in (outcomes[1].reason or "") and "PostmarkServer block" in outcomes[1].reason
    assert outcomes[0].stop is None and "PostmarkServer block" in (outcomes[1].stop or "")


def test_postmark_reconciliation_finds_what_went_and_resends_only_what_never_arrived(postmark):
    provider = pm_provider(postmark)
    went, lost = email(1, "a@example.com"), email(2, "b@example.com")
    provider.send([went])
    long_ago = NOW - timedelta(minutes=10)
    outcomes = provider.reconcile(
        [as_row(went, "sending", "postmark", long_ago), as_row(lost, "sending", "postmark", long_ago),
         as_row(lost, "sending", "postmark", NOW), as_row(lost, "unknown", "postmark", long_ago)],
        NOW, timedelta(minutes=5),
    )  # fmt: skip
    assert [o.kind for o in outcomes] == ["sent", "retry", "pending", "pending"]
    assert outcomes[0].provider_message_id == postmark.accepted[0]["MessageID"]


def test_postmark_lists_bounces_and_suppressions_through_postmarker(postmark):
    client = pm_provider(postmark).client
    (bounce,) = client.bounces.all(inactive="true")
    assert (bounce.Email, bounce.Inactive) == ("inactive@sandbox.example.com", True)
    dump = client.call("GET", "/message-streams/outbound/suppressions/dump")
    assert dump["Suppressions"][0]["EmailAddress"] == "inactive@sandbox.example.com"


# -- Twilio -----------------------------------------------------------------------------------


def test_twilio_sends_from_the_number_and_returns_the_sid(twilio):
    (outcome,) = tw_provider(twilio).send([sms(1, "+61412345678")])
    (received,) = twilio.accepted
    assert outcome.kind == "sent" and outcome.provider_message_id == received["sid"]
    assert (received["to"], received["from"], received["body"]) == (
        "+61412345678", "+61400000000", "Reminder number 1",
    )  # fmt: skip


def test_twilio_can_send_through_a_messaging_service(twilio):
    service = "MG" + "1" * 32
    twilio.services[service] = "Demo reminders"  # the account's service, as Twilio requires
    tw_provider(twilio, from_number=None, messaging_service_sid=service).send(
        [sms(1, "+61412345678")]
    )
    assert twilio.accepted[0]["messaging_service_sid"] == service


@pytest.mark.parametrize(
    ("number", "code", "suppress"),
    [
        ("+15005550004", "21610", Suppress("all", "stop")),
        ("+15005550001", "21211", Suppress("all", "invalid_address")),
        ("+15005550009", "21614", Suppress("all", "invalid_address")),
    ],
)
def test_twilio_refusals_fail_the_message_and_suppress_the_number(twilio, number, code, suppress):
    (outcome,) = tw_provider(twilio).send([sms(1, number)])
    assert (outcome.kind, outcome.error_code, outcome.suppress) == ("failed", code, suppress)
    assert twilio.accepted == []


@pytest.mark.parametrize(("fault", "code"), [("429", "20429"), ("5xx", "503")])
def test_a_busy_twilio_is_retried_later_and_the_rest_of_the_batch_waits(twilio, fault, code):
    twilio.faults.add(fault)
    outcomes = tw_provider(twilio).send([sms(1, "+61412345678"), sms(2, "+61412345679")])
    assert [o.kind for o in outcomes] == ["retry", "retry"]
    assert outcomes[0].error_code == code
    assert twilio.accepted == [] and len(twilio.requests) == 1


def test_a_twilio_timeout_after_sending_is_unknown_and_not_resent(twilio):
    twilio.faults.add("timeout_after_receipt", delay=1.5)
    outcomes = tw_provider(twilio).send([sms(1, "+61412345678"), sms(2, "+61412345679")])
    assert [o.kind for o in outcomes] == ["unknown", "retry"]
    assert len(twilio.accepted) == 1


def test_a_twilio_500_is_unknown_and_not_retried_and_the_rest_of_the_batch_waits(twilio):
    """Twilio, error 20500: a 500 to an SMS POST may come after the SMS was created ("a timeout
    in the API"), and retrying it "may" send it twice. So it is unknown, never a retry, and the
    rest of the batch waits (tests/integration/test_dispatch.py: a later run finds it)."""
    twilio.faults.add("500_after_receipt")
    provider = tw_provider(twilio)
    outcomes = provider.send([sms(1, "+61412345678"), sms(2, "+61412345679")])
    assert [(o.kind, o.error_code) for o in outcomes] == [("unknown", "20500"), ("retry", None)]
    assert "may have gone" in outcomes[0].reason
    assert len(twilio.accepted) == 1  # Twilio created it: a retry would have sent it twice


def test_no_twilio_server_listening_is_a_retry():
    provider = TwilioProvider(
        TwilioSettings(
            ACCOUNT_SID, AUTH_TOKEN, from_number="+61400000000", base_url="http://127.0.0.1:9"
        )
    )
    (outcome,) = provider.send([sms(1, "+61412345678")])
    assert outcome.kind == "retry"


def test_wrong_twilio_credentials_stop_the_run_with_what_to_fix(twilio):
    with pytest.raises(ProviderUnavailable, match="TwilioAccount block"):
        tw_provider(twilio, auth_token="wrong").send([sms(1, "+61412345678")])


# -- Twilio refusing our sender or account (the sandbox, as Twilio documents it) --------------

SERVICE = "MG" + "a" * 32


def create_directly(twilio, **sender):
    """messages.create through the real client over HTTP, as the provider makes it."""
    from twilio.rest import Client

    from tasks.providers.twilio import RedirectingHttpClient

    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=RedirectingHttpClient(twilio.url))
    return client.messages.create(to="+61412345678", body="hi", **sender)


@pytest.mark.parametrize(
    ("sender", "code"),
    [
        ({"from_": "+61499999999"}, 21606),  # a number this account does not own (released...)
        ({"from_": "+61300000000"}, 21661),  # owned, voice only
        ({"from_": "0400 000 000"}, 21212),  # neither E.164 nor an alphanumeric ID
        ({"messaging_service_sid": "MG" + "b" * 32}, 21701),  # not a service of this account
        ({"messaging_service_sid": "MGPhysio"}, 21705),  # not even a service SID
    ],
)
def test_the_twilio_sandbox_refuses_a_sender_the_account_cannot_use(twilio, sender, code):
    from twilio.base.exceptions import TwilioRestException

    twilio.numbers["+61300000000"] = False
    twilio.services[SERVICE] = "Acme reminders"
    with pytest.raises(TwilioRestException) as refused:
        create_directly(twilio, **sender)
    assert (refused.value.status, refused.value.code) == (400, code)
    assert twilio.accepted == [] and twilio.rejected == [{"to": "+61412345678", "code": code}]


def test_the_twilio_sandbox_answers_a_refused_sender_with_twilios_error_body(twilio):
    import httpx

    reply = httpx.post(
        f"{twilio.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+61412345678", "From": "+61499999999", "Body": "hi"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
    )
    assert reply.status_code == 400
    assert reply.json() == {
        "code": 21606, "message": reply.json()["message"], "status": 400,
        "more_info": "https://www.twilio.com/docs/errors/21606",
    }  # fmt: skip
    assert twilio.accepted == []


def test_the_twilio_sandbox_sends_from_what_the_account_has(twilio):
    twilio.services[SERVICE] = "Acme reminders"
    assert create_directly(twilio, from_="+61400000000").status == "queued"
    assert create_directly(twilio, messaging_service_sid=SERVICE).status == "queued"
    assert create_directly(twilio, from_="MGPhysio").status == "queued"  # alphanumeric ID
    assert len(twilio.accepted) == 3


def test_a_twilio_trial_account_sends_only_to_verified_numbers(twilio):
    from twilio.base.exceptions import TwilioRestException

    twilio.account_type, twilio.verified = "Trial", {"+61412345678"}
    assert create_directly(twilio, from_="+61400000000").status == "queued"
    twilio.verified = set()
    with pytest.raises(TwilioRestException) as refused:
        create_directly(twilio, from_="+61400000000")
    assert (refused.value.status, refused.value.code) == (400, 21608)
    assert len(twilio.accepted) == 1


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"from_number": "+61499999999"}, "21606"),
        ({"from_number": None, "messaging_service_sid": "MG" + "b" * 32}, "21701"),
    ],
)
def test_a_sender_twilio_refuses_stops_the_run_and_sends_nothing(twilio, settings, code):
    """Every message would be refused the same: none is failed, the run stops with what to fix
    (dispatch then puts the message back planned: tests/integration/test_dispatch.py)."""
    provider = tw_provider(twilio, **settings)
    with pytest.raises(ProviderUnavailable, match="TwilioAccount block") as stopped:
        provider.send([sms(1, "+61412345678"), sms(2, "+61412345679")])
    assert f"({code})" in str(stopped.value)
    assert "+614123456" not in str(stopped.value)  # no patient's number
    assert twilio.accepted == [] and len(twilio.requests) == 1  # the second was never asked


def test_a_trial_account_stops_the_run_rather_than_failing_each_patient(twilio):
    twilio.account_type = "Trial"
    with pytest.raises(ProviderUnavailable, match=r"\(21608\).*Trial") as stopped:
        tw_provider(twilio).send([sms(1, "+61412345678")])
    assert "+61412345678" not in str(stopped.value)
    assert twilio.accepted == []


def test_a_recipients_own_refusal_still_fails_only_that_message(twilio):
    outcomes = tw_provider(twilio).send(
        [sms(1, "+61412345678"), sms(2, "+15005550004"), sms(3, "+61412345679")]
    )
    assert [(o.kind, o.error_code) for o in outcomes] == [
        ("sent", None), ("failed", "21610"), ("sent", None),
    ]  # fmt: skip
    assert len(twilio.accepted) == 2


@pytest.mark.parametrize("word", ["STOP", "revoke", "OPTOUT"])
def test_a_number_that_replied_an_opt_out_word_is_refused_until_it_opts_in(twilio, word):
    """Twilio's default opt-out words (REVOKE and OPTOUT since 2025) block the number: 21610."""
    twilio.receive("+61412345678", word)
    assert [(o.kind, o.error_code) for o in tw_provider(twilio).send([sms(1, "+61412345678")])] == [
        ("failed", "21610")
    ]
    twilio.receive("+61412345678", "UNSTOP")
    assert [o.kind for o in tw_provider(twilio).send([sms(2, "+61412345678")])] == ["sent"]


def test_twilio_reconciliation_matches_number_and_body_else_sends_again_after_settling(twilio):
    provider = tw_provider(twilio)
    went, lost = sms(1, "+61412345678"), sms(2, "+61412345678")
    sending_at = datetime.now(UTC)  # the sandbox dates what it creates by the real clock
    provider.send([went])
    later = sending_at + timedelta(minutes=10)
    outcomes = provider.reconcile(
        [as_row(went, "sending", "twilio", sending_at), as_row(lost, "sending", "twilio", sending_at),
         as_row(lost, "sending", "twilio", later)],
        later, timedelta(minutes=5),
    )  # fmt: skip
    assert [o.kind for o in outcomes] == ["sent", "retry", "pending"]
    assert outcomes[0].provider_message_id == twilio.accepted[0]["sid"]
    # only what was created while the attempt's request lasted can be the attempt's: the same
    # SMS sent again an hour later is not this attempt, which Twilio never received
    (again,) = provider.reconcile(
        [as_row(went, "sending", "twilio", sending_at - timedelta(hours=1))],
        later, timedelta(minutes=5),
    )  # fmt: skip
    assert again.kind == "retry"


def test_an_sms_to_the_number_from_the_attempts_moment_with_other_text_is_never_resent(twilio):
    """A messaging service's Smart Encoding stores the text it rewrote (curly quotes, dashes),
    so the SMS we sent can be in the list under another digest: an SMS to that number created
    while the attempt's request lasted leaves the row for a person (unknown), never resent."""
    provider = tw_provider(twilio)
    ours, rewritten = sms(1, "+61412345678"), sms(2, "+61412345678")
    sending_at = datetime.now(UTC)
    provider.send([rewritten])  # what Twilio holds: the same number, other text
    later = sending_at + timedelta(minutes=10)
    (outcome,) = provider.reconcile(
        [as_row(ours, "sending", "twilio", sending_at)], later, timedelta(minutes=5)
    )
    assert (outcome.kind, outcome.reason) == ("unknown", AMBIGUOUS)


def test_an_sms_the_ledger_holds_as_another_messages_is_never_taken_for_this_attempt(twilio):
    """The same text to the same number minutes apart (one reminder, then the same one for a
    second patient on a shared mobile): what went first, recorded as its own message, neither
    confirms the second attempt (it never left: sent again) nor leaves it in doubt."""
    provider = tw_provider(twilio)
    went, never_left = sms(1, "+61412345678"), sms(1, "+61412345678")
    sending_at = datetime.now(UTC)
    provider.send([went])
    later = sending_at + timedelta(minutes=10)
    (outcome,) = provider.reconcile(
        [as_row(never_left, "sending", "twilio", sending_at)], later, timedelta(minutes=5),
        taken={twilio.accepted[0]["sid"]},
    )  # fmt: skip
    assert outcome.kind == "retry"


def test_credentials_rejected_midway_still_report_what_already_went(twilio):
    """Raising would make dispatch put the whole batch back, and resend the first message."""
    provider = tw_provider(twilio)
    twilio.faults.add("slow", delay=0)  # the first request goes through as usual
    twilio.faults.add("401")  # then the token is rotated under us
    outcomes = provider.send(
        [sms(1, "+61412345678"), sms(2, "+61412345679"), sms(3, "+6141234567")]
    )
    assert [o.kind for o in outcomes] == ["sent", "retry", "retry"]
    assert len(twilio.accepted) == 1
    twilio.faults.add("401")
    with pytest.raises(ProviderUnavailable, match="TwilioAccount block"):
        provider.send([sms(2, "+61412345679")])


def test_a_send_key_longer_than_postmark_metadata_allows_is_sent_and_found_by_its_digest(postmark):
    provider = pm_provider(postmark)
    long_key = "journey:" + "a-very-long-journey-name-" * 4 + ":12345:step-3"
    message = OutgoingMessage(
        message_id=1, send_key=long_key, channel="email", purpose="transactional", tag="j",
        to="a@example.com", content=RenderedEmail("S", "<p>h</p>", "h"),
    )  # fmt: skip
    (outcome,) = provider.send([message])
    assert outcome.kind == "sent"
    assert len(postmark.accepted[0]["Metadata"]["send_key"]) <= 80
    assert provider.find_by_send_key(long_key, "outbound") == outcome.provider_message_id


def test_the_blocks_build_providers_that_reach_the_sandboxes_and_hide_their_secrets(
    postmark, twilio
):
    from pydantic import ValidationError

    from blocks.postmark import PostmarkServer
    from blocks.twilio import TwilioAccount

    server = PostmarkServer(
        server_token=postmark.server_token, from_address="Demo <hello@demo.example>",
        base_url=postmark.url, track_links="HtmlAndText",
    )  # fmt: skip
    account = TwilioAccount(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number="+61400000000",
        base_url=twilio.url,
    )  # fmt: skip
    assert postmark.server_token not in repr(server) and AUTH_TOKEN not in repr(account)
    pm, tw = server.provider(), account.provider()
    assert postmark.server_token not in repr(pm.settings) and AUTH_TOKEN not in repr(tw.settings)
    assert pm.send([email(1, "a@example.com")])[0].kind == "sent"
    assert postmark.accepted[0]["TrackLinks"] == "HtmlAndText"
    assert tw.send([sms(1, "+61412345678")])[0].kind == "sent"
    with pytest.raises(ValidationError, match="from_number or messaging_service_sid"):
        TwilioAccount(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)


def test_a_twilio_account_with_a_status_callback_url_asks_twilio_to_call_back(twilio):
    from blocks.twilio import TwilioAccount

    url = "https://relay.example/twilio/status/acme"
    account = TwilioAccount(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number="+61400000000",
        base_url=twilio.url, status_callback_url=url,
    )  # fmt: skip
    assert account.provider().send([sms(1, "+61412345678")])[0].kind == "sent"
    assert twilio.accepted[0]["_callback"] == url
    plain = TwilioAccount(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN,
                          from_number="+61400000000", base_url=twilio.url)  # fmt: skip
    plain.provider().send([sms(2, "+61412345678")])
    assert twilio.accepted[1]["_callback"] is None  # without it: polled, nothing asked of Twilio
