"""Each channel's marketing list: the mart that holds it and the column that is its address.

Planning, journeys, campaigns and the model runner all read the lists through this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarketingList:
    audience: str  # the model's name, as state.membership_events names it
    address_column: str

    @property
    def table(self) -> str:
        return f"marts.{self.audience}"

    @property
    def label(self) -> str:
        return (
            "the email marketing list"
            if self.address_column == "email"
            else "the SMS marketing list"
        )


MARKETING_LISTS: dict[str, MarketingList] = {
    "email": MarketingList("email_marketing_list", "email"),
    "sms": MarketingList("sms_marketing_list", "mobile_e164"),
}
