"""The ``report:`` section of clinic.yaml: the owner's weekly report (flows/report.py).

Its own module so tasks/config.py stays small; ``ClinicConfig.report`` reads it, and errors name
the file and the field like every other section. ``relay deploy`` reads ``cron`` and the clinic's
time zone to schedule the report.

    report:
      to: owner@clinic.com.au     # the owner's address (one)
      weekday: monday             # the day it goes, clinic time
      at: "08:00"                 # quoted: YAML reads an unquoted 8:00 as a number
      booked_within_days: 14      # bookings won: booked within this many days of the message
"""

from __future__ import annotations

from datetime import time
from typing import Literal

from pydantic import Field, field_validator

from tasks.messages.addresses import EMAIL
from tasks.settings_model import Settings
from tasks.triggers.definition import ClockTime


class ReportSettings(Settings):
    """The owner's weekly report (flows/report.py:owner_report): emailed to ``to`` through the
    transactional email provider once a week, ``weekday`` at ``at`` in the clinic's time zone."""

    to: str  # the owner's one address (the send-time check is dispatch.address_problem)
    weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                     "sunday"] = "monday"  # fmt: skip
    at: ClockTime = time(8, 0)  # quoted in YAML: tasks/triggers/definition.py
    # Bookings won: a recipient counts when they booked within this many days of the message.
    booked_within_days: int = Field(14, ge=1, le=90)

    @field_validator("to")
    @classmethod
    def _one_address(cls, value: str) -> str:
        if not EMAIL.match(value.strip()):  # the rule the report flow checks before sending
            raise ValueError(f"'{value}' is not one email address; write e.g. owner@clinic.com.au")
        return value.strip()

    @property
    def cron(self) -> str:
        """The schedule as cron (minute hour * * weekday), in the clinic's time zone."""
        day = (WEEKDAYS.index(self.weekday) + 1) % 7  # cron's 0 is Sunday
        return f"{self.at.minute} {self.at.hour} * * {day}"


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
