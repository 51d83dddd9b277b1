"""`relay connect`'s checks against the sandboxes, over real HTTP through the real clients (httpx
for Cliniko, postmarker for Postmark, the twilio client for Twilio): every failure it explains,
and the run that passes them all, with --check-only and saving its blocks to a throwaway Prefect
API (the test harness)."""

from __future__ import annotations

import zlib

import pytest

from sandbox.cliniko import SandboxClinic, SandboxServer
from sandbox.postmark import PostmarkSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from tasks.connect import ConnectFailed
from tasks.connect.cliniko import SHARDS, verify_cliniko
from tasks.connect.postmark import verify_postmark
from tasks.connect.twilio import verify_twilio

pytestmark = pytest.mark.integration

CONTACT = "owner@acme-physio.com.au"
NOWHERE = "http://127.0.0.1:9/v1"  # nothing listens: a shard host that does not answer
SERVICE_SID = "MG" + "a" * 32
TEST_SID = "AC" + "7" * 32  # the account's test credentials' SID (Twilio shows both pairs)


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path, monkeypatch):
    """Connect checks the clinic's database, if one exists: a private data folder, not ./data
    (where a developer's own `relay connect acme` may have left one)."""
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def cliniko():
    """The clinic's account on shard uk1, and another account on au1 (a different clinic)."""
    home = SandboxClinic.generate(seed=5, patients=20, appointments_per_patient=2, shard="uk1")
    other = SandboxClinic.generate(seed=6, patients=5, appointments_per_patient=1)
    with SandboxServer(home, rate_limit=None) as uk1, SandboxServer(other, rate_limit=None) as au1:
        urls = {s: NOWHERE for s in SHARDS} | {"uk1": uk1.base_url, "au1": au1.base_url}
        yield home, urls.__getitem__


@pytest.fixture
def postmark():
    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


@pytest.fixture
def twilio():
    sandbox = TwilioSandbox()
    sandbox.services[SERVICE_SID] = "Acme reminders"
    sandbox.service_senders[SERVICE_SID] = ["+61400000000"]  # its Sender Pool
    with sandbox.serve() as server:
        sandbox.url = server.url
        yield sandbox


def failure(call, *args, **kwargs) -> ConnectFailed:
    with pytest.raises(ConnectFailed) as caught:
        call(*args, **kwargs)
    return caught.value


# -- Cliniko -------------------------------------------------------------------------------------


def test_cliniko_good_key_reads_the_business_and_appointment_types(cliniko):
    clinic, urls = cliniko
    facts = verify_cliniko(clinic.api_key, CONTACT, urls=urls)
    assert facts.shard == "uk1"
    business = facts.businesses[0]
    assert business.time_zone and business.country and business.name
    assert facts.appointment_types and facts.categories


def test_cliniko_bad_key_is_a_401_explained(cliniko):
    clinic, urls = cliniko
    err = failure(verify_cliniko, "sbx" + "f" * 32 + "-uk1", CONTACT, urls=urls)
    assert err.problem == "bad_key"
    assert "401" in str(err) and "Manage API keys" in str(err)


def test_cliniko_key_without_its_suffix_is_the_wrong_shard_and_names_the_right_one(cliniko):
    clinic, urls = cliniko
    body = clinic.api_key.rsplit("-", 1)[0]
    for key in (body, body + "-au1"):  # no suffix means au1; a wrong suffix likewise
        err = failure(verify_cliniko, key, CONTACT, urls=urls)
        assert err.problem == "wrong_shard", str(err)
        assert "-uk1" in str(err)
        assert body not in str(err)  # the key itself is never in a message


@pytest.mark.parametrize("home", ["au4", "uk2"])
def test_cliniko_wrong_shard_is_found_on_every_shard_cliniko_lists(home):
    """docs.api.cliniko.com lists au1-au4, ca1, uk1, uk2 and eu1: a key without its suffix (sent
    to au1) whose account lives on au4 or uk2 is the wrong shard, not a bad key."""
    clinic = SandboxClinic.generate(seed=7, patients=3, appointments_per_patient=1, shard=home)
    other = SandboxClinic.generate(seed=8, patients=3, appointments_per_patient=1)
    with (
        SandboxServer(clinic, rate_limit=None) as there,
        SandboxServer(other, rate_limit=None) as au1,
    ):
        urls = {s: NOWHERE for s in (*SHARDS, home)} | {"au1": au1.base_url, home: there.base_url}
        body = clinic.api_key.rsplit("-", 1)[0]
        err = failure(verify_cliniko, body, CONTACT, urls=urls.__getitem__)
    assert err.problem == "wrong_shard", str(err)
    assert f"-{home}" in str(err)


@pytest.mark.parametrize(
    "access, named",
    [
        ({"denied": ("patients",)}, "patients"),
        ({"not_found": ("appointment_types",)}, "appointment_types"),
        (
            {"denied": ("individual_appointments", "attendees")},
            "individual_appointments, attendees",
        ),
        ({"denied": ("businesses",)}, "businesses"),
    ],
)
def test_cliniko_user_without_permission_is_told_what_it_cannot_read(cliniko, access, named):
    clinic, urls = cliniko
    key = clinic.add_key(f"sbx{zlib.crc32(named.encode()):032x}-uk1", **access)
    err = failure(verify_cliniko, key, CONTACT, urls=urls)
    assert err.problem == "missing_permission"
    assert named in str(err)


def test_cliniko_placeholder_contact_is_refused_before_any_request(cliniko):
    clinic, urls = cliniko
    assert failure(verify_cliniko, clinic.api_key, "ops@localhost", urls=urls).problem == (
        "bad_contact"
    )


def test_cliniko_unreachable_host_says_so(cliniko):
    clinic, _ = cliniko
    err = failure(verify_cliniko, clinic.api_key, CONTACT, urls=lambda _s: NOWHERE)
    assert err.problem == "unreachable"


def test_cliniko_key_with_a_suffix_naming_no_shard_says_so_not_check_the_network(cliniko):
    """A mistyped suffix (-au5, -xx1) sends the key to a host that does not exist: connect said
    only "did not answer ... Check the network", though the network was fine."""
    clinic, urls = cliniko
    body = clinic.api_key.rsplit("-", 1)[0]
    err = failure(verify_cliniko, body + "-au5", CONTACT,
                  urls=lambda s: urls(s) if s in SHARDS else NOWHERE)  # fmt: skip
    assert err.problem == "unknown_shard", str(err)
    assert "-au5" in str(err) and "uk1" in str(err) and body not in str(err)


# -- Postmark ------------------------------------------------------------------------------------


def test_postmark_good_token_and_streams(postmark):
    facts = verify_postmark(postmark.server_token, base_url=postmark.url)
    assert facts.server_name == "Sandbox Clinic"
    # a server's inbound stream (every server has one) is listed, and is no sending stream
    assert facts.streams == {
        "broadcast": "Broadcasts", "inbound": "Inbound", "outbound": "Transactional"
    }  # fmt: skip
    assert facts.marketing_unsubscribes == "Postmark"


def test_postmark_bad_token_is_error_code_10_explained(postmark):
    err = failure(verify_postmark, "not-the-token", base_url=postmark.url)
    assert err.problem == "bad_token"
    assert "ErrorCode 10" in str(err) and "Server API token" in str(err)
    assert "not-the-token" not in str(err)


def test_postmark_missing_stream_lists_the_streams_there(postmark):
    err = failure(verify_postmark, postmark.server_token, "outbound", "newsletter",
                  base_url=postmark.url)  # fmt: skip
    assert err.problem == "missing_stream"
    assert "'newsletter'" in str(err) and "broadcast (Broadcasts)" in str(err)


def test_postmark_archived_stream_is_missing(postmark):
    postmark.archived_streams["broadcast"] = "2026-11-01T00:00:00-05:00"
    err = failure(verify_postmark, postmark.server_token, base_url=postmark.url)
    assert err.problem == "missing_stream" and "archived" in str(err)


def test_postmark_marketing_on_a_transactional_stream_is_refused(postmark):
    postmark.streams["promos"] = ("Transactional", "None")
    err = failure(verify_postmark, postmark.server_token, "outbound", "promos",
                  base_url=postmark.url)  # fmt: skip
    assert err.problem == "wrong_stream_type" and "Broadcasts" in str(err)


def test_postmark_sandbox_server_is_refused(postmark):
    # a server created with Delivery type "Sandbox" accepts every email and delivers none (its
    # activity even shows them Delivered), and the type cannot be changed: connect passed it and
    # every reminder then went nowhere while the ledger said sent
    postmark.delivery_type = "Sandbox"
    err = failure(verify_postmark, postmark.server_token, base_url=postmark.url)
    assert err.problem == "sandbox_server"
    assert "Sandbox" in str(err) and "Live" in str(err) and "Sandbox Clinic" in str(err)


@pytest.mark.parametrize("fault, status", [("5xx", "503"), ("500", "500")])
def test_postmark_server_error_says_postmark_answered_it(postmark, fault, status):
    # Postmark's documented 500 and 503 (planned maintenance) were told as "no answer from ...;
    # check the network": the operator looked for a network fault that was not there
    postmark.faults.add(fault, path_prefix="/server")
    err = failure(verify_postmark, postmark.server_token, base_url=postmark.url)
    assert err.problem == "unavailable"
    assert f"answered {status}" in str(err) and "no answer" not in str(err)
    assert "try again" in str(err)


@pytest.mark.parametrize("streams", [("inbound", "broadcast"), ("outbound", "inbound")])
def test_postmark_the_inbound_stream_sends_nothing(postmark, streams):
    err = failure(verify_postmark, postmark.server_token, *streams, base_url=postmark.url)
    assert err.problem == "wrong_stream_type" and "Inbound" in str(err)


# -- Twilio --------------------------------------------------------------------------------------


def test_twilio_good_account_and_owned_number(twilio):
    facts = verify_twilio(ACCOUNT_SID, AUTH_TOKEN, "+61400000000", base_url=twilio.url)
    assert facts.sender_kind == "number" and facts.account_type == "Full"


def test_twilio_bad_credentials_are_20003_explained(twilio):
    err = failure(verify_twilio, ACCOUNT_SID, "wrong-token", "+61400000000", base_url=twilio.url)
    assert err.problem == "bad_credentials" and "20003" in str(err)
    assert "wrong-token" not in str(err)


def test_twilio_test_credentials_are_explained(twilio):
    # the Console shows the Test credentials beside the Live ones; with them every read connect
    # makes is 403, code 20008, which connect printed bare ("Twilio answered 403 (code 20008)")
    twilio.test_credentials = (TEST_SID, "test-token")
    err = failure(verify_twilio, TEST_SID, "test-token", "+61400000000", base_url=twilio.url)
    assert err.problem == "test_credentials"
    assert "20008" in str(err) and "Test credentials" in str(err) and "Live" in str(err)
    assert "test-token" not in str(err)


def test_twilio_number_not_owned_by_the_account(twilio):
    err = failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "+61499999999", base_url=twilio.url)
    assert err.problem == "sender_not_owned" and "+61499999999" in str(err)


def test_twilio_voice_only_number_cannot_send(twilio):
    twilio.numbers["+61300000000"] = False
    err = failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "+61300000000", base_url=twilio.url)
    assert err.problem == "sender_not_owned" and "SMS" in str(err)


def test_twilio_messaging_service_not_found_is_20404(twilio):
    err = failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "MG" + "b" * 32, base_url=twilio.url)
    assert err.problem == "service_not_found" and "20404" in str(err)


def test_twilio_messaging_service_of_the_account(twilio):
    facts = verify_twilio(ACCOUNT_SID, AUTH_TOKEN, SERVICE_SID, base_url=twilio.url)
    assert facts.sender_kind == "messaging_service"


@pytest.mark.parametrize("pool", [["+61400000000"], ["ACME"], ["12345"]])
def test_twilio_messaging_service_with_any_sender_passes(twilio, pool):
    twilio.service_senders[SERVICE_SID] = pool  # a number, an alphanumeric ID, a short code
    facts = verify_twilio(ACCOUNT_SID, AUTH_TOKEN, SERVICE_SID, base_url=twilio.url)
    assert facts.sender_kind == "messaging_service"


def test_twilio_messaging_service_without_senders_is_refused(twilio):
    # a service just made in the Console has an empty Sender Pool: connect said all was well and
    # every SMS then failed at Twilio
    twilio.service_senders[SERVICE_SID] = []
    err = failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, SERVICE_SID, base_url=twilio.url)
    assert err.problem == "service_without_senders"
    assert "Sender Pool" in str(err) and "Acme reminders" in str(err)


def test_twilio_suspended_account(twilio):
    twilio.account_status = "suspended"
    err = failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "+61400000000", base_url=twilio.url)
    assert err.problem == "account_inactive"


def test_twilio_alphanumeric_sender_checked_for_form_and_country(twilio):
    facts = verify_twilio(ACCOUNT_SID, AUTH_TOKEN, "AcmePhysio", country="AU",
                          base_url=twilio.url)  # fmt: skip
    assert facts.sender_kind == "alphanumeric" and facts.notes
    assert failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "AcmePhysio", country="US",
                   base_url=twilio.url).problem == "bad_sender"  # fmt: skip
    assert failure(verify_twilio, ACCOUNT_SID, AUTH_TOKEN, "Acme Physio Clinic",
                   base_url=twilio.url).problem == "bad_sender"  # fmt: skip


# -- The command, checks only (no Prefect needed) -------------------------------------------------


def clinic_business(clinic) -> str:
    return "melbourne physio & pilates"  # by name, any case: the sandbox's first business


def _args(cliniko, postmark, twilio, *extra: str) -> list[str]:
    clinic, urls = cliniko
    return [
        "connect", "acme", "--cliniko-key", clinic.api_key, "--contact-email", CONTACT,
        "--business", clinic_business(clinic),
        "--cliniko-base-url", urls("uk1"), "--postmark-token", postmark.server_token,
        "--from-address", "Acme Physio <hello@acme-physio.com.au>",
        "--postmark-base-url", postmark.url, "--twilio-sid", ACCOUNT_SID,
        "--twilio-token", AUTH_TOKEN, "--sender", "+61400000000", "--twilio-base-url", twilio.url,
        *extra,
    ]  # fmt: skip


def test_connect_check_only_passes_and_writes_nothing(cliniko, postmark, twilio, tmp_path,
                                                      monkeypatch):  # fmt: skip
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, _args(cliniko, postmark, twilio, "--check-only"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Every check passed" in result.output
    assert list(tmp_path.iterdir()) == []
    for secret in (cliniko[0].api_key, postmark.server_token, AUTH_TOKEN):
        assert secret not in result.output


@pytest.mark.parametrize("sender", ["MGPhysio", "AcmePhysio"])
def test_connect_takes_an_alphanumeric_sender_id_even_one_starting_with_mg(
    cliniko, postmark, twilio, tmp_path, monkeypatch, sender
):
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    args = _args(cliniko, postmark, twilio, "--check-only")
    args[args.index("--sender") + 1] = sender
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "sender: alphanumeric" in result.output and "Every check passed" in result.output


@pytest.mark.parametrize("handling", ["Postmark", "Custom"])
def test_connect_says_who_handles_unsubscribes_and_the_file_advises_by_it(
    cliniko, postmark, twilio, tmp_path, monkeypatch, handling
):
    """The marketing stream's UnsubscribeHandlingType, read over HTTP, is printed and decides
    what the written clinic.yaml says of providers.unsubscribe_url (blocks not saved here: the
    Prefect test below saves them)."""
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.config import load_clinic

    postmark.set_unsubscribe_handling("broadcast", handling)
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    monkeypatch.setattr("relay.cli.connect._save_blocks", lambda blocks, force: None)
    result = CliRunner().invoke(app, _args(cliniko, postmark, twilio))
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = tmp_path / "acme" / "clinic.yaml"
    text = path.read_text(encoding="utf-8")
    load_clinic(path)
    said = f"(UnsubscribeHandlingType {handling})"
    if handling == "Postmark":
        assert f"unsubscribes on 'broadcast': Postmark handles them {said}" in result.output
        assert "providers.unsubscribe_url is unused" in result.output
        assert "# ^ unsubscribe_url: not used by marketing email. Postmark handles" in text
        assert "before any" not in text.split("# ^ unsubscribe_url")[1].split("\n\n")[0]
    else:
        assert f"unsubscribes on 'broadcast': relay handles them {said}" in result.output
        assert "make `relay serve-unsubscribe`" in result.output
        assert "# ^ unsubscribe_url: relay handles unsubscribes on stream 'broadcast'" in text
        assert "before any marketing email goes out" in text
    assert all(len(line) <= 100 for line in result.output.splitlines() if "unsub" in line)


def test_connect_stops_at_the_first_failed_check_and_writes_nothing(cliniko, postmark, twilio,
                                                                    tmp_path, monkeypatch):  # fmt: skip
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    args = _args(cliniko, postmark, twilio)
    args[args.index("--sender") + 1] = "+61499999999"
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConnectFailed)
    assert result.exception.problem == "sender_not_owned"
    assert list(tmp_path.iterdir()) == []


def test_connect_asks_for_what_is_not_given_and_echoes_no_secret(cliniko, postmark, twilio,
                                                                 tmp_path, monkeypatch):  # fmt: skip
    from typer.testing import CliRunner

    import relay.cli.connect as connect
    from relay.cli import app

    clinic, urls = cliniko
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    for name in ("CLINIKO_API_KEY", "POSTMARK_SERVER_TOKEN", "TWILIO_ACCOUNT_SID",
                 "TWILIO_AUTH_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(connect, "_interactive", lambda: True)
    answers = [clinic.api_key, CONTACT, postmark.server_token, "Acme <hello@acme-physio.com.au>",
               ACCOUNT_SID, AUTH_TOKEN, "+61400000000", clinic_business(clinic)]  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["connect", "acme", "--check-only", "--cliniko-base-url", urls("uk1"),
         "--postmark-base-url", postmark.url, "--twilio-base-url", twilio.url],
        input="\n".join(answers) + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Cliniko API key" in result.output and "Which business" in result.output
    for secret in (clinic.api_key, postmark.server_token, AUTH_TOKEN):
        assert secret not in result.output


def test_connect_asks_again_for_a_business_it_does_not_know(cliniko, tmp_path, monkeypatch):
    """At the prompt, a business that matches none (a typo, part of a name) is asked for again
    with the list: it used to end the whole run, after every answer and check, telling a person
    at a terminal to pass --business."""
    from typer.testing import CliRunner

    import relay.cli.connect as connect
    from relay.cli import app

    clinic, urls = cliniko
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    monkeypatch.delenv("CLINIKO_API_KEY", raising=False)
    monkeypatch.setattr(connect, "_interactive", lambda: True)
    answers = [clinic.api_key, CONTACT, "melbourne", clinic_business(clinic)]
    result = CliRunner().invoke(
        app,
        ["connect", "acme", "--check-only", "--no-email", "--no-sms",
         "--cliniko-base-url", urls("uk1")],
        input="\n".join(answers) + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.count("Which business") == 2
    assert "no business 'melbourne'" in result.output and "--business" not in result.output
    assert "Every check passed" in result.output


def test_connect_without_a_terminal_names_the_missing_flag(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    monkeypatch.delenv("CLINIKO_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["connect", "acme", "--no-email", "--no-sms"])
    assert result.exit_code == 2 and "Cliniko API key" in result.output
    result = CliRunner().invoke(app, ["connect", "Acme Physio", "--no-email", "--no-sms"])
    assert result.exit_code == 2 and "lowercase letters" in result.output


def test_connect_refuses_a_value_the_blocks_refuse_before_any_request(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    args = ["connect", "acme", "--no-email", "--cliniko-key", "k-au1", "--contact-email", CONTACT,
            "--cliniko-base-url", NOWHERE, "--twilio-sid", "SK" + "0" * 32, "--twilio-token",
            "secret-token", "--sender", "+61400000000"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "acme-twilio: account_sid" in result.output
    assert "secret-token" not in result.output and "Checking" not in result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "An API key SID (SK...) is not an account SID" in said  # plain words, not a regex


@pytest.mark.parametrize("base", [[], ["--cliniko-base-url", "https://proxy.acme.com.au/v1"]])
def test_connect_refuses_a_placeholder_contact_naming_its_flag(tmp_path, monkeypatch, base):
    """A real clinic's connect (no sandbox URL): the block's own wording told the user to set
    contact_email in the ClinikoAccount block or CLINIKO_CONTACT, neither of which connect
    reads; connect's message names --contact-email and why Cliniko needs a real address."""
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    args = ["connect", "acme", "--no-email", "--no-sms", "--cliniko-key", "k-au1",
            "--contact-email", "ops@localhost", "--check-only", *base]  # fmt: skip
    result = CliRunner().invoke(app, args)  # relay's main() prints a ConnectFailed, exit 2
    assert isinstance(result.exception, ConnectFailed), result.output
    assert result.exception.problem == "bad_contact"
    said = str(result.exception)
    assert "--contact-email" in said and "User-Agent" in said and "'@localhost'" in said
    assert "CLINIKO_CONTACT" not in said and "Checking" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--cliniko-key", "--postmark-token", "--twilio-token"])
def test_connect_refuses_a_secret_pasted_with_an_invisible_character_before_any_request(
    tmp_path, monkeypatch, flag
):
    """A zero-width space copied with a token: Postmark's header (latin-1) died of a
    UnicodeEncodeError traceback, and Cliniko's key was called a bad key with no suffix."""
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    values = {"--cliniko-key": "k-au1", "--postmark-token": "pm-token",
              "--twilio-token": "tw-token"}  # fmt: skip
    values[flag] += "\u200b"
    args = ["connect", "acme", "--contact-email", CONTACT, "--cliniko-base-url", NOWHERE,
            "--from-address", "Acme <hello@acme-physio.com.au>", "--twilio-sid",
            "AC" + "0" * 32, "--sender", "+61400000000"]  # fmt: skip
    for name, value in values.items():
        args += [name, value]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "not plain ASCII" in said and "Checking" not in result.output
    assert values[flag] not in result.output


@pytest.mark.parametrize(
    "sender",
    ["hello", "Acme Physio", "hello@acme", "Acme <hello@>",
     "hello@acme.com.au, info@acme.com.au", "Acme <hello@acme.com.au",
     "Acme Physio, Bondi <hello@acme.com.au>"],
)  # fmt: skip
def test_connect_refuses_a_from_that_is_no_address_before_any_request(
    tmp_path, monkeypatch, sender
):
    """Postmark refuses every email from such a From: connect says so, not 'every check passed'."""
    from typer.testing import CliRunner

    from relay.cli import app

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    args = ["connect", "acme", "--no-sms", "--cliniko-key", "k-au1", "--contact-email", CONTACT,
            "--cliniko-base-url", NOWHERE, "--postmark-token", "pm-secret", "--from-address",
            sender, "--check-only"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "acme-postmark: from_address" in result.output and "Checking" not in result.output
    assert "pm-secret" not in result.output


# -- The command, saving (a throwaway Prefect API: the test harness) ------------------------------


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.prefect
def test_connect_saves_blocks_and_writes_a_clinic_yaml_that_loads(
    cliniko, postmark, twilio, tmp_path, monkeypatch, prefect_api
):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from blocks.cliniko import ClinikoAccount
    from blocks.postmark import PostmarkServer
    from blocks.twilio import TwilioAccount
    from relay.cli import app
    from tasks.config import load_clinic

    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, _args(cliniko, postmark, twilio))
    assert result.exit_code == 0, result.output + repr(result.exception)
    # the sandbox account has several businesses: reminders of the others would go out with the
    # chosen one's name, address and phone, and connect said nothing of it
    output = " ".join(result.output.split())
    assert "businesses are synced" in output and "{{ appointment.business }}" in output
    assert "those of 'Melbourne Physio & Pilates'" in output and "`businesses:`" in output

    path = tmp_path / "acme" / "clinic.yaml"
    text = path.read_text(encoding="utf-8")
    for secret in (cliniko[0].api_key, postmark.server_token, AUTH_TOKEN):
        assert secret not in text and secret not in result.output
    cfg = load_clinic(path)
    business = verify_cliniko(cliniko[0].api_key, CONTACT, urls=cliniko[1]).businesses[0]
    assert (cfg.time_zone, cfg.country) == (business.time_zone, business.country)
    assert cfg.triggers and not any(t.enabled for t in cfg.triggers)
    assert cfg.journeys == [] and cfg.campaigns == []
    assert (cfg.cliniko.account, cfg.providers.email, cfg.providers.sms) == (
        "acme-cliniko", "acme-postmark", "acme-twilio"
    )  # fmt: skip
    raw = yaml.safe_load(text)
    assert raw["providers"]["sender"]["email"] == "hello@acme-physio.com.au"
    assert "# Appointment types in Cliniko" in text

    account = ClinikoAccount.load("acme-cliniko")
    assert account.api_key.get_secret_value() == cliniko[0].api_key
    assert account.contact_email == CONTACT
    server = PostmarkServer.load("acme-postmark")
    assert (server.transactional_stream, server.marketing_stream) == ("outbound", "broadcast")
    assert server.server_token.get_secret_value() == postmark.server_token
    sms = TwilioAccount.load("acme-twilio")
    assert (sms.from_number, sms.messaging_service_sid) == ("+61400000000", None)

    # `relay clinics` (a fresh process, as an operator runs it) loads the written file cleanly
    relay = Path(sys.executable).with_name("relay")
    env = {**os.environ, "RELAY_CLINICS_DIR": str(tmp_path)}
    listed = subprocess.run([str(relay), "clinics"], capture_output=True, text=True, timeout=120,
                            env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "acme:" in listed.stdout

    # a second connect does not replace the clinic's file or blocks unless told to
    again = CliRunner().invoke(app, _args(cliniko, postmark, twilio))
    assert isinstance(again.exception, ConnectFailed) and again.exception.problem == "exists"
    kept = path.read_text(encoding="utf-8")
    path.unlink()  # the file gone, the blocks still saved: none is replaced, no file written
    again = CliRunner().invoke(app, _args(cliniko, postmark, twilio))
    assert isinstance(again.exception, ConnectFailed) and again.exception.problem == "block_exists"
    assert "acme-cliniko, acme-postmark, acme-twilio" in str(again.exception)
    assert not path.exists() and list(path.parent.iterdir()) == []
    path.write_text(kept, encoding="utf-8")
    args = _args(cliniko, postmark, twilio, "--force")
    args[args.index("--sender") + 1] = SERVICE_SID
    forced = CliRunner().invoke(app, args)
    assert forced.exit_code == 0, forced.output + repr(forced.exception)
    assert TwilioAccount.load("acme-twilio").messaging_service_sid == SERVICE_SID
