"""The ``marketing_list:`` section of clinic.yaml: who is on the email and SMS marketing lists
(PRODUCT.md §2; the models read it as ``state.build_context``, tasks/models/runner.py).

Its own module so tasks/config.py stays small; ``ClinicConfig.marketing_list`` reads it (and
``tasks.config`` names it too), and errors name the file and the field like every other section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tasks.settings_model import Settings


class MarketingListSettings(Settings):
    """Who is on the email and SMS marketing lists (PRODUCT.md §2; read by sql/marts)."""

    # Patients seen (or created) within this many months; 'all' keeps everyone ("24", All too).
    active_patient_limit: Literal[6, 12, 18, 24, "all"] = 24
    # At most this many subscribed emails (a trial account's 250); none = no cap.
    size_cap: int | None = Field(None, ge=1)
    # Which people a cap keeps first: the most recently seen, or the longest-standing patients.
    cap_keeps: Literal["most_recent_visit", "earliest_created"] = "most_recent_visit"
    # Only add patients whose Cliniko accepted_email_marketing is true.
    honour_cliniko_email_opt_in: bool = False
    # This many soft bounces since an address was last lifted take it off the email list (the
    # list model) and stop marketing to it at once (the feedback pull).
    soft_bounce_limit: int = Field(5, ge=1)

    @field_validator("active_patient_limit", mode="before")
    @classmethod
    def _limit_as_written(cls, value: object) -> object:
        text = value.strip().lower() if isinstance(value, str) else value
        return int(text) if isinstance(text, str) and text.isdigit() else text

    @property
    def active_patient_months(self) -> int | None:
        return None if self.active_patient_limit == "all" else int(self.active_patient_limit)
