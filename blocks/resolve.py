"""The one place that turns a clinic's configuration into accounts and providers: a saved block,
or the environment for the demo (``env``), or the local outbox.

Flows (and the CLI through them) call this and pass what it returns into ``tasks``, which never
imports ``blocks``. Errors name the clinic (or its file), the setting, the block and the fix.
"""

from __future__ import annotations

from email.utils import formataddr
from typing import Any

from pydantic import ValidationError

from blocks.cliniko import ClinikoAccount
from blocks.postmark import PostmarkServer
from blocks.twilio import TwilioAccount
from tasks.config import ClinicConfig, ConfigError
from tasks.messages.ledger import Channel
from tasks.providers.common import Provider
from tasks.providers.outbox import OutboxProvider, outbox_dir
from tasks.providers.postmark import PostmarkProvider


def cliniko_account(config: ClinicConfig) -> ClinikoAccount:
    """The clinic's Cliniko credentials: a saved block, or the environment for the demo."""
    if config.cliniko.account == "env":
        return ClinikoAccount.from_env()
    try:
        # Prefect's sync_compatible load: the block itself when called outside async code
        return ClinikoAccount.load(config.cliniko.account)  # type: ignore[return-value]
    except ValidationError as exc:  # saved before the contact rule, say: name the problem
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(
            f"clinic '{config.clinic}': the ClinikoAccount block '{config.cliniko.account}' "
            f"cannot be used: {problems} Save the block again with the corrected value."
        ) from None
    except ValueError:
        raise ConfigError(
            f"clinic '{config.clinic}': cliniko.account names the ClinikoAccount block "
            f"'{config.cliniko.account}', which is not saved on this Prefect server. Save it "
            "(see blocks/cliniko.py) or set cliniko.account: env."
        ) from None


def providers_for(cfg: ClinicConfig) -> dict[Channel, Provider]:
    """The provider for each channel, as the clinic's ``providers:`` section says."""
    sender = cfg.providers.sender
    outbox = OutboxProvider(
        outbox_dir(cfg.clinic),
        email_from=formataddr((sender.name or cfg.name, sender.email)),
        sms_from=sender.name or cfg.name,
        time_zone=cfg.time_zone,
        reply_to=sender.reply_to,
    )

    def load(block_type: Any, name: str, setting: str) -> Provider:
        if name == "outbox":
            return outbox
        try:
            block = block_type.from_env() if name == "env" else block_type.load(name)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"{cfg.source or cfg.clinic}: providers.{setting}: cannot load {name!r}: {exc}. "
                f"Save a {block_type.__name__} block with that name, or use 'outbox'."
            ) from None
        return block.provider()

    email = load(PostmarkServer, cfg.providers.email, "email")
    if isinstance(email, PostmarkProvider):  # the clinic's tracking and reply-to
        email.track_marketing(cfg.providers.tracking.opens, cfg.providers.tracking.links)
        email.reply_to_by_default(sender.reply_to)
    return {"email": email, "sms": load(TwilioAccount, cfg.providers.sms, "sms")}
