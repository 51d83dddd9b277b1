"""SMS delivery: dispatch sends through the real twilio client to the sandbox over HTTP, the
sandbox moves each message along its clock (queued, sending, sent, then delivered, undelivered or
failed with Twilio's error code), and the delivery feed records what became of it: a number that
can never receive is suppressed for every SMS, with the message and code as evidence.

Status callbacks (at the end): with a public URL configured, each SMS carries a StatusCallback,
the sandbox POSTs every status change there signed as Twilio signs it, and relay's endpoint
(beside the unsubscribe page) records a final status at once; a forged one changes nothing. The
poll stays the safety net.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.server import ThreadedServer
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks import feedback_delivery
from tasks.config import ClinicConfig, ProvidersSettings
from tasks.errors import UserFacingError
from tasks.feedback import FeedbackUnavailable
from tasks.messages import ledger
from tasks.messages.dispatch import dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates
from tasks.providers.twilio import TwilioProvider, TwilioSettings
from tasks.unsubscribe.app import create_app
from tasks.warehouse import memory_db, open_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
OUR_NUMBER = "+61400000000"
MOBILE = "+61411111111"
LANDLINE = "+61255550006"  # the sandbox's Australian landline: accepted, then 30006
GONE = "+15005550031"  # 30005: no longer in service
UNREACHABLE = "+15005550030"  # 30003: switched off, for a while
QUEUE_OVERFLOW = "+15005550035"  # 30001: failed before reaching a carrier (our rate)
NO_RECEIPT = "+15005550036"  # the carrier never says: stays "sent"


class Clock:
    """One clock for us and the sandbox: the test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def twilio(clock):
    sandbox = TwilioSandbox()
    sandbox.clock = clock
    with sandbox.serve() as server:
        sandbox.settings = TwilioSettings(
            account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=OUR_NUMBER,
            base_url=server.url, timeout=5,
        )  # fmt: skip
        yield sandbox


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


@pytest.fixture
def templates(tmp_path):
    (tmp_path / "templates" / "ping").mkdir(parents=True)
    (tmp_path / "templates" / "ping" / "sms.txt").write_text("Your appointment is tomorrow.")
    return Templates(tmp_path)


def send(con, twilio, clock, templates, numbers, *, source="reminder", purpose="transactional"):
    """Plan one SMS per number (patient i) and dispatch them through Twilio; their send keys."""
    keys = []
    for i in range(1, len(numbers) + 1):
        key = make_send_key("trigger", source, i, f"appointment:{clock.now:%H%M%S}:{i}")
        ledger.insert_planned(con, [PlannedMessage(key, "trigger", source, i, "sms", purpose,
                                                   "ping", clock.now)], clock.now)  # fmt: skip
        keys.append(key)
    to = dict(zip(range(1, len(numbers) + 1), numbers, strict=True))
    dispatch(con, providers={"sms": TwilioProvider(twilio.settings)},
             prepare=lambda row: Ready(to=to[row.patient_id], context={}),
             templates=templates, clock=clock)  # fmt: skip
    return keys


def pull(con, twilio, clock):
    provider = TwilioProvider(twilio.settings)
    try:
        return provider.pull_deliveries(con, clock.now)
    finally:
        provider.close()


def delivery(con, key):
    return con.execute(
        "SELECT d.status, d.error_code, d.final FROM state.sms_deliveries d "
        "JOIN state.messages m USING (message_id) WHERE m.send_key = ?",
        [key],
    ).fetchone()


def sms_suppressions(con):
    return con.execute(
        "SELECT address, reason, scope, source, evidence FROM state.suppressions "
        "WHERE channel = 'sms' ORDER BY suppression_id"
    ).fetchall()


def test_an_undelivered_sms_to_a_landline_suppresses_the_number_for_every_sms(
    con, twilio, clock, templates
):
    (key,) = send(con, twilio, clock, templates, [LANDLINE])
    sid = ledger.get(con, key).provider_message_id
    assert ledger.get(con, key).status == "sent"  # Twilio accepted it

    clock.advance(minutes=1)
    assert pull(con, twilio, clock) == {"sms_undelivered": 1, "suppressed_undeliverable": 1}

    assert delivery(con, key) == ("undelivered", "30006", True)
    ((address, reason, scope, source, evidence),) = sms_suppressions(con)
    assert (address, reason, scope, source) == (LANDLINE, "undeliverable", "all", "twilio")
    assert sid in evidence and "30006" in evidence
    # sending reads it: no reminder, no marketing to that number any more
    assert ledger.suppressed_addresses(con, "sms", [LANDLINE], "transactional") == {LANDLINE}
    (second,) = send(con, twilio, clock, templates, [LANDLINE])
    assert ledger.get(con, second).status == "skipped"
    assert len(twilio.accepted) == 1


def test_the_status_moves_queued_sending_sent_then_delivered_and_each_step_is_recorded(
    con, twilio, clock, templates
):
    (key,) = send(con, twilio, clock, templates, [MOBILE])
    seen = []
    for _ in range(4):
        pull(con, twilio, clock)
        seen.append(delivery(con, key))
        clock.advance(seconds=2)
    assert seen == [
        ("queued", None, False),
        ("sent", None, False),
        ("sent", None, False),
        ("delivered", None, True),
    ]
    assert sms_suppressions(con) == []
    clock.advance(minutes=5)
    assert pull(con, twilio, clock) == {}  # final: never asked about again
    assert len([r for r in twilio.requests if r[0] == "GET"]) == 4


@pytest.mark.parametrize(
    ("number", "status", "code"),
    [(UNREACHABLE, "undelivered", "30003"), (QUEUE_OVERFLOW, "failed", "30001")],
)
def test_temporary_failures_are_recorded_and_suppress_nothing(
    con, twilio, clock, templates, number, status, code
):
    (key,) = send(con, twilio, clock, templates, [number])
    clock.advance(minutes=1)
    assert pull(con, twilio, clock) == {f"sms_{status}": 1}
    assert delivery(con, key) == (status, code, True)
    assert sms_suppressions(con) == []


def test_a_number_no_longer_in_service_is_suppressed(con, twilio, clock, templates):
    send(con, twilio, clock, templates, [GONE])
    clock.advance(minutes=1)
    pull(con, twilio, clock)
    assert [(a, r) for a, r, *_ in sms_suppressions(con)] == [(GONE, "undeliverable")]


def test_two_undelivered_messages_to_one_landline_suppress_it_once(con, twilio, clock, templates):
    send(con, twilio, clock, templates, [LANDLINE], source="reminder")
    send(con, twilio, clock, templates, [MOBILE, LANDLINE], source="welcome")  # before the pull
    clock.advance(minutes=1)
    assert pull(con, twilio, clock) == {
        "sms_undelivered": 2, "sms_delivered": 1, "suppressed_undeliverable": 1,
        "undeliverable_already": 1,
    }  # fmt: skip
    assert len(sms_suppressions(con)) == 1


def test_the_poll_is_bounded_least_recently_checked_first_and_only_recent_messages(
    con, twilio, clock, templates, monkeypatch
):
    monkeypatch.setattr(feedback_delivery, "POLL_LIMIT", 3)
    old = send(con, twilio, clock, templates, [NO_RECEIPT])
    clock.advance(days=feedback_delivery.POLL_DAYS, minutes=1)
    keys = send(con, twilio, clock, templates, [MOBILE, NO_RECEIPT, MOBILE, MOBILE, MOBILE])
    clock.advance(minutes=1)

    pull(con, twilio, clock)
    assert delivery(con, old[0]) is None  # sent too long ago: never asked about
    checked = [k for k in keys if delivery(con, k)]
    assert checked == keys[:3]  # oldest first, three a pull
    pull(con, twilio, clock)
    assert all(delivery(con, k) for k in keys)
    # the one with no receipt stays "sent"; it is asked about again in turn, not every time first
    assert delivery(con, keys[1]) == ("sent", None, False)
    gets = len([r for r in twilio.requests if r[0] == "GET"])
    assert (
        pull(con, twilio, clock) == {"delivery_pending": 1}
        and len([r for r in twilio.requests if r[0] == "GET"]) == gets + 1
    )


def test_twilio_unreachable_mid_poll_records_what_was_read_and_says_so(
    con, twilio, clock, templates
):
    keys = send(con, twilio, clock, templates, [LANDLINE, MOBILE])
    clock.advance(minutes=1)
    twilio.faults.add("slow", delay=0)  # the first fetch answers
    twilio.faults.add("5xx")
    with pytest.raises(FeedbackUnavailable, match="next pull"):
        pull(con, twilio, clock)
    assert delivery(con, keys[0]) == ("undelivered", "30006", True)
    assert delivery(con, keys[1]) is None
    assert pull(con, twilio, clock) == {"sms_delivered": 1}


def test_a_pull_that_dies_before_its_commit_records_nothing_and_the_next_records_once(
    tmp_path, twilio, clock, templates, monkeypatch
):
    db = tmp_path / "clinic.duckdb"
    with open_db(db) as con:
        send(con, twilio, clock, templates, [LANDLINE, MOBILE])
    clock.advance(minutes=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill between the suppressions and the cursor would

    with open_db(db) as con:
        monkeypatch.setattr("tasks.feedback.advance", killed)
        with pytest.raises(KeyboardInterrupt):
            pull(con, twilio, clock)
        monkeypatch.undo()
        assert sms_suppressions(con) == []
        assert con.execute("SELECT count(*) FROM state.sms_deliveries").fetchone() == (0,)
    with open_db(db) as con:
        assert pull(con, twilio, clock) == {
            "sms_undelivered": 1, "sms_delivered": 1, "suppressed_undeliverable": 1
        }  # fmt: skip
        assert pull(con, twilio, clock) == {}
        assert len(sms_suppressions(con)) == 1


# --- status callbacks ------------------------------------------------------------------------


class LateApp:
    """The endpoint's URL must be known before the app that checks it is built."""

    app = None

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


@pytest.fixture
def endpoint(tmp_path, twilio, clock):
    """relay's endpoint for clinic 'demo', and the Twilio settings that point Twilio at it."""
    late = LateApp()
    with ThreadedServer(late) as server:
        url = f"{server.url}/twilio/status/demo"
        twilio.settings = dataclasses.replace(twilio.settings, status_callback_url=url)
        config = ClinicConfig(clinic="demo", name="Demo", database=tmp_path / "demo.duckdb")
        late.app = create_app(
            {"demo": config}, clock=clock, sms_providers={"demo": TwilioProvider(twilio.settings)}
        )
        yield config, url


def test_two_clinics_with_one_status_callback_path_are_refused_naming_both(tmp_path, twilio):
    """The second clinic's route silently replaced the first's: its callbacks were checked
    with the other account's token and refused (its deliveries waited for the poll)."""
    url = "https://relay.example/twilio/status"
    settings = dataclasses.replace(twilio.settings, status_callback_url=url)
    configs = {
        name: ClinicConfig(clinic=name, name=name, database=tmp_path / f"{name}.duckdb")
        for name in ("north", "south")
    }
    sms = {name: TwilioProvider(settings) for name in configs}
    with pytest.raises(UserFacingError, match=r"Clinics 'north' and 'south' both set a Twilio "
                       r"status_callback_url with the path /twilio/status: give each"):  # fmt: skip
        create_app(configs, sms_providers=sms)
    sms["south"] = TwilioProvider(dataclasses.replace(settings, status_callback_url=url + "/s"))
    create_app(configs, sms_providers=sms)  # each its own path: fine


def test_a_final_status_called_back_is_recorded_at_once_and_suppresses_a_landline(
    twilio, clock, templates, endpoint
):
    config, url = endpoint
    with open_db(config.database_path) as con:
        (key,) = send(con, twilio, clock, templates, [LANDLINE])
    assert twilio.accepted[0]["_callback"] == url  # Twilio was asked to call back

    clock.advance(minutes=1)
    assert twilio.deliver_callbacks() == 3  # each change after queued, in order
    assert [c["params"]["MessageStatus"] for c in twilio.callbacks] == [
        "sending", "sent", "undelivered",
    ]  # fmt: skip
    assert twilio.callbacks[-1]["params"]["ErrorCode"] == "30006"
    assert {c["answer"] for c in twilio.callbacks} == {204}

    with open_db(config.database_path) as con:
        assert delivery(con, key) == ("undelivered", "30006", True)
        assert [(a, r) for a, r, *_ in sms_suppressions(con)] == [(LANDLINE, "undeliverable")]
        assert pull(con, twilio, clock) == {}  # final already: the poll asks nothing
        sid = ledger.get(con, key).provider_message_id
    assert not [r for r in twilio.requests if r[0] == "GET" and sid in r[1]]


def test_a_callback_path_below_the_unsubscribe_path_reaches_the_callback(
    tmp_path, twilio, clock, templates
):
    """Links are <unsubscribe path>/<token>: a callback path one segment below it (/u and
    /u/twilio) was taken for a link, and Twilio's calls refused as a forged one (403)."""
    late = LateApp()
    with ThreadedServer(late) as server:
        url = f"{server.url}/u/twilio"
        twilio.settings = dataclasses.replace(twilio.settings, status_callback_url=url)
        config = ClinicConfig(
            clinic="demo", name="Demo", database=tmp_path / "demo.duckdb",
            providers=ProvidersSettings(unsubscribe_url=f"{server.url}/u"),
        )  # fmt: skip
        late.app = create_app(
            {"demo": config}, clock=clock, sms_providers={"demo": TwilioProvider(twilio.settings)}
        )
        with open_db(config.database_path) as con:
            (key,) = send(con, twilio, clock, templates, [LANDLINE])
        clock.advance(minutes=1)
        assert twilio.deliver_callbacks() == 3
        assert {c["answer"] for c in twilio.callbacks} == {204}
        with open_db(config.database_path) as con:
            assert delivery(con, key) == ("undelivered", "30006", True)
        assert httpx.get(f"{server.url}/u/not-a-token").status_code == 403  # links still served


def test_a_callback_with_a_wrong_signature_changes_nothing(twilio, clock, templates, endpoint):
    config, url = endpoint
    with open_db(config.database_path) as con:
        (key,) = send(con, twilio, clock, templates, [LANDLINE])
        sid = ledger.get(con, key).provider_message_id
    params = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30006",
              "AccountSid": twilio.account_sid}  # fmt: skip
    forged = httpx.post(url, data=params, headers={"X-Twilio-Signature": "bm90IGl0"})
    unsigned = httpx.post(url, data=params)
    signed_for_another_url = httpx.post(
        url, data=params,
        headers={"X-Twilio-Signature": twilio.signature(url + "/other", params)},
    )  # fmt: skip

    assert [r.status_code for r in (forged, unsigned, signed_for_another_url)] == [403] * 3
    with open_db(config.database_path) as con:
        assert delivery(con, key) is None and sms_suppressions(con) == []
    genuine = httpx.post(
        url, data=params, headers={"X-Twilio-Signature": twilio.signature(url, params)}
    )
    assert genuine.status_code == 204
    with open_db(config.database_path) as con:
        assert delivery(con, key) == ("undelivered", "30006", True)


def test_a_callback_while_the_tick_holds_the_database_is_left_to_the_poll(
    twilio, clock, templates, endpoint
):
    config, _ = endpoint
    with open_db(config.database_path) as con:
        (key,) = send(con, twilio, clock, templates, [MOBILE])
        clock.advance(minutes=1)
        assert twilio.deliver_callbacks() >= 1  # answered while the database is held here
        assert {c["answer"] for c in twilio.callbacks} == {204}
        assert delivery(con, key) is None
        assert pull(con, twilio, clock) == {"sms_delivered": 1}
        assert delivery(con, key) == ("delivered", None, True)
