"""The ClinikoAccount block: a clinic's Cliniko API key (secret) and how to reach the API.

Register once: ``prefect block register -m blocks.cliniko`` (with relay's Prefect settings,
or it lands in ~/.prefect: README, "Syncing Cliniko"); save one per clinic, e.g.
``ClinikoAccount(api_key="...-au2", contact_email="it@acmephysio.com.au").save("acme-cliniko")``,
and name it in the clinic's config (``cliniko.account: acme-cliniko``).

``contact_email`` goes into every request's User-Agent, which Cliniko requires to name a contact
it can reach before blocking a key: a placeholder (``ops@localhost``, anything at example.com or
under .test/.invalid/.local...) is refused when the block is made or loaded, unless ``base_url``
is the sandbox on this machine (``tasks.cliniko.client.check_contact``, the one rule).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from tasks.cliniko.client import check_contact
from tasks.errors import UserFacingError

if TYPE_CHECKING:
    from tasks.cliniko.client import ClinikoClient


class ClinikoAccount(Block):
    _block_type_name = "Cliniko Account"
    _block_type_slug = "cliniko-account"
    _description = (
        "A Cliniko API key (its suffix names the shard) and a contact for the User-Agent."
    )

    api_key: SecretStr = Field(description="Cliniko API key, e.g. 'MS0xLTk...-au2'.")
    contact_email: str = Field(
        description="Who Cliniko should contact about this integration (sent in the User-Agent)."
    )
    base_url: str | None = Field(
        None,
        description="Override the API base URL (the sandbox, a proxy). Default: derived from the key's shard.",
    )
    requests_per_minute: int = Field(
        200,
        ge=1,
        description="Cliniko's per-user rate limit; shared by every integration of the user.",
    )

    @model_validator(mode="after")
    def _real_contact(self) -> ClinikoAccount:
        # ValueError (not UserFacingError) so pydantic reports it as this field's problem.
        try:
            check_contact(self.contact_email, self.base_url)
        except UserFacingError as exc:
            raise ValueError(str(exc)) from None
        return self

    @classmethod
    def from_env(cls) -> ClinikoAccount:
        """For the demo and one-off runs: CLINIKO_API_KEY, CLINIKO_CONTACT, CLINIKO_BASE_URL."""
        key = os.environ.get("CLINIKO_API_KEY")
        if not key:
            raise UserFacingError(
                "CLINIKO_API_KEY is not set. Set it (and CLINIKO_CONTACT), or save a ClinikoAccount "
                "block and name it in the clinic's config under cliniko.account."
            )
        base_url = os.environ.get("CLINIKO_BASE_URL") or None
        contact = os.environ.get("CLINIKO_CONTACT", "")
        check_contact(contact, base_url)  # the error names CLINIKO_CONTACT, not a block field
        return cls(
            api_key=SecretStr(key),
            contact_email=contact or "sandbox@localhost",
            base_url=base_url,
            requests_per_minute=_requests_per_minute(),
        )

    def get_client(self) -> ClinikoClient:
        """A client paced under this account's rate limit (shared by every client of the key)."""
        from tasks.cliniko.client import ClinikoClient, Pace

        return ClinikoClient(
            self.api_key.get_secret_value(),
            self.contact_email,
            self.base_url,
            pace=Pace(requests=self.requests_per_minute, per_seconds=60.0),
        )


def _requests_per_minute() -> int:
    """CLINIKO_REQUESTS_PER_MINUTE (unset or empty: Cliniko's 200), a whole number above 0."""
    raw = os.environ.get("CLINIKO_REQUESTS_PER_MINUTE", "").strip() or "200"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserFacingError(
            f"CLINIKO_REQUESTS_PER_MINUTE is '{os.environ['CLINIKO_REQUESTS_PER_MINUTE']}': set it "
            "to a whole number of requests a minute, 1 or more (Cliniko allows 200 per user, "
            "shared by all its integrations), or unset it for 200."
        )
    return value
