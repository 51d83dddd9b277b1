"""blocks/cliniko.py: the ClinikoAccount block refuses a placeholder contact (Cliniko needs an
address it can reach before it blocks a key), here and on the environment path."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks.cliniko import ClinikoAccount
from blocks.resolve import cliniko_account
from tasks.config import ClinicConfig
from tasks.errors import UserFacingError

ENV = ClinicConfig(clinic="t", name="T", cliniko={"account": "env"})


@pytest.mark.parametrize("contact", ["ops@localhost", "ops@clinic.example", "it@example.com", ""])
def test_the_block_refuses_a_placeholder_contact_and_says_why(contact):
    with pytest.raises(ValidationError, match="may block") as refused:
        ClinikoAccount(api_key=SecretStr("key-au2"), contact_email=contact)
    assert "User-Agent" in str(refused.value)


def test_the_block_takes_a_real_contact_and_the_sandbox_takes_any():
    real = ClinikoAccount(api_key=SecretStr("key-au2"), contact_email="it@acmephysio.com.au")
    assert real.contact_email == "it@acmephysio.com.au"
    sandbox = ClinikoAccount(
        api_key=SecretStr("key-au2"), contact_email="demo@localhost", base_url="http://127.0.0.1:1"
    )
    assert sandbox.get_client().base_url == "http://127.0.0.1:1"


def test_the_environment_path_refuses_a_missing_or_placeholder_contact(monkeypatch):
    monkeypatch.setenv("CLINIKO_API_KEY", "key-au2")
    monkeypatch.delenv("CLINIKO_BASE_URL", raising=False)
    monkeypatch.delenv("CLINIKO_CONTACT", raising=False)
    with pytest.raises(UserFacingError, match="contact is empty.*CLINIKO_CONTACT"):
        cliniko_account(ENV)
    monkeypatch.setenv("CLINIKO_CONTACT", "ops@localhost")
    with pytest.raises(UserFacingError, match="'ops@localhost'.*may block"):
        cliniko_account(ENV)
    monkeypatch.setenv("CLINIKO_CONTACT", "it@acmephysio.com.au")
    assert cliniko_account(ENV).contact_email == "it@acmephysio.com.au"


def test_the_demo_environment_against_the_sandbox_needs_no_real_contact(monkeypatch):
    monkeypatch.setenv("CLINIKO_API_KEY", "key-au2")
    monkeypatch.setenv("CLINIKO_BASE_URL", "http://127.0.0.1:8765/v1")
    monkeypatch.setenv("CLINIKO_CONTACT", "demo@localhost")  # what relay demo sets
    assert cliniko_account(ENV).contact_email == "demo@localhost"


@pytest.mark.parametrize("value", ["abc", "0", "-5", "199.5"])
def test_the_environment_path_names_a_rate_limit_that_is_no_whole_number_above_0(
    monkeypatch, value
):
    monkeypatch.setenv("CLINIKO_API_KEY", "key-au2")
    monkeypatch.setenv("CLINIKO_CONTACT", "it@acmephysio.com.au")
    monkeypatch.setenv("CLINIKO_REQUESTS_PER_MINUTE", value)
    with pytest.raises(UserFacingError, match=f"CLINIKO_REQUESTS_PER_MINUTE is '{value}'"):
        cliniko_account(ENV)
    monkeypatch.setenv("CLINIKO_REQUESTS_PER_MINUTE", " 150 ")
    assert cliniko_account(ENV).requests_per_minute == 150
    monkeypatch.setenv("CLINIKO_REQUESTS_PER_MINUTE", "")  # set empty: as unset, Cliniko's 200
    assert cliniko_account(ENV).requests_per_minute == 200
