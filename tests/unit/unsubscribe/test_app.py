"""The unsubscribe endpoint over HTTP: a signed link unsubscribes its own recipient from
marketing, once; a forged or altered one is refused and records nothing; the pages show no
personal data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tasks import feedback
from tasks.config import ClinicConfig
from tasks.messages import ledger
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.unsubscribe.app import create_app
from tasks.unsubscribe.tokens import sign
from tasks.warehouse import hold, open_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
KEY = b"unit-test-unsubscribe-key"
ADDRESS = "pat.smith@example.com"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def clinic(tmp_path):
    return ClinicConfig(clinic="demo", name="Demo Physio & Pilates",
                        database=tmp_path / "demo.duckdb")  # fmt: skip


@pytest.fixture
def message_id(clinic):
    """A marketing email that went to patient 7."""
    key = make_send_key("campaign", "spring", 7, "2026-03")
    with open_db(clinic.database_path) as con:
        ledger.insert_planned(
            con, [PlannedMessage(key, "campaign", "spring", 7, "email", "marketing", "recall",
                                 NOW - timedelta(days=1))], NOW - timedelta(days=2),
        )  # fmt: skip
        message_id = ledger.get(con, key).message_id
        ledger.transition(con, [message_id], "planned", "sending", NOW,
                          values={"to_address": [ADDRESS]})  # fmt: skip
        ledger.transition(con, [message_id], "sending", "sent", NOW)
    return message_id


@pytest.fixture
def client(clinic):
    """The app served over HTTP on 127.0.0.1, as `relay serve-unsubscribe` serves it."""
    from sandbox.server import ThreadedServer

    with ThreadedServer(create_app({"demo": clinic}, key=KEY, clock=lambda: NOW)) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield http


def suppressions(clinic):
    with open_db(clinic.database_path) as con:
        return con.execute(
            "SELECT address, action, reason, scope, source FROM state.suppressions"
        ).fetchall()


def test_the_link_shows_a_confirmation_page_and_a_get_unsubscribes_nobody(
    client, clinic, message_id
):
    token = sign("demo", 7, message_id, "email", key=KEY)
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert 'method="post"' in page.text and "Demo Physio &amp; Pilates" in page.text
    assert suppressions(clinic) == []


def test_one_click_post_unsubscribes_the_recipient_from_marketing(client, clinic, message_id):
    token = sign("demo", 7, message_id, "email", key=KEY)
    reply = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})

    assert reply.status_code == 200
    assert "You are unsubscribed" in reply.text
    assert suppressions(clinic) == [
        (ADDRESS, "suppress", "unsubscribed", "marketing", "unsubscribe_link")
    ]


def test_the_pages_carry_no_personal_data(client, message_id):
    token = sign("demo", 7, message_id, "email", key=KEY)
    for reply in (client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}")):
        assert "pat" not in reply.text.lower() and "example.com" not in reply.text


def test_posting_twice_records_one_suppression(client, clinic, message_id):
    token = sign("demo", 7, message_id, "email", key=KEY)
    client.post(f"/unsubscribe/{token}")
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    assert len(suppressions(clinic)) == 1


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),  # altered MAC
        lambda token: sign("demo", 8, 1, "email", key=b"someone else's key"),  # wrong key
        lambda token: token.split(".")[0],  # cut short
        lambda token: "not-a-token",
        # the same bytes written another way: base64 ignores the MAC's 4 spare bits, stray
        # characters and padding, so these decoded to the signed bytes and unsubscribed
        lambda token: token[:-1] + _B64[_B64.index(token[-1]) ^ 1],
        lambda token: token[:5] + "!" + token[5:],
        lambda token: token + "==",
    ],
    ids=["altered", "other-key", "truncated", "garbage", "spare-bits", "stray-char", "padded"],
)
def test_a_forged_or_altered_token_is_refused_and_records_nothing(
    client, clinic, message_id, forge
):
    token = forge(sign("demo", 7, message_id, "email", key=KEY))
    for reply in (client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}")):
        assert reply.status_code == 403
        assert reply.headers["content-type"].startswith("text/plain")
        assert "not valid" in reply.text or "incomplete" in reply.text
    assert suppressions(clinic) == []
    assert not feedback.inbox_path(clinic.database_path).exists()


def test_another_patients_id_in_a_validly_shaped_token_needs_the_key(client, clinic, message_id):
    """Changing the patient id in the payload breaks the signature: nobody can unsubscribe
    someone else by guessing ids."""
    token = sign("demo", 7, message_id, "email", key=KEY)
    payload, mac = token.split(".")
    other_payload = sign("demo", 8, message_id, "email", key=KEY).split(".")[0]
    assert client.post(f"/unsubscribe/{other_payload}.{mac}").status_code == 403
    assert suppressions(clinic) == []


def test_a_token_for_a_clinic_not_served_here_is_not_found(client, clinic):
    token = sign("elsewhere", 7, 1, "email", key=KEY)
    assert client.post(f"/unsubscribe/{token}").status_code == 404


def test_during_a_tick_the_click_waits_in_the_inbox_and_the_next_pull_records_it(
    client, clinic, message_id, monkeypatch
):
    import tasks.unsubscribe.app as app_module

    monkeypatch.setattr(app_module, "DB_WAIT_SECONDS", 0.1)
    token = sign("demo", 7, message_id, "email", key=KEY)
    inbox = feedback.inbox_path(clinic.database_path)

    # The tick holds the database; the endpoint (another process in production) cannot get it.
    import threading

    held, release = threading.Event(), threading.Event()

    def tick():
        import fcntl
        import os

        fd = os.open(f"{clinic.database_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.set()
        release.wait(10)
        os.close(fd)

    holder = threading.Thread(target=tick)
    holder.start()
    held.wait(5)
    try:
        reply = client.post(f"/unsubscribe/{token}")
    finally:
        release.set()
        holder.join()

    # Not recorded yet, so not "unsubscribed": the page says the request waits.
    assert reply.status_code == 202 and "You are unsubscribed" not in reply.text
    assert "request is received" in reply.text and "marketing email" in reply.text
    assert suppressions(clinic) == []
    assert inbox.read_text().count("\n") == 1

    with hold(clinic.database_path), open_db(clinic.database_path) as con:
        assert feedback.drain_unsubscribes(con, inbox, NOW) == {"unsubscribe_suppress": 1}
    assert suppressions(clinic) == [
        (ADDRESS, "suppress", "unsubscribed", "marketing", "unsubscribe_link")
    ]


def test_a_valid_link_for_a_message_never_sent_says_nothing_changed(client, clinic, message_id):
    """Signed, but no such message for that patient (e.g. a database restored from before the
    send): the click records nothing, so the page must not claim an unsubscribe."""
    token = sign("demo", 7, message_id + 1000, "email", key=KEY)
    reply = client.post(f"/unsubscribe/{token}")
    assert reply.status_code == 404
    assert "You are unsubscribed" not in reply.text and "nothing was changed" in reply.text
    assert suppressions(clinic) == []


def test_a_click_for_a_clinic_whose_database_is_not_here_is_kept_not_lost(
    client, clinic, message_id
):
    """The endpoint alone (no Prefect server) on a machine without the clinic's database (not
    its home, or the file moved away): the click is kept in the inbox for the database, no empty
    database is made in its place, and the patient is not told the link matches nothing."""
    token = sign("demo", 7, message_id, "email", key=KEY)
    away = clinic.database_path.with_name("away.duckdb")
    clinic.database_path.rename(away)

    reply = client.post(f"/unsubscribe/{token}")

    assert reply.status_code == 202 and "request is received" in reply.text
    assert "nothing was changed" not in reply.text and "You are unsubscribed" not in reply.text
    assert not clinic.database_path.exists()
    inbox = feedback.inbox_path(clinic.database_path)
    assert inbox.read_text().count("\n") == 1
    away.rename(clinic.database_path)  # the clinic's database, back here: its tick records it
    with hold(clinic.database_path), open_db(clinic.database_path) as con:
        assert feedback.drain_unsubscribes(con, inbox, NOW) == {"unsubscribe_suppress": 1}
    assert suppressions(clinic) == [
        (ADDRESS, "suppress", "unsubscribed", "marketing", "unsubscribe_link")
    ]


@pytest.fixture
def sms_message_id(clinic):
    """A marketing SMS that went to patient 7."""
    key = make_send_key("campaign", "spring-sms", 7, "2026-03")
    with open_db(clinic.database_path) as con:
        ledger.insert_planned(
            con, [PlannedMessage(key, "campaign", "spring-sms", 7, "sms", "marketing",
                                 "promo-sms", NOW - timedelta(days=1))], NOW - timedelta(days=2),
        )  # fmt: skip
        message_id = ledger.get(con, key).message_id
        ledger.transition(con, [message_id], "planned", "sending", NOW,
                          values={"to_address": ["+61412345678"]})  # fmt: skip
        ledger.transition(con, [message_id], "sending", "sent", NOW)
    return message_id


def test_an_sms_link_speaks_of_text_messages_not_email(client, clinic, sms_message_id):
    token = sign("demo", 7, sms_message_id, "sms", key=KEY)
    page, reply = client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}")
    assert "text messages" in page.text and "email" not in page.text.lower()
    assert reply.status_code == 200 and "You are unsubscribed" in reply.text
    assert "text messages" in reply.text and "email" not in reply.text.lower()
    assert suppressions(clinic) == [
        ("+61412345678", "suppress", "unsubscribed", "marketing", "unsubscribe_link")
    ]


def test_serving_on_a_port_already_taken_says_what_to_change(clinic):
    import socket

    from tasks.errors import UserFacingError
    from tasks.unsubscribe.app import serving

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserFacingError, match="providers.unsubscribe_url"):
            with serving({"demo": clinic}, "127.0.0.1", port):
                pass
