"""The TwilioAccount block: account SID, auth token (secret) and the sender.

Register once: ``prefect block register -m blocks.twilio`` (with relay's Prefect settings,
or it lands in ~/.prefect: README, "Syncing Cliniko"); save one per clinic, e.g.
``TwilioAccount(account_sid="AC...", auth_token="...", from_number="+61400000000")
.save("acme-twilio")``, and name it in the clinic's config (``providers.sms: acme-twilio``).
"""

from __future__ import annotations

import os

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from tasks.connect.twilio import ALPHANUMERIC
from tasks.messages.addresses import E164
from tasks.providers.twilio import TwilioProvider, TwilioSettings


class TwilioAccount(Block):
    _block_type_name = "Twilio Account"
    _block_type_slug = "twilio-account"
    _description = "A Twilio account (SID and auth token) and the number or service SMS come from."

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="Starts with AC.")
    auth_token: SecretStr = Field(description="The account's auth token.")
    from_number: str | None = Field(
        None,
        description=(
            "Sender: a number of this account in E.164 (+61400000000), or an alphanumeric "
            "sender ID registered for the clinic's country (1-11 letters, digits, spaces)."
        ),
    )
    messaging_service_sid: str | None = Field(
        None, pattern=r"^MG[0-9a-fA-F]{32}$", description="Or a messaging service (MG...)."
    )
    base_url: str | None = Field(
        None, description="Send every request here instead (the sandbox, a proxy)."
    )
    timeout_seconds: float = Field(15.0, gt=0)
    status_callback_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Public URL of relay's status endpoint (relay serve-unsubscribe), e.g. "
        "https://relay.example/twilio/status/acme: Twilio reports each SMS's delivery there at "
        "once. Without it, delivery is polled every tick.",
    )

    @field_validator("from_number")
    @classmethod
    def _sender_form(cls, value: str | None) -> str | None:
        if value is not None and not (E164.match(value) or ALPHANUMERIC.match(value)):
            raise ValueError(
                "from_number is a number in E.164 (+61400000000) or an alphanumeric sender ID "
                "(1-11 letters, digits or spaces, at least one letter)"
            )
        return value

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioAccount:
        if not (self.from_number or self.messaging_service_sid):
            raise ValueError("set from_number or messaging_service_sid: SMS need a sender")
        return self

    @classmethod
    def from_env(cls) -> TwilioAccount:
        """For the demo and one-off runs: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM or
        TWILIO_MESSAGING_SERVICE_SID, TWILIO_BASE_URL, TWILIO_STATUS_CALLBACK_URL."""
        sid, token = os.environ.get("TWILIO_ACCOUNT_SID"), os.environ.get("TWILIO_AUTH_TOKEN")
        if not (sid and token):
            raise RuntimeError(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set when providers.sms is "
                "'env'; or save a TwilioAccount block and name it under providers.sms."
            )
        return cls(
            account_sid=sid,
            auth_token=SecretStr(token),
            from_number=os.environ.get("TWILIO_FROM") or None,
            messaging_service_sid=os.environ.get("TWILIO_MESSAGING_SERVICE_SID") or None,
            base_url=os.environ.get("TWILIO_BASE_URL") or None,
            status_callback_url=os.environ.get("TWILIO_STATUS_CALLBACK_URL") or None,
        )

    def provider(self) -> TwilioProvider:
        return TwilioProvider(
            TwilioSettings(
                account_sid=self.account_sid,
                auth_token=self.auth_token.get_secret_value(),
                from_number=self.from_number,
                messaging_service_sid=self.messaging_service_sid,
                base_url=self.base_url,
                timeout=self.timeout_seconds,
                status_callback_url=self.status_callback_url,
            )
        )
