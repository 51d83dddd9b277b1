"""Trigger configuration: what a clinic may write, and errors that name the file, trigger and field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, load_clinic
from tasks.triggers.definition import Trigger

REMINDER = {
    "name": "sms-reminder",
    "event": "before_appointment",
    "timing": "24 hours before",
    "channel": "sms",
    "template": "reminder-24h",
    "purpose": "transactional",
}


def write_clinic(folder: Path, triggers: list[dict]) -> Path:
    path = folder / "clinic.yaml"
    path.write_text(
        yaml.safe_dump({"clinic": "test", "name": "Test Physio", "triggers": triggers}),
        encoding="utf-8",
    )
    return path


def load_error(folder: Path, triggers: list[dict]) -> str:
    with pytest.raises(ConfigError) as err:
        load_clinic(write_clinic(folder, triggers))
    return str(err.value)


def test_the_demo_clinic_has_the_example_triggers():
    triggers = {t.name: t for t in load_clinic("demo").triggers}
    assert set(triggers) == {"welcome-insurance", "sms-reminder-24h", "recall-initial-consult",
                             "welcome-insurance-alert", "invoice-thanks"}  # fmt: skip
    alert = triggers["welcome-insurance-alert"]
    assert (alert.event, alert.filters.medical_alerts, alert.purpose) == (
        "medical_alert_added", ("Insurance patient",), "transactional")  # fmt: skip
    thanks = triggers["invoice-thanks"]
    assert (thanks.event, thanks.channel, thanks.purpose) == (
        "invoice_paid", "email", "transactional")  # fmt: skip
    welcome = triggers["welcome-insurance"]
    assert (welcome.event, welcome.offset) == ("appointment_booked", timedelta(minutes=5))
    assert welcome.filters.appointment_types == ("Admin - Insurance Patient",)
    reminder = triggers["sms-reminder-24h"]
    assert (reminder.direction, reminder.offset, reminder.channel) == (
        "before",
        timedelta(days=1),
        "sms",
    )
    assert reminder.exclude.categories == ("Admin Only",) and reminder.honours_reminder_preference
    recall = triggers["recall-initial-consult"]
    assert (recall.offset, recall.purpose) == (timedelta(weeks=6), "marketing")
    assert recall.filters.no_future_appointment


@pytest.mark.parametrize(
    ("timing", "direction", "offset"),
    [
        ("immediately", "after", timedelta(0)),
        ("5 minutes after", "after", timedelta(minutes=5)),
        ("1 hour after", "after", timedelta(hours=1)),
        ("24 Hours before", "before", timedelta(hours=24)),
        ("3 days before", "before", timedelta(days=3)),
        ("6 weeks after", "after", timedelta(weeks=6)),
    ],
)
def test_timings(timing, direction, offset):
    event = "before_appointment" if direction == "before" else "appointment_booked"
    trigger = Trigger(**{**REMINDER, "event": event, "timing": timing})
    assert (trigger.direction, trigger.offset) == (direction, offset)


def test_a_trigger_is_off_until_switched_on():
    assert Trigger(**REMINDER).enabled is False


def test_an_error_names_the_file_the_trigger_and_the_field(tmp_path):
    message = load_error(tmp_path, [REMINDER, {**REMINDER, "name": "second", "timing": "soon"}])
    assert str(tmp_path / "clinic.yaml") in message
    assert "trigger 'second' (entry 2): timing: " in message
    assert "'soon' is not a timing" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"timing": "24 hours after"}, "timing: before_appointment needs a timing 'N ... before'"),
        ({"event": "cancelled"}, "timing: cancelled happens first and the message after it"),
        ({"channel": "fax"}, "channel: Input should be 'email' or 'sms'"),
        ({"purpose": "promo"}, "purpose: Input should be 'transactional' or 'marketing'"),
        ({"filter": {}}, "filter: unknown setting"),
        ({"last_minute": "later"}, "last_minute: Input should be 'send' or 'skip'"),
        ({"grace": "forever"}, "grace: Value error, 'forever' is not a duration"),
        ({"event": "nth_appointment"}, "n: n (which appointment"),
        ({"name": "Has Spaces"}, "name: String should match pattern"),
        ({"filters": {"age": {"min": 70, "max": 18}}}, "filters.age: Value error, min (70)"),
        (
            {"event": "patient_created", "timing": "immediately",
             "filters": {"appointment_types": ["Initial"]}},
            "filters.appointment_types: patient_created has no appointment to filter on",
        ),
        (
            {"filters": {"not_rebooked_since_cancelling": True}},
            "filters.not_rebooked_since_cancelling: goes with cancelled or did_not_arrive",
        ),
        # named in filters and exclusions both: the trigger could never fire, and nothing said
        (
            {"filters": {"businesses": ["North Clinic"]},
             "exclude": {"businesses": [" north clinic"]}},
            "exclude.businesses: 'north clinic' is in filters.businesses too: the trigger would "
            "never fire",
        ),
        (
            {"event": "medical_alert_added", "timing": "5 minutes after",
             "filters": {"medical_alerts": ["VIP"]}, "exclude": {"medical_alerts": ["vip"]}},
            "exclude.medical_alerts: 'vip' is in filters.medical_alerts too",
        ),
        (
            {"filters": {"custom_fields": [{"section": "Insurance coverage", "field": "Provider",
                                            "values": ["Medibank", "Bupa"]}]},
             "exclude": {"custom_fields": [{"field": "provider ", "values": ["MEDIBANK"]}]}},
            "exclude.custom_fields: 'Provider' 'medibank' is in filters.custom_fields too: it "
            "would never fire for it",
        ),
        # a blank name matched nothing: the trigger never fired, with only a warning
        ({"exclude": {"medical_alerts": ["   "]}}, "exclude.medical_alerts: a blank name"),
        (
            {"filters": {"custom_fields": [{"field": " ", "values": ["Yes"]}]}},
            "filters.custom_fields.0.field: a blank name matches nothing",
        ),
    ],
)  # fmt: skip
def test_invalid_triggers_are_refused_with_the_field_named(tmp_path, change, expected):
    message = load_error(tmp_path, [{**REMINDER, **change}])
    assert f"trigger '{change.get('name', 'sms-reminder')}' (entry 1)" in message
    assert expected in message


def test_a_missing_required_field_is_named(tmp_path):
    entry = {k: v for k, v in REMINDER.items() if k != "channel"}
    assert "trigger 'sms-reminder' (entry 1): channel: required but missing" in load_error(
        tmp_path, [entry]
    )


def test_two_triggers_may_not_share_a_name(tmp_path):
    assert "trigger 'sms-reminder' (entry 2): name: used twice" in load_error(
        tmp_path, [REMINDER, REMINDER]
    )


def test_a_template_with_a_missing_variable_fails_the_load_so_nothing_is_sent(tmp_path):
    (tmp_path / "templates" / "typo").mkdir(parents=True)
    (tmp_path / "templates" / "typo" / "sms.txt").write_text(
        "Hi {{ patient.frist_name }}, see you tomorrow"
    )
    message = load_error(tmp_path, [{**REMINDER, "template": "typo"}])
    assert "trigger 'sms-reminder' (entry 1): template:" in message
    assert "frist_name" in message


@pytest.mark.parametrize("event", ["patient_created", "invoice_paid", "medical_alert_added"])
def test_an_appointment_variable_in_a_trigger_with_no_appointment_fails_the_load(tmp_path, event):
    # these events are about the patient, not an appointment: at send time `appointment` is
    # empty, so a template reading it would be skipped for every patient ("not rendered")
    (tmp_path / "templates" / "thanks").mkdir(parents=True)
    (tmp_path / "templates" / "thanks" / "sms.txt").write_text(
        "Hi {{ patient.first_name }}, thanks for coming in on {{ appointment.date }}"
    )
    trigger = {**REMINDER, "event": event, "timing": "5 minutes after", "template": "thanks"}
    if event == "medical_alert_added":
        trigger["filters"] = {"medical_alerts": ["Insurance patient"]}
    message = load_error(tmp_path, [trigger])
    assert "trigger 'sms-reminder' (entry 1): template:" in message
    assert "'None' has no attribute 'date'" in message
    (tmp_path / "templates" / "thanks" / "sms.txt").write_text(
        "Hi {{ patient.first_name }}{% if appointment %}, see you {{ appointment.date }}{% endif %}"
    )
    assert load_clinic(write_clinic(tmp_path, [trigger])).triggers


def test_a_template_that_does_not_exist_fails_the_load(tmp_path):
    message = load_error(tmp_path, [{**REMINDER, "template": "nowhere"}])
    assert "trigger 'sms-reminder' (entry 1): template: template 'nowhere': no file" in message


def test_a_marketing_sms_must_say_how_to_opt_out(tmp_path):
    message = load_error(tmp_path, [{**REMINDER, "purpose": "marketing"}])
    assert "must say how to opt out" in message


def test_wording_and_switching_are_not_a_new_definition_but_timing_is():
    base = Trigger(**REMINDER)
    assert (
        Trigger(**{**REMINDER, "template": "other", "enabled": True}).fingerprint
        == base.fingerprint
    )
    assert Trigger(**{**REMINDER, "timing": "2 days before"}).fingerprint != base.fingerprint
    assert (
        Trigger(**{**REMINDER, "exclude": {"categories": ["Admin Only"]}}).fingerprint
        != base.fingerprint
    )


@pytest.mark.parametrize(
    "wanted, unwanted",
    [
        ({"section": "Insurance coverage"}, {"section": "Secondary insurance"}),
        ({}, {"section": "Insurance coverage"}),  # the filter may hold in another section
        ({}, {"values": ["Bupa"]}),
        ({}, {"field": "Referred by"}),
    ],
)
def test_a_custom_field_excluded_elsewhere_than_the_filter_still_loads(wanted, unwanted):
    condition = {"field": "Provider", "values": ["Medibank"]}
    trigger = Trigger(**{**REMINDER, "filters": {"custom_fields": [{**condition, **wanted}]},
                         "exclude": {"custom_fields": [{**condition, **unwanted}]}})  # fmt: skip
    assert trigger.exclude.custom_fields
