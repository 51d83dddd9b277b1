"""The one place that turns a clinic's configuration into accounts and providers: a saved block,
or the environment for the demo (``env``), or the local outbox.

Flows (and the CLI through them) call this and pass what it returns into ``tasks``, which never
imports ``blocks``. Errors name the clinic (or its file), the setting, the block and the fix.
"""

from __future__ import annotations

from email.utils import formataddr
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
            f"'{config.cliniko.account}', which is not saved in {where_blocks_are()}. "
            f"{save_hint('it')} Or set cliniko.account: env."
        ) from None


# Run outside relay and make, ``prefect`` and ``python`` use Prefect's own ~/.prefect: a block
# saved there by hand is not where relay (PREFECT_HOME=./.prefect, relay/env.py) looks.
def save_hint(what: str) -> str:
    return (
        f"Save {what} there with relay connect (docs/connect.md), or by hand with the project's "
        "Prefect settings (README, 'Syncing Cliniko'): plain prefect or python run outside relay "
        "and make save blocks in Prefect's own ~/.prefect unless PREFECT_HOME or PREFECT_API_URL "
        "says otherwise."
    )


def where_blocks_are() -> str:
    """The Prefect database this process saves and loads blocks in, as an operator would look
    for it: the server of PREFECT_API_URL, else the temporary server's SQLite under PREFECT_HOME."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        parts = urlsplit(settings.api.url)  # no user:password a URL may carry
        shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return f"the Prefect server at {shown} (PREFECT_API_URL)"
    return f"this machine's Prefect database (PREFECT_HOME={settings.home}; no PREFECT_API_URL)"


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
            where = "" if name == "env" else f" from {where_blocks_are()}"
            hint = (
                f"{save_hint(f'a {block_type.__name__} block with that name')} Or use 'outbox'."
                if where
                else "Or use 'outbox'."
            )
            raise ConfigError(
                f"{cfg.source or cfg.clinic}: providers.{setting}: cannot load {name!r}{where}: "
                f"{exc}. {hint}"
            ) from None
        return block.provider()

    email = load(PostmarkServer, cfg.providers.email, "email")
    if isinstance(email, PostmarkProvider):  # the clinic's tracking and reply-to
        email.track_marketing(cfg.providers.tracking.opens, cfg.providers.tracking.links)
        email.reply_to_by_default(sender.reply_to)
    return {"email": email, "sms": load(TwilioAccount, cfg.providers.sms, "sms")}
