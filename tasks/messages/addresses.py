"""The shape of an address a message can go to, one rule per channel: ``E164`` (SMS) and ``EMAIL``.

A cheap check, made before anything is claimed: the provider has the final word (Postmark answers
300, Twilio 21211). Dispatch, the owner's report (``report.to``, checked when the clinic loads),
``relay test-send``, ``relay connect`` and the Twilio block all read these, never a regex of their
own. The email marketing list asks more of an address (email-validator: tasks/models/functions.py).

Imports nothing of the project, so configuration and blocks can read it too.
"""

from __future__ import annotations

import re

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL = re.compile(r"^[^@\s\"<>,;]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$")


def address_problem(channel: str, address: str) -> str | None:
    """Why ``address`` cannot be sent to on ``channel`` (``email`` or ``sms``), or None."""
    if channel == "sms":
        return None if E164.match(address) else "the phone number on file is not E.164"
    return None if EMAIL.match(address.strip()) else "the email address on file is not valid"
