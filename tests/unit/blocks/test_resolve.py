"""blocks/resolve.py: a clinic's configuration becomes accounts and providers here, and only here
(no Prefect server needed for the outbox and the environment)."""

from __future__ import annotations

import pytest

from blocks.resolve import cliniko_account, providers_for
from tasks.config import ClinicConfig
from tasks.errors import UserFacingError


def test_the_default_clinic_sends_both_channels_to_its_own_outbox(data_dir):
    cfg = ClinicConfig(clinic="t", name="Test Clinic")
    chosen = providers_for(cfg)
    assert {c: p.name for c, p in chosen.items()} == {"email": "outbox", "sms": "outbox"}
    assert chosen["email"] is chosen["sms"]
    assert chosen["email"].folder == data_dir / "outbox" / "t"
    assert chosen["email"].email_from == "Test Clinic <hello@clinic.example>"
    assert chosen["sms"].sms_from == "Test Clinic"


def test_cliniko_from_the_environment_reads_its_variables(monkeypatch):
    monkeypatch.setenv("CLINIKO_API_KEY", "key-au2")
    monkeypatch.setenv("CLINIKO_CONTACT", "ops@clinic.example")
    monkeypatch.setenv("CLINIKO_BASE_URL", "http://127.0.0.1:1")
    account = cliniko_account(ClinicConfig(clinic="t", name="T", cliniko={"account": "env"}))
    assert account.api_key.get_secret_value() == "key-au2"
    assert (account.contact_email, account.base_url) == ("ops@clinic.example", "http://127.0.0.1:1")
    assert "key-au2" not in repr(account)


def test_cliniko_from_an_empty_environment_says_what_to_set(monkeypatch):
    monkeypatch.delenv("CLINIKO_API_KEY", raising=False)
    with pytest.raises(UserFacingError, match="CLINIKO_API_KEY is not set.*cliniko.account"):
        cliniko_account(ClinicConfig(clinic="t", name="T", cliniko={"account": "env"}))


def test_the_clinics_tracking_setting_reaches_postmark_for_marketing_email_only(monkeypatch):
    from tasks.providers.common import OutgoingMessage, RenderedEmail

    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "token")
    monkeypatch.setenv("POSTMARK_FROM", "d@clinic.example")
    cfg = ClinicConfig(
        clinic="t", name="T", providers={"email": "env", "tracking": {"opens": True, "links": True}}
    )
    email = providers_for(cfg)["email"]

    def flags(purpose):
        body = email._as_dict(OutgoingMessage(1, "k", "email", purpose, "t", "a@b.example",
                                              RenderedEmail("s", "<p>h</p>", "h")))  # fmt: skip
        return body["TrackOpens"], body["TrackLinks"]

    assert flags("marketing") == (True, "HtmlAndText")
    assert flags("transactional") == (False, "None")
    off = providers_for(ClinicConfig(clinic="t", name="T", providers={"email": "env"}))["email"]
    assert off._tracking(True) == {"TrackLinks": "None", "TrackOpens": False}


def test_replies_go_to_the_clinics_reply_to_unless_the_postmark_block_names_its_own(
    monkeypatch, data_dir
):
    """providers.sender.reply_to (relay connect writes Cliniko's email_reply_to there) went
    only into templates' clinic.email: replies to a reminder went to the From address."""
    from tasks.providers.common import OutgoingMessage, RenderedEmail
    from tasks.providers.postmark import PostmarkProvider, PostmarkSettings

    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "token")
    monkeypatch.setenv("POSTMARK_FROM", "noreply@clinic.example")
    sender = {"email": "noreply@clinic.example", "reply_to": "frontdesk@clinic.example"}
    msg = OutgoingMessage(1, "k", "email", "transactional", "t", "a@b.example",
                          RenderedEmail("s", "<p>h</p>", "h"))  # fmt: skip

    def reply_to(providers: dict) -> ClinicConfig:
        return ClinicConfig(clinic="t", name="T", providers={"sender": sender, **providers})

    email = providers_for(reply_to({"email": "env"}))["email"]
    assert email._as_dict(msg)["ReplyTo"] == "frontdesk@clinic.example"
    own = PostmarkProvider(
        PostmarkSettings("token", "noreply@clinic.example", "accounts@x.example")
    )
    own.reply_to_by_default("frontdesk@clinic.example")
    assert own._as_dict(msg)["ReplyTo"] == "accounts@x.example"  # the block's own wins

    outbox = providers_for(reply_to({}))["email"]
    outbox.send([msg])
    (eml,) = (data_dir / "outbox" / "t").glob("*.eml")
    assert "Reply-To: frontdesk@clinic.example" in eml.read_text()


def test_a_block_not_found_says_which_prefect_database_was_asked(monkeypatch, tmp_path):
    """A block saved by hand with ``prefect``/``python`` outside relay and make went to Prefect's
    own ~/.prefect, and relay (PREFECT_HOME=./.prefect) said only 'not saved on this Prefect
    server': the message names the database asked and how to save it where relay looks."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from blocks.cliniko import ClinikoAccount
    from blocks.postmark import PostmarkServer

    def missing(name):
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(ClinikoAccount, "load", staticmethod(missing))
    monkeypatch.setattr(PostmarkServer, "load", staticmethod(missing))
    home = tmp_path / "project" / ".prefect"
    # no server named (the suite may run beside one: PREFECT_API_URL in its environment)
    with temporary_settings(updates={PREFECT_HOME: home}, restore_defaults={PREFECT_API_URL}):
        with pytest.raises(UserFacingError) as cliniko:
            cliniko_account(ClinicConfig(clinic="t", name="T", cliniko={"account": "t-cliniko"}))
        cfg = ClinicConfig(clinic="t", name="T", providers={"email": "t-postmark"})
        with pytest.raises(UserFacingError) as postmark:
            providers_for(cfg)
    for refused in (cliniko, postmark):
        said = str(refused.value)
        assert f"PREFECT_HOME={home}" in said and "relay connect" in said, said
        assert "~/.prefect" in said
    with temporary_settings(updates={PREFECT_API_URL: "http://ops:s3cret@127.0.0.1:4200/api"}):
        with pytest.raises(UserFacingError, match=r"server at http://127\.0\.0\.1:4200/api") as on:
            cliniko_account(ClinicConfig(clinic="t", name="T", cliniko={"account": "t-cliniko"}))
    assert "s3cret" not in str(on.value)
