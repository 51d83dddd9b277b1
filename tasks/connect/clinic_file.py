"""The first ``clinic.yaml`` of a connected clinic, written from what Cliniko said.

Time zone and country come from the chosen business; its appointment types and categories are
listed as comments, so trigger filters and ``tag_categories`` can be chosen from real names.
Every trigger is written with ``enabled: false``; journeys and campaigns have no switch (a journey
goes live the first tick that sees it, a campaign is sent when confirmed), so they are written as
commented-out examples. Credentials never appear: only the names of the blocks that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path

import yaml

from tasks.connect.cliniko import Business, ClinikoFacts


@dataclass(frozen=True)
class Accounts:
    """The block names written under ``cliniko.account`` and ``providers``."""

    cliniko: str
    email: str = "outbox"
    sms: str = "outbox"
    from_address: str | None = None  # the Postmark From address, e.g. 'Acme <hello@acme.com>'


def check_blocks_free(clinics: Path, clinic: str, accounts: Accounts) -> None:
    """Refuse block names another clinic's ``clinic.yaml`` names: saving them (connect saves its
    blocks over its own with --force) would hand that clinic this account's credentials. Two
    clinic names can share blocks (``acme_north`` and ``acme-north``), and a folder renamed
    (``acme`` kept as ``acme-old``) keeps naming the blocks of the name it had."""
    from tasks.connect import ConnectFailed

    ours = {accounts.cliniko, accounts.email, accounts.sms} - {"outbox", "env"}
    for path in sorted(clinics.glob("*/clinic.yaml")):
        if path.parent.name == clinic:
            continue
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # `relay clinics` reports a file it cannot read
        if not isinstance(raw, dict):
            continue
        cliniko, providers = raw.get("cliniko"), raw.get("providers")
        named = {(cliniko or {}).get("account") if isinstance(cliniko, dict) else None}
        if isinstance(providers, dict):
            named |= {providers.get("email"), providers.get("sms")}
        taken = sorted(ours & {n for n in named if isinstance(n, str)})
        if taken:
            raise ConnectFailed(
                "relay",
                "block_of_another_clinic",
                f"{path} names the block(s) {', '.join(taken)}, which connecting '{clinic}' "
                "would save over (even with --force), giving that clinic this account's "
                "credentials. Connect this clinic under another name.",
            )


def pick_business(facts: ClinikoFacts, choice: str | None) -> Business:
    """The business named (by id or name, any case) or the only one; else a clear error."""
    from tasks.connect import ConnectFailed

    if choice:
        wanted = choice.strip().lower()
        for b in facts.businesses:
            if wanted in (b.id, b.name.lower()):
                return b
    elif len(facts.businesses) == 1:
        return facts.businesses[0]
    listed = "; ".join(f"{b.id} ({b.name})" for b in facts.businesses)
    what = f"no business '{choice}'" if choice else "the key's user sees several businesses"
    raise ConnectFailed(
        "Cliniko", "choose_business", f"{what}: pass --business with one of: {listed}."
    )


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _comment(text: str) -> str:
    return " ".join(str(text).split())  # one line, whatever Cliniko's names contain


def postmark_handles_unsubscribes(handling: str | None) -> bool:
    """What dispatch does with the marketing stream's ``UnsubscribeHandlingType``
    (tasks/providers/postmark.py ``managed_unsubscribe``): ``Postmark`` is Postmark's link and
    headers; anything else (``Custom``, ``None``, not said) is ours."""
    return handling == "Postmark"


def _unsubscribe_comment(accounts: Accounts, handling: str | None, stream: str) -> list[str]:
    """Who handles marketing email's unsubscribes, so the advice on ``unsubscribe_url`` fits."""
    serve = "`relay serve-unsubscribe`"
    if accounts.email == "outbox":
        return [
            f"# ^ unsubscribe_url: set the public address of {serve} before any",
            "#   marketing email goes out.",
        ]
    if postmark_handles_unsubscribes(handling):
        return [
            "# ^ unsubscribe_url: not used by marketing email. Postmark handles unsubscribes on",
            f"#   stream '{stream}' (UnsubscribeHandlingType: Postmark, Postmark's default): it",
            "#   puts its own link and List-Unsubscribe headers in every marketing email, and each",
            "#   tick imports who unsubscribed from the stream's suppressions. If Postmark support",
            f"#   switches the stream to Custom, set this to the public address of {serve}",
            "#   first: relay then puts this link in marketing email.",
        ]
    return [
        f"# ^ unsubscribe_url: relay handles unsubscribes on stream '{stream}'",
        f"#   (UnsubscribeHandlingType: {handling or 'not given'}): every marketing email carries",
        "#   this link and its List-Unsubscribe headers. Set it to the public address of",
        f"#   {serve} before any marketing email goes out.",
    ]


def render_clinic_yaml(
    clinic: str,
    name: str | None,
    business: Business,
    facts: ClinikoFacts,
    accounts: Accounts,
    *,
    unsubscribes: str | None = None,
    marketing_stream: str = "broadcast",
) -> str:
    """The file's text. ``unsubscribes``: the Postmark marketing stream's
    ``UnsubscribeHandlingType`` as ``relay connect`` read it (unused with the outbox)."""
    missing = [f for f, v in (("time zone", business.time_zone), ("country", business.country))
               if not v]  # fmt: skip
    if missing:
        from tasks.connect import ConnectFailed

        raise ConnectFailed(
            "Cliniko",
            "incomplete_business",
            f"the business '{business.name}' has no {' and no '.join(missing)} in Cliniko "
            "(Settings → Businesses → the business): set them there and run connect again.",
        )
    assert business.country is not None  # a business without one is refused just above
    display, address = parseaddr(accounts.from_address or "")
    sender = {
        "name": display or name or business.name,
        "email": address or business.reply_to or "hello@clinic.example",
        "reply_to": business.reply_to,
        "phone": "",
        "website": business.website or "",
        "address": business.address,
    }
    today = datetime.now(UTC).date().isoformat()
    parts = [
        f"# Written by `relay connect {clinic}` on {today} from Cliniko (shard {facts.shard},",
        f"# business {business.id}: {_comment(business.name)}). Credentials live in the Prefect",
        "# blocks named below, never here. Nothing is sent until you switch a trigger on:",
        "# preview first (relay preview trigger NAME --days 7 --clinic " + clinic + ").",
        _dump(
            {
                "clinic": clinic,
                "name": name or business.name,
                "time_zone": business.time_zone,
                "country": business.country.upper(),
                "cliniko": {"account": accounts.cliniko},
                "sync": {
                    "overlap_minutes": 5,
                    "reconcile_every_hours": 24,
                    "stale_after_minutes": 20,
                },
                # the tick polls for bookings until the next one (docs/scaling.md, Fast lane)
                "fast_lane": {"enabled": True, "requests_per_minute": 50},
                "marketing_list": {
                    "active_patient_limit": 24,
                    "size_cap": None,
                    "cap_keeps": "most_recent_visit",
                    "honour_cliniko_email_opt_in": True,
                },
            }  # fmt: skip
        ).rstrip(),
        "",
        "# Appointment types in Cliniko (name: category), for trigger filters and exclusions:",
        *[
            f"#   {_comment(t)}: {_comment(c) if c else '(no category)'}"
            for t, c in facts.appointment_types
        ],
        "# Categories: " + (", ".join(_comment(c) for c in facts.categories) or "none"),
        "# tag_categories: categories of admin-only 'tag' appointments that are not visits.",
        "tag_categories: []",
        "",
        _dump(
            {
                "providers": {
                    "email": accounts.email,
                    "sms": accounts.sms,
                    "sender": sender,
                    "unsubscribe_url": "http://127.0.0.1:8765/unsubscribe",
                }
            }
        ).rstrip(),
        *_unsubscribe_comment(accounts, unsubscribes, marketing_stream),
        "# ^ sender.phone: Cliniko's business has no phone field (contact_information is free",
        "#   text), so set the clinic's number here: the reminder, welcome and recall print it.",
        "",
        "# Triggers (tasks/triggers/definition.py documents every setting): all off.",
        _dump({"triggers": _triggers(accounts)}).rstrip(),
        "",
        _EXAMPLES,
        _dump(
            {
                "marketing": {
                    "frequency_cap": {"messages": 2, "days": 7},
                    "priority": ["trigger", "journey", "campaign"],
                    "quiet_hours": {"start": "20:00", "end": "09:00"},
                }
            }
        ).rstrip(),
    ]
    return "\n".join(parts) + "\n"


def _triggers(accounts: Accounts) -> list[dict]:
    reminder_channel = "sms" if accounts.sms != "outbox" or accounts.email == "outbox" else None
    triggers = []
    if reminder_channel:
        triggers.append(
            {
                "name": "sms-reminder-24h",
                "description": "SMS reminder 24 hours before",
                "enabled": False,
                "event": "before_appointment",
                "timing": "24 hours before",
                "last_minute": "send",
                "grace": "2 hours",
                "channel": "sms",
                "template": "reminder-24h",
                "purpose": "transactional",
            }  # fmt: skip
        )
    triggers += [
        {"name": "welcome-first-visit", "description": "Welcome email 2 days before a first visit",
         "enabled": False, "event": "first_appointment", "timing": "2 days before",
         "last_minute": "send", "grace": "1 day", "channel": "email", "template": "welcome",
         "purpose": "transactional"},
        {"name": "recall-6-weeks", "description": "Recall 6 weeks after a visit, unless rebooked",
         "enabled": False, "event": "after_appointment", "timing": "6 weeks after",
         "grace": "1 day", "channel": "email", "template": "recall", "purpose": "marketing",
         "filters": {"no_future_appointment": True}},
    ]  # fmt: skip
    return triggers


_EXAMPLES = """\
# Journeys and campaigns have no switch: one goes live as soon as it is in this file (a campaign
# when you confirm it). Uncomment one when you are ready, after previewing its segment.
# journeys:
#   - name: birthday
#     entry: {date_field: date_of_birth, at: "09:00"}
#     steps:
#       - {send: email, template: birthday, within: 1 day}
#     reentry: after_leaving
# campaigns:
#   - name: recall-90-179
#     segment: recall_90_179
#     channel: email
#     template: recall-checkin
#     per_minute: 100
"""
