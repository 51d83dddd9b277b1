"""The journeys:, campaigns: and marketing: sections of clinic.yaml: what a clinic writes, and the
errors it gets (file, journey or campaign, field, what to do)."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
import yaml

from tasks.config import ConfigError, SendStep, WaitStep, load_clinic


def write(tmp_path, **sections):
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump({"clinic": "t", "name": "T", **sections}), encoding="utf-8")
    return path


def error_of(tmp_path, **sections) -> str:
    with pytest.raises(ConfigError) as caught:
        load_clinic(write(tmp_path, **sections))
    return str(caught.value)


SERIES = {
    "name": "series",
    "entry": {"enters_segment": "new_patients"},
    "steps": [{"send": "email", "template": "new-patient-welcome"}, {"wait": "3 days"}],
}


def test_the_demo_clinic_has_a_birthday_a_new_patient_series_and_a_recall_campaign():
    cfg = load_clinic("demo")
    by_name = {j.name: j for j in cfg.journeys}
    assert by_name["birthday"].entry.date_field == "date_of_birth"
    assert by_name["birthday"].entry.at == time(9, 0)
    series = by_name["new-patient-series"]
    assert series.entry.enters_segment == "new_patients"
    assert [type(s) for s in series.steps].count(SendStep) == 3
    assert [s.wait for s in series.steps if isinstance(s, WaitStep)] == [
        timedelta(days=1),  # after welcome-insurance, never seconds apart (test_demo_clinic.py)
        timedelta(days=3),
        timedelta(weeks=2),
    ]
    (campaign,) = cfg.campaigns
    assert (campaign.segment, campaign.channel) == ("recall_90_179", "email")
    assert cfg.marketing.frequency_cap.messages == 2
    assert cfg.marketing.quiet_hours.start == time(20, 0)


def test_an_unknown_segment_names_the_journey_the_field_and_the_known_segments(tmp_path):
    message = error_of(tmp_path, journeys=[{**SERIES, "entry": {"enters_segment": "new"}}])
    assert "clinic.yaml" in message
    assert "journeys[0] (series).entry.enters_segment: " in message
    assert "no segment 'new' (sql/segments/new.sql); known: " in message
    assert "new_patients" in message


def test_a_misspelt_step_or_a_bad_wait_is_named(tmp_path):
    steps = [{"send": "email"}, {"wiat": "3 days"}, {"wait": "3 dayz"}]
    message = error_of(tmp_path, journeys=[{**SERIES, "steps": steps}])
    assert "journeys[0] (series).steps.0.send.template: required but missing" in message
    assert (
        "journeys[0] (series).steps.1: a step is one of: send (with template), wait, only_if"
        in message
    )
    assert "'3 dayz' is not a duration; write e.g. '3 days'" in message


def test_an_entry_needs_exactly_one_kind(tmp_path):
    entry = {"enters_segment": "new_patients", "joins_list": "email"}
    message = error_of(tmp_path, journeys=[{**SERIES, "entry": entry}])
    assert "journeys[0] (series).entry: " in message and "give exactly one of" in message


def test_still_in_segment_needs_a_segment_entry_and_a_journey_needs_a_send(tmp_path):
    journey = {"name": "b", "entry": {"date_field": "date_of_birth"},
               "steps": [{"only_if": "still_in_segment"}]}  # fmt: skip
    message = error_of(tmp_path, journeys=[journey])
    assert "a journey needs at least one send step" in message


def test_a_template_without_an_unsubscribe_link_is_refused_for_marketing(tmp_path):
    message = error_of(
        tmp_path, journeys=[{**SERIES, "steps": [{"send": "email", "template": "welcome"}]}]
    )
    assert "journey 'series' step 1: template: " in message
    assert "{{ unsubscribe_url }}" in message


def test_a_template_that_needs_an_appointment_is_refused_for_journeys_and_campaigns(tmp_path):
    campaign = {"name": "c", "segment": "recall_90_179", "channel": "email", "template": "recall"}
    message = error_of(tmp_path, campaigns=[campaign])
    assert "campaign 'c': template: template 'recall'" in message


def test_names_are_unique_and_usable_in_send_keys(tmp_path):
    assert "used twice" in error_of(tmp_path, journeys=[SERIES, SERIES])
    message = error_of(tmp_path, journeys=[{**SERIES, "name": "new:series"}])
    assert "journeys[0] (new:series).name" in message


def test_marketing_settings_are_checked(tmp_path):
    message = error_of(tmp_path, marketing={"quiet_hours": {"start": "20:00", "end": "20:00"}})
    assert "marketing.quiet_hours" in message and "quiet_hours: null" in message
    message = error_of(tmp_path, marketing={"frequency_cap": {"messages": 0, "days": 7}})
    assert "marketing.frequency_cap.messages" in message
