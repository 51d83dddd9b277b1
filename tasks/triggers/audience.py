"""Who may get a trigger's message: the ``audience_problem`` of the candidate query, in words.

Every reason here is about the person, and each can change before the message's moment: the
front desk adds a mobile or an email, un-archives a patient archived by mistake, changes the
reminder preference; the patient re-subscribes; a new address is not suppressed. So a planned
message with one of them *waits* with it (tasks/messages/waiting.py): every tick and the
send-time check judge it again, it goes if the reason clears before its moment + grace, and is
skipped with the reason after. This module is the one list of a trigger's changeable reasons;
a reason that cannot change (the trigger's own event no longer holds: the appointment was
cancelled) is not here but in tasks/triggers/gone.py, and cancels at once.
"""

from __future__ import annotations

from typing import Any

from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.ledger import STOPPED_BY
from tasks.triggers.definition import Trigger

# Cliniko's reminder_type -> the channels a patient accepts reminders on (NULL: Cliniko's default).
REMINDER_CHANNELS = {"email": ["SMS & Email", "Email"], "sms": ["SMS & Email", "SMS"]}

# The patient's address on each channel, as suppressions and marketing lists hold it.
PATIENT_ADDRESS = {"email": "p.email_normalised", "sms": "p.mobile_e164"}


def audience_problem(trigger: Trigger, params: dict[str, Any]) -> str:
    """The WHEN lines of: why the patient cannot get this message (NULL: they can)."""
    params["channel"] = trigger.channel
    params["suppression_scopes"] = list(STOPPED_BY[trigger.purpose])
    cases = ["WHEN p.is_archived THEN 'patient archived in Cliniko'"]
    if trigger.channel == "email":
        cases.append(
            "WHEN p.email_normalised IS NULL OR NOT p.email_is_valid "
            "THEN 'no valid email address on file'"
        )
    else:
        cases.append("WHEN p.mobile_e164 IS NULL THEN 'no valid mobile number on file'")
    cases.append(
        "WHEN coalesce(p.preferred_first_name, p.first_name) IS NULL "
        "THEN 'no first name on file to greet the patient by'"
    )
    if trigger.honours_reminder_preference:
        params["reminder_types"] = REMINDER_CHANNELS[trigger.channel]
        cases.append(
            "WHEN p.reminder_type IS NOT NULL AND NOT list_contains($reminder_types, p.reminder_type) "
            "THEN 'Cliniko reminder preference is ' || p.reminder_type"
        )
    if trigger.purpose == "marketing":
        listed = MARKETING_LISTS[trigger.channel].label
        cases.append(
            "WHEN list.status IS DISTINCT FROM 'subscribed' "
            f"THEN 'not subscribed to {listed} (' || coalesce(list.status, 'not on it') || ')'"
        )
    cases.append(
        "WHEN suppressed.address IS NOT NULL THEN 'address suppressed (' || suppressed.reason || ')'"
    )
    return "\n".join(f"        {case}" for case in cases)


def list_join(trigger: Trigger, address: str) -> str:
    """Marketing reaches only its channel's marketing list."""
    if trigger.purpose != "marketing":
        return ""
    listed = MARKETING_LISTS[trigger.channel]
    return (
        f"\nLEFT JOIN {listed.table} list\n"
        f"  ON list.patient_id = w.patient_id AND list.{listed.address_column} = {address}"
    )
