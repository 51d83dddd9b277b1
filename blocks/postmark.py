"""The PostmarkServer block: a Postmark server token (secret), the sender and the two streams.

Register once: ``prefect block register -m blocks.postmark`` (with relay's Prefect settings,
or it lands in ~/.prefect: README, "Syncing Cliniko"); save one per clinic, e.g.
``PostmarkServer(server_token="...", from_address="Acme Physio <hello@acme.example>")
.save("acme-postmark")``, and name it in the clinic's config (``providers.email: acme-postmark``).
"""

from __future__ import annotations

import os

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from tasks.providers.postmark import PostmarkProvider, PostmarkSettings

# Postmark's TrackLinks values (docs/reference.md, Postmark, Tracking).
TRACK_LINKS = ("None", "HtmlAndText", "HtmlOnly", "TextOnly")


class PostmarkServer(Block):
    _block_type_name = "Postmark Server"
    _block_type_slug = "postmark-server"
    _description = "A Postmark server (its API token), the From address and the message streams."

    server_token: SecretStr = Field(description="The server's API token (Servers → API Tokens).")
    from_address: str = Field(
        description="A confirmed sender signature, e.g. 'Acme Physio <hello@acme.example>'."
    )
    reply_to: str | None = Field(None, description="Where replies go, if not the From address.")
    transactional_stream: str = Field(
        "outbound", description="Stream for transactional mail (reminders, welcomes)."
    )
    marketing_stream: str = Field(
        "broadcast", description="Stream for marketing mail (recalls, campaigns)."
    )
    base_url: str | None = Field(
        None, description="Override the API root (the sandbox, a proxy). Default: Postmark's."
    )
    track_links: str = Field("None", description="None, HtmlAndText, HtmlOnly or TextOnly.")
    timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("track_links")
    @classmethod
    def _track_links(cls, value: str) -> str:
        """Postmark's values only: a misspelt one went on every email for Postmark to refuse."""
        known = {mode.lower(): mode for mode in TRACK_LINKS}
        if str(value).strip().lower() not in known:
            raise ValueError(f"track_links is one of {', '.join(TRACK_LINKS)}, not {value!r}")
        return known[str(value).strip().lower()]

    @classmethod
    def from_env(cls) -> PostmarkServer:
        """For the demo and one-off runs: POSTMARK_SERVER_TOKEN, POSTMARK_FROM, POSTMARK_BASE_URL."""
        token, sender = os.environ.get("POSTMARK_SERVER_TOKEN"), os.environ.get("POSTMARK_FROM")
        if not (token and sender):
            raise RuntimeError(
                "POSTMARK_SERVER_TOKEN and POSTMARK_FROM must be set when providers.email is "
                "'env'; or save a PostmarkServer block and name it under providers.email."
            )
        return cls(
            server_token=SecretStr(token),
            from_address=sender,
            base_url=os.environ.get("POSTMARK_BASE_URL") or None,
        )

    def provider(self) -> PostmarkProvider:
        return PostmarkProvider(
            PostmarkSettings(
                server_token=self.server_token.get_secret_value(),
                from_address=self.from_address,
                reply_to=self.reply_to,
                transactional_stream=self.transactional_stream,
                marketing_stream=self.marketing_stream,
                base_url=self.base_url,
                track_links=self.track_links,
                timeout=self.timeout_seconds,
            )
        )
