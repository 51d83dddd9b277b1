"""The first clinic.yaml `relay connect` writes: loads cleanly, everything off, no secrets."""

from __future__ import annotations

import pytest

from tasks.config import load_clinic
from tasks.connect import ConnectFailed
from tasks.connect.clinic_file import Accounts, pick_business, render_clinic_yaml
from tasks.connect.cliniko import Business, ClinikoFacts

SYDNEY = Business(id="11", name="Acme Physio: Bondi", time_zone="Australia/Sydney",
                  country="au", reply_to="desk@acme.com.au", website="https://acme.com.au",
                  address="1 Campbell Pde, Bondi")  # fmt: skip
LONDON = Business(id="12", name="Acme London", time_zone="Europe/London", country="GB")
FACTS = ClinikoFacts(
    shard="au2", user_id="7", businesses=[SYDNEY, LONDON],
    appointment_types=[("Initial Consult #1", "Physio"), ("Dummy\nTag", "Admin Only"),
                       ("Phone call", None)],
)  # fmt: skip


def write(tmp_path, accounts: Accounts, business: Business = SYDNEY):
    path = tmp_path / "acme" / "clinic.yaml"
    path.parent.mkdir()
    path.write_text(render_clinic_yaml("acme", None, business, FACTS, accounts), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "accounts",
    [
        Accounts("acme-cliniko", "acme-postmark", "acme-twilio", "Acme <hi@acme.com.au>"),
        Accounts("acme-cliniko", "acme-postmark", "outbox", "hi@acme.com.au"),
        Accounts("acme-cliniko", "outbox", "acme-twilio"),
        Accounts("acme-cliniko"),
    ],
)
def test_written_file_loads_with_every_trigger_off(tmp_path, accounts):
    cfg = load_clinic(write(tmp_path, accounts))
    assert (cfg.time_zone, cfg.country, cfg.name) == ("Australia/Sydney", "AU", SYDNEY.name)
    assert cfg.triggers and not any(t.enabled for t in cfg.triggers)
    assert cfg.journeys == [] and cfg.campaigns == []
    assert cfg.cliniko.account == "acme-cliniko"
    assert (cfg.providers.email, cfg.providers.sms) == (accounts.email, accounts.sms)
    channels = {t.channel for t in cfg.triggers}
    assert "sms" not in channels or accounts.sms != "outbox" or accounts.email == "outbox"


def test_appointment_types_and_categories_are_listed_one_per_line(tmp_path):
    text = write(tmp_path, Accounts("acme-cliniko")).read_text(encoding="utf-8")
    assert "#   Initial Consult #1: Physio" in text
    assert "#   Dummy Tag: Admin Only" in text  # a newline in a name stays inside the comment
    assert "#   Phone call: (no category)" in text
    assert "# Categories: Admin Only, Physio" in text


def test_business_without_time_zone_is_explained():
    bare = Business(id="13", name="No TZ", time_zone=None, country="AU")
    with pytest.raises(ConnectFailed) as caught:
        render_clinic_yaml("acme", None, bare, FACTS, Accounts("acme-cliniko"))
    assert caught.value.problem == "incomplete_business" and "time zone" in str(caught.value)


def test_pick_business_by_id_or_name_or_asks():
    assert pick_business(FACTS, "12") is LONDON
    assert pick_business(FACTS, "acme physio: bondi") is SYDNEY
    with pytest.raises(ConnectFailed) as caught:
        pick_business(FACTS, None)
    assert "--business" in str(caught.value) and "12 (Acme London)" in str(caught.value)
    one = ClinikoFacts(shard="au1", user_id="1", businesses=[LONDON])
    assert pick_business(one, None) is LONDON


def _unsubscribe_note(text: str) -> str:
    """The comment under providers.unsubscribe_url, as one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ^ unsubscribe_url"))
    note = [lines[start]]
    note += [line for line in lines[start + 1 :] if line.startswith("#   ")][:6]
    return " ".join(" ".join(line.lstrip("#^ ").split()) for line in note)


POSTMARK = Accounts("acme-cliniko", "acme-postmark", "acme-twilio", "Acme <hi@acme.com.au>")


def test_with_postmark_handling_unsubscribes_the_file_says_our_link_is_not_used():
    text = render_clinic_yaml("acme", None, SYDNEY, FACTS, POSTMARK, unsubscribes="Postmark",
                              marketing_stream="news")  # fmt: skip
    note = _unsubscribe_note(text)
    assert "not used by marketing email" in note
    assert "Postmark handles unsubscribes on stream 'news'" in note
    assert "before any marketing email goes out" not in note
    assert "switches the stream to Custom" in note  # when our link would start being used


@pytest.mark.parametrize("handling", ["Custom", "None", None])
def test_with_our_own_unsubscribes_the_file_says_to_make_the_link_public(handling):
    text = render_clinic_yaml("acme", None, SYDNEY, FACTS, POSTMARK, unsubscribes=handling)
    note = _unsubscribe_note(text)
    assert "relay handles unsubscribes on stream 'broadcast'" in note
    assert f"UnsubscribeHandlingType: {handling or 'not given'}" in note
    assert "public address of `relay serve-unsubscribe` before any marketing email" in note


def test_with_email_in_the_outbox_the_link_is_ours():
    text = render_clinic_yaml("acme", None, SYDNEY, FACTS, Accounts("acme-cliniko"))
    assert "public address of `relay serve-unsubscribe` before any" in _unsubscribe_note(text)
    assert "Postmark" not in _unsubscribe_note(text)


def test_the_file_says_the_phone_is_for_the_owner_to_set(tmp_path):
    """Cliniko's business has no phone field (contact_information is free text), so connect
    cannot fill providers.sender.phone, which the reminder, welcome and recall print: the file
    says so beside it, where the owner reads it, instead of leaving `phone: ''` to three
    warnings in `relay clinics`."""
    path = write(tmp_path, Accounts("acme-cliniko", "acme-postmark", "acme-twilio", "hi@acme.au"))
    text = path.read_text(encoding="utf-8")
    assert load_clinic(path).providers.sender.phone == ""
    assert "# ^ sender.phone:" in text and "no phone field" in text
