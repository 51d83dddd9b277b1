"""``relay connect CLINIC``: check a real clinic's Cliniko, Postmark and Twilio credentials with
read-only calls, save them as Prefect blocks, and write its first ``clinic.yaml``
(docs/connect.md walks through it).

Interactive by default (secrets are asked for without echo); every value also has a flag, and
the secrets an environment variable, for scripts. Nothing is saved unless every check passes,
and the file is checked with the same loader ``relay clinics`` uses before anything is saved.
Secrets are never printed and never written to the file: it names the blocks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

# How long connect waits for a run holding the clinic's database (to check whose data it holds):
# a check only goes on without it, saying so; a save waits longer and then stops.
CHECK_WAIT, SAVE_WAIT = 10.0, 30.0


def _interactive() -> bool:
    return sys.stdin.isatty()


def _ask(
    value: str | None, prompt: str, *, secret: bool = False, default: str | None = None
) -> str:
    if value:
        return value
    if not _interactive():
        raise typer.BadParameter(f"{prompt}: not given (pass its flag; no terminal to ask on)")
    return typer.prompt(prompt, default=default, hide_input=secret)


def connect_command(
    clinic: str = typer.Argument(..., help="The clinic's short name: clinics/<clinic>/."),
    name: str | None = typer.Option(None, help="Display name; default: the business's name."),
    business: str | None = typer.Option(
        None, help="Business id or name, if the user sees several."
    ),
    cliniko_key: str | None = typer.Option(
        None,
        envvar="CLINIKO_API_KEY",
        show_envvar=True,
        help="Cliniko API key (with its shard suffix).",
    ),
    contact_email: str | None = typer.Option(
        None, help="Contact email sent to Cliniko in the User-Agent."
    ),
    cliniko_base_url: str | None = typer.Option(
        None, help="Cliniko API URL for every shard (sandbox, proxy)."
    ),
    email: bool = typer.Option(
        True, "--email/--no-email", help="Connect Postmark (else the outbox)."
    ),
    postmark_token: str | None = typer.Option(
        None, envvar="POSTMARK_SERVER_TOKEN", show_envvar=True, help="Postmark Server API token."
    ),
    from_address: str | None = typer.Option(
        None, help="From, e.g. 'Acme Physio <hello@acme.com.au>'."
    ),
    transactional_stream: str = typer.Option("outbound", help="Postmark stream for reminders."),
    marketing_stream: str = typer.Option("broadcast", help="Postmark stream for marketing."),
    postmark_base_url: str | None = typer.Option(None, help="Postmark API root (sandbox, proxy)."),
    sms: bool = typer.Option(True, "--sms/--no-sms", help="Connect Twilio (else the outbox)."),
    twilio_sid: str | None = typer.Option(
        None, envvar="TWILIO_ACCOUNT_SID", show_envvar=True, help="Twilio account SID (AC...)."
    ),
    twilio_token: str | None = typer.Option(
        None, envvar="TWILIO_AUTH_TOKEN", show_envvar=True, help="Twilio auth token."
    ),
    sender: str | None = typer.Option(
        None, help="SMS sender: +E.164 number, MG... service or alphanumeric ID."
    ),
    twilio_base_url: str | None = typer.Option(None, help="Twilio API host (sandbox, proxy)."),
    check_only: bool = typer.Option(
        False, "--check-only", help="Run the checks; save and write nothing."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing clinic.yaml and blocks."
    ),
) -> None:
    """Check a clinic's Cliniko, Postmark and Twilio accounts (read-only), save them as Prefect
    blocks, and write clinics/CLINIC/clinic.yaml with every trigger off."""
    from pydantic import ValidationError

    from tasks.config import ClinicConfig, load_clinic
    from tasks.connect import ConnectFailed
    from tasks.connect.clinic_file import (
        Accounts,
        check_blocks_free,
        pick_business,
        render_clinic_yaml,
    )
    from tasks.connect.cliniko import check_contact_email, check_database, verify_cliniko
    from tasks.connect.postmark import verify_postmark
    from tasks.connect.twilio import verify_twilio
    from tasks.dblock import DatabaseBusy
    from tasks.paths import clinics_dir

    try:  # the clinic's name, by the rule clinic.yaml's `clinic:` is held to
        ClinicConfig(clinic=clinic, name=clinic)
    except ValidationError:
        raise typer.BadParameter(
            f"'{clinic}': a clinic's name is lowercase letters, digits, '-' and '_' (e.g. acme)"
        ) from None
    folder = clinics_dir() / clinic
    target = folder / "clinic.yaml"
    if target.exists() and not (force or check_only):
        raise ConnectFailed(
            "relay", "exists", f"{target} already exists: edit it, or pass --force to replace "
            "it (and the clinic's blocks) with a fresh connection.",
        )  # fmt: skip
    block = clinic.replace("_", "-")  # Prefect block names: lowercase letters, digits, dashes

    cliniko_key = _ask(cliniko_key, "Cliniko API key", secret=True)
    contact_email = _ask(contact_email, "Contact email for Cliniko (who runs this integration)")
    if email:
        postmark_token = _ask(postmark_token, "Postmark Server API token", secret=True)
        from_address = _ask(from_address, "From address (Name <address>)")
    if sms:
        twilio_sid = _ask(twilio_sid, "Twilio account SID (AC...)")
        twilio_token = _ask(twilio_token, "Twilio auth token", secret=True)
        sender = _ask(sender, "SMS sender (+number, MG... service, or alphanumeric ID)")

    accounts = Accounts(
        cliniko=f"{block}-cliniko",
        email=f"{block}-postmark" if email else "outbox",
        sms=f"{block}-twilio" if sms else "outbox",
        from_address=from_address if email else None,
    )
    check_contact_email(contact_email)  # in connect's words (the block's name its own field)
    check_blocks_free(clinics_dir(), clinic, accounts)
    # the blocks as they will be saved: a value they refuse is reported before any request
    blocks = _build_blocks(accounts, cliniko_key=cliniko_key, contact_email=contact_email,
                           cliniko_base_url=cliniko_base_url, postmark_token=postmark_token,
                           from_address=from_address, transactional_stream=transactional_stream,
                           marketing_stream=marketing_stream, postmark_base_url=postmark_base_url,
                           twilio_sid=twilio_sid, twilio_token=twilio_token, sender=sender,
                           twilio_base_url=twilio_base_url)  # fmt: skip

    typer.echo("Checking Cliniko ...")
    if cliniko_base_url:  # one host for every shard: the sandbox, a proxy
        facts = verify_cliniko(cliniko_key, contact_email, urls=lambda _shard: cliniko_base_url)
    else:
        facts = verify_cliniko(cliniko_key, contact_email)
    if business is None and len(facts.businesses) > 1 and _interactive():
        for b in facts.businesses:
            typer.echo(f"  business {b.id}: {b.name} ({b.time_zone}, {b.country})")
        while True:  # a typo at the prompt is asked again, not the end of the run
            business = typer.prompt("Which business (id or name) sets the time zone and country")
            try:
                pick_business(facts, business)
                break
            except ConnectFailed:
                typer.echo(f"  no business '{business}': give an id or a whole name listed above.")
    chosen = pick_business(facts, business)
    typer.echo(
        f"  ok: shard {facts.shard}, {len(facts.businesses)} business(es); using '{chosen.name}' "
        f"({chosen.time_zone}, {chosen.country}); {len(facts.appointment_types)} appointment types"
    )
    if len(facts.businesses) > 1:
        typer.secho(
            f"  note: all {len(facts.businesses)} businesses are synced and every trigger covers "
            f"them all, but the clinic's name, address and phone in messages ({{{{ clinic.* }}}}) "
            f"are those of '{chosen.name}'. Name an appointment's own location with "
            "{{ appointment.business }}, or limit a trigger with `businesses:` in its filters.",
            fg=typer.colors.YELLOW,
        )
    if email:
        typer.echo("Checking Postmark ...")
        pm = verify_postmark(postmark_token, transactional_stream, marketing_stream,
                             base_url=postmark_base_url)  # fmt: skip
        typer.echo(f"  ok: server '{pm.server_name}', streams {', '.join(pm.streams)}")
        typer.echo(_unsubscribes_line(pm.marketing_unsubscribes, marketing_stream))
    if sms:
        typer.echo("Checking Twilio ...")
        tw = verify_twilio(twilio_sid, twilio_token, sender, country=chosen.country,
                           base_url=twilio_base_url)  # fmt: skip
        typer.echo(
            f"  ok: account '{tw.account_name}' ({tw.account_type}), sender: {tw.sender_kind}"
        )
        for note in tw.notes:
            typer.secho(f"  note: {note}", fg=typer.colors.YELLOW)

    text = render_clinic_yaml(
        clinic, name, chosen, facts, accounts, marketing_stream=marketing_stream,
        unsubscribes=pm.marketing_unsubscribes if email else None,
    )  # fmt: skip
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    draft = folder / ".connect-draft.yaml"  # loaded exactly as `relay clinics` loads clinic.yaml
    draft.write_text(text, encoding="utf-8")
    try:  # and the database it names must hold this account's data, or none yet
        database = load_clinic(draft).database_path
        try:
            check_database(database, facts, wait_seconds=CHECK_WAIT if check_only else SAVE_WAIT)
        except DatabaseBusy as busy:
            if not check_only:  # saving: only once the database is known to be this account's
                raise
            typer.secho(f"  note: the clinic's database was not checked: {busy}",
                        fg=typer.colors.YELLOW)  # fmt: skip
    except BaseException:  # a refusal, a busy database, Ctrl-C while waiting for it
        _discard(draft, created)
        raise
    if check_only:
        _discard(draft, created)
        typer.echo("Every check passed (--check-only: nothing saved, no file written).")
        return

    try:
        _save_blocks(blocks, force)
    except BaseException:
        _discard(draft, created)
        raise
    os.replace(draft, target)
    typer.echo(f"Saved blocks {', '.join(name for name, _ in blocks)}.")
    typer.echo(f"Wrote {target}: every trigger is off. Next: relay sync --clinic {clinic}, then "
               f"relay preview trigger NAME --days 7 --clinic {clinic} (docs/connect.md).")  # fmt: skip


def _unsubscribes_line(handling: str | None, stream: str) -> str:
    """Who handles marketing email's unsubscribes, as dispatch will act on it."""
    from tasks.connect.clinic_file import postmark_handles_unsubscribes

    said = f"UnsubscribeHandlingType {handling or 'not given'}"
    if postmark_handles_unsubscribes(handling):
        return (
            f"  unsubscribes on '{stream}': Postmark handles them ({said}).\n"
            "    Its link and headers go in marketing email; providers.unsubscribe_url is unused."
        )
    return (
        f"  unsubscribes on '{stream}': relay handles them ({said}).\n"
        "    Marketing email carries providers.unsubscribe_url: make `relay serve-unsubscribe`\n"
        "    public and set it there before any marketing email goes out."
    )


def _discard(draft: Path, created: bool) -> None:
    draft.unlink()
    if created:
        draft.parent.rmdir()


def _build_blocks(accounts, **v) -> list:
    """(name, block) for each connected account, validated as the blocks validate them; the
    error names the setting and the rule, never the value (it may be a secret)."""
    from pydantic import SecretStr, ValidationError

    from blocks.cliniko import ClinikoAccount
    from blocks.postmark import PostmarkServer
    from blocks.twilio import TwilioAccount
    from tasks.connect import ConnectFailed
    from tasks.connect.postmark import from_address_problem
    from tasks.connect.twilio import account_sid_problem, sender_kind

    def build(name: str, make) -> tuple:
        try:
            return name, make()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
            )
            raise typer.BadParameter(f"{name}: {problems}") from None

    for setting, value in (("Cliniko API key", v.get("cliniko_key")),  # the outbox: no others
                           ("Postmark server token", v.get("postmark_token")),
                           ("Twilio account SID", v.get("twilio_sid")),
                           ("Twilio auth token", v.get("twilio_token"))):  # fmt: skip
        text = (value or "").strip()
        if not (text.isascii() and text.isprintable()):  # never the value: it may be a secret
            raise typer.BadParameter(
                f"the {setting} has a character that is not plain ASCII (an invisible one copied "
                "with it?): copy it again from its page and paste only the value."
            )
    blocks = [build(accounts.cliniko, lambda: ClinikoAccount(
        api_key=SecretStr(v["cliniko_key"].strip()), contact_email=v["contact_email"].strip(),
        base_url=v["cliniko_base_url"]))]  # fmt: skip
    if accounts.email != "outbox":
        problem = from_address_problem(v["from_address"])
        if problem:
            raise typer.BadParameter(f"{accounts.email}: from_address: {problem}")
        blocks.append(build(accounts.email, lambda: PostmarkServer(
            server_token=SecretStr(v["postmark_token"].strip()), from_address=v["from_address"],
            transactional_stream=v["transactional_stream"], marketing_stream=v["marketing_stream"],
            base_url=v["postmark_base_url"])))  # fmt: skip
    if accounts.sms != "outbox":
        problem = account_sid_problem(v["twilio_sid"])
        if problem:  # the block's own refusal is a regex; this says what to copy instead
            raise typer.BadParameter(f"{accounts.sms}: account_sid: {problem}")
        sender = v["sender"].strip()
        try:  # one rule for what a sender is: "MGPhysio" is an alphanumeric ID, not a service
            service = sender if sender_kind(sender) == "messaging_service" else None
        except ConnectFailed:  # not a sender at all: the block's own check below says so
            service = None
        blocks.append(build(accounts.sms, lambda: TwilioAccount(
            account_sid=v["twilio_sid"].strip(), auth_token=SecretStr(v["twilio_token"].strip()),
            from_number=None if service else sender, messaging_service_sid=service,
            base_url=v["twilio_base_url"])))  # fmt: skip
    return blocks


def _save_blocks(blocks: list, force: bool) -> None:
    """Save every block, or none when one already exists and --force was not given."""
    from tasks.connect import ConnectFailed

    if not force:
        taken = [name for name, block in blocks if _saved(type(block), name)]
        if taken:
            raise ConnectFailed(
                "Prefect", "block_exists", f"blocks named {', '.join(taken)} are already saved. "
                "Pass --force to replace them, or delete them first (prefect block delete).",
            )  # fmt: skip
    for name, block in blocks:
        block.save(name, overwrite=True)


def _saved(block_type, name: str) -> bool:
    try:
        block_type.load(name)
    except ValueError:  # not saved (or its type never registered)
        return False
    return True
