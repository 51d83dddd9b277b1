"""Campaigns: a one-off send of a template to a segment at a scheduled time.

The life of a campaign (``campaigns:`` in clinic.yaml):

1. **Preview** (``relay campaign preview NAME``): the segment's size, how many of them are on the
   channel's marketing list and not suppressed (the audience), and a sample; nothing is written.
2. **Confirm** (``relay campaign send NAME --confirm``): the operator's explicit go-ahead is
   recorded in ``state.campaigns`` with an id, the audience size they saw and what is sent:
   segment, channel, template, throttle and audience rule (:data:`AUDIENCE_RULE`). From then on
   only the record counts: editing the campaign in clinic.yaml changes nothing of what goes
   (the preview says what differs). A campaign is confirmed once: a second confirmation is
   refused, however it is asked for. A ``send_at`` already past is refused unless forced.
3. **Freeze** at ``send_at`` (at once when that has passed; otherwise by the tick's journeys step):
   the audience as it is then goes into the ledger, one row per patient with the key
   ``campaign:<name>:<patient>:once``, in the same transaction that marks the campaign frozen.
   Rows are spread over time (``per_minute``), which is how sending is throttled; dispatch sends
   whatever is due each tick, so a stopped run resumes where the ledger says.
4. Just before each message goes, the re-check (:class:`Preparer`) drops it if the campaign was
   cancelled or the patient left the confirmed segment since the freeze; dispatch adds the
   suppression check and the marketing gate the frequency cap and quiet hours.

Nothing here logs personal data. The preview's sample is for the operator's terminal only.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import Campaign, ClinicConfig
from tasks.errors import UserFacingError
from tasks.marketing.recheck import SourcePreparer, marketing_context
from tasks.messages import ledger
from tasks.messages.channels import MARKETING_LISTS
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready, Skip, clinic_details
from tasks.messages.templates import Rendered, TemplateError, Templates
from tasks.warehouse import one, transaction


class CampaignError(UserFacingError):
    """A campaign that cannot be previewed or sent as asked; says which and what to do."""


def find(cfg: ClinicConfig, name: str) -> Campaign:
    for campaign in cfg.campaigns:
        if campaign.name == name:
            return campaign
    known = ", ".join(c.name for c in cfg.campaigns) or "none"
    raise CampaignError(
        f"{cfg.source or cfg.clinic}: no campaign '{name}' under campaigns: (known: {known})."
    )


# Who a campaign goes to, recorded at confirmation: a campaign is frozen only under the rule its
# operator confirmed (a confirmation recorded before the rule was, has this one).
AUDIENCE_RULE = (
    "in the segment at send_at, subscribed to the channel's marketing list, not suppressed "
    "for marketing"
)


def send_key(campaign: str, patient_id: int) -> str:
    return make_send_key("campaign", campaign, patient_id, "once")


def scheduled_at(cfg: ClinicConfig, campaign: Campaign, now: datetime) -> datetime:
    """send_at in UTC (a time without an offset is the clinic's local time); now when unset."""
    if campaign.send_at is None:
        return now
    at = campaign.send_at
    if at.tzinfo is None:
        at = at.replace(tzinfo=ZoneInfo(cfg.time_zone))
    return at.astimezone(UTC)


def _segment_built(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, campaign: Campaign) -> None:
    built = con.execute(
        "SELECT retired_at FROM state.audiences WHERE audience = ?",
        [f"segments.{campaign.segment}"],
    ).fetchone()
    where = f"{cfg.source or cfg.clinic}: campaign '{campaign.name}': segment '{campaign.segment}'"
    if built is None:
        raise CampaignError(f"{where} has not been built yet. Run `relay models build` first.")
    if built[0] is not None:  # its file left sql/segments/ (tasks/models/runner.py retires it)
        raise CampaignError(
            f"{where} is no longer built: sql/segments/{campaign.segment}.sql was removed. "
            f"Restore it and run `relay models build`, or run `relay campaign cancel "
            f"{campaign.name}`."
        )


def audience(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, campaign: Campaign
) -> tuple[int, list[tuple[int, str]], int]:
    """(segment size, [(patient, address)] of the audience, suppressed count), by patient id.

    The audience: in the segment, subscribed to the channel's marketing list, not suppressed.
    """
    _segment_built(con, cfg, campaign)
    marketing_list = MARKETING_LISTS[campaign.channel]
    segment = f'segments."{campaign.segment}"'  # the name was checked against sql/segments/
    size = one(con, f"SELECT count(*) FROM {segment}")[0]
    rows = con.execute(
        f"""
        SELECT s.patient_id, l.{marketing_list.address_column}
        FROM {segment} s JOIN {marketing_list.table} l
            ON l.patient_id = s.patient_id AND l.status = 'subscribed'
        ORDER BY s.patient_id
        """
    ).fetchall()
    suppressed = ledger.suppressed_addresses(
        con, campaign.channel, [a for _, a in rows], "marketing"
    )
    kept = [
        (int(p), a)
        for p, a in rows
        if ledger.normalise_address(campaign.channel, a) not in suppressed
    ]
    return size, kept, len(rows) - len(kept)


@dataclass(frozen=True)
class Preview:
    campaign: str
    segment: str
    channel: str
    template: str
    send_at: datetime
    segment_size: int
    not_on_list: int  # in the segment, not subscribed to the channel's list
    suppressed: int  # subscribed at the last build, suppressed since
    audience: int
    status: str  # draft | confirmed | frozen | cancelled
    ledger: dict[str, int]  # message statuses once frozen
    per_minute: int = 100
    frozen_at: datetime | None = None  # when the audience went into the ledger (None: not yet)
    # once confirmed: how clinic.yaml now differs from what was confirmed (which is what goes)
    changed_since_confirm: tuple[str, ...] = ()
    # personal data: the operator's terminal only, never logs or Prefect results
    sample: tuple[tuple[int, str, str], ...] = dataclasses.field(repr=False, default=())
    rendered: Rendered | None = dataclasses.field(repr=False, default=None)
    template_problem: str | None = None

    def counts(self) -> dict:
        """What may go to logs and Prefect: no sample, no rendering."""
        return {
            "campaign": self.campaign,
            "segment": self.segment,
            "channel": self.channel,
            "send_at": self.send_at.isoformat(),
            "segment_size": self.segment_size,
            "not_on_list": self.not_on_list,
            "suppressed": self.suppressed,
            "audience": self.audience,
            "status": self.status,
            "ledger": self.ledger,
            "changed_since_confirm": list(self.changed_since_confirm),
        }


def confirmed(
    con: duckdb.DuckDBPyConnection, configured: Campaign
) -> tuple[Campaign, list[str]] | None:
    """The campaign as its operator confirmed it (what is sent), and how clinic.yaml now
    differs from that in words; None before confirmation."""
    row = con.execute(
        "SELECT segment, channel, template, coalesce(per_minute, ?), send_at, "
        "coalesce(audience_rule, ?) FROM state.campaigns WHERE campaign = ?",
        [configured.per_minute, AUDIENCE_RULE, configured.name],
    ).fetchone()
    if row is None:
        return None
    segment, channel, template, per_minute, send_at, rule = row
    if rule != AUDIENCE_RULE:
        raise CampaignError(
            f"campaign '{configured.name}' was confirmed for an audience rule this version no "
            f"longer applies ({rule}); cancel it (`relay campaign cancel {configured.name}`) and "
            "confirm it again under a new name."
        )
    record = configured.model_copy(
        update={"segment": segment, "channel": channel, "template": template,
                "per_minute": per_minute}
    )  # fmt: skip
    changed = [
        f"{field}: confirmed {getattr(record, field)}, clinic.yaml now says "
        f"{getattr(configured, field)}"
        for field in ("segment", "channel", "template", "per_minute")
        if getattr(record, field) != getattr(configured, field)
    ]
    return record, changed


def _state(con: duckdb.DuckDBPyConnection, name: str) -> tuple | None:
    return con.execute(
        "SELECT confirmed_at, send_at, audience_frozen_at, cancelled_at, confirmation_id, "
        "audience_size FROM state.campaigns WHERE campaign = ?",
        [name],
    ).fetchone()


def _status(row: tuple | None) -> str:
    if row is None:
        return "draft"
    if row[3] is not None:
        return "cancelled"
    return "frozen" if row[2] is not None else "confirmed"


def ledger_counts(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, int]:
    return dict(
        con.execute(
            "SELECT status, count(*) FROM state.messages WHERE source_kind = 'campaign' "
            "AND source_name = ? GROUP BY status ORDER BY status",
            [name],
        ).fetchall()
    )


def preview(
    con: duckdb.DuckDBPyConnection,
    cfg: ClinicConfig,
    name: str,
    now: datetime,
    *,
    sample_size: int = 5,
) -> Preview:
    """Who would get it, and how it reads for one of them. Writes nothing. Once confirmed, the
    campaign as confirmed (what goes), with what clinic.yaml changed since."""
    changed: list[str]
    campaign, changed = find(cfg, name), []
    record = confirmed(con, campaign)
    if record is not None:
        campaign, changed = record
    size, kept, suppressed = audience(con, cfg, campaign)
    # a spread-out sample, the same each time: every k-th patient
    step = max(1, len(kept) // max(1, sample_size))
    picked = kept[::step][:sample_size]
    sample, rendered, problem = [], None, None
    for patient_id, address in picked:
        found = con.execute(
            "SELECT greeting_name FROM marts.patients WHERE patient_id = ?", [patient_id]
        ).fetchone()
        sample.append((patient_id, found[0] if found else "", address))
    try:
        rendered = render_for(con, cfg, campaign, picked[0][0] if picked else None)
    except TemplateError as exc:
        problem = str(exc)
    row = _state(con, name)
    return Preview(
        campaign=name,
        segment=campaign.segment,
        channel=campaign.channel,
        template=campaign.template,
        send_at=row[1] if row else scheduled_at(cfg, campaign, now),
        segment_size=size,
        not_on_list=size - len(kept) - suppressed,
        suppressed=suppressed,
        audience=len(kept),
        status=_status(row),
        ledger=ledger_counts(con, name),
        per_minute=campaign.per_minute,
        frozen_at=row[2] if row else None,
        changed_since_confirm=tuple(changed),
        sample=tuple(sample),
        rendered=rendered,
        template_problem=problem,
    )


def render_for(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, campaign: Campaign, patient_id: int | None
) -> Rendered:
    """The campaign's message as this patient (or the sample patient) would get it."""
    found = None
    if patient_id is not None:
        found = con.execute(
            "SELECT first_name, preferred_first_name, last_name FROM marts.patients "
            "WHERE patient_id = ?",
            [patient_id],
        ).fetchone()
    first, preferred, last = found or ("Alexandra", "Alex", "Sample")
    context = marketing_context(
        clinic_details(cfg), first, preferred, last,
        unsubscribe_url=f"{cfg.providers.unsubscribe_url.rstrip('/')}/PREVIEW",
    )  # fmt: skip
    templates = Templates(cfg.folder)
    return templates.render(campaign.template, campaign.channel, context, marketing=True)


def past_send_at(cfg: ClinicConfig, campaign: Campaign, now: datetime) -> str | None:
    """Why confirming now would send at once although ``send_at`` named a moment (it has
    passed), in words; None when send_at is unset or still to come."""
    if campaign.send_at is None or scheduled_at(cfg, campaign, now) >= now:
        return None
    at = scheduled_at(cfg, campaign, now).astimezone(ZoneInfo(cfg.time_zone))
    return (
        f"campaign '{campaign.name}': send_at {at:%Y-%m-%d %H:%M} {cfg.time_zone} has passed, so "
        "confirming now sends it at once"
    )


def confirm(
    con: duckdb.DuckDBPyConnection,
    cfg: ClinicConfig,
    name: str,
    now: datetime,
    *,
    force: bool = False,
) -> dict:
    """Record the operator's go-ahead (once) with what is sent, and freeze at once when send_at
    has come. A send_at already past is refused unless ``force`` (it may be a stale date)."""
    campaign = find(cfg, name)
    late = past_send_at(cfg, campaign, now)
    if late and not force:
        raise CampaignError(
            f"{late}. Set a new send_at in clinic.yaml, or confirm with --force to send now."
        )
    size, kept, _ = audience(con, cfg, campaign)
    try:
        render_for(con, cfg, campaign, kept[0][0] if kept else None)
    except TemplateError as exc:
        raise CampaignError(f"campaign '{name}' cannot be sent: {exc}") from None
    confirmation_id = uuid.uuid4().hex[:12]
    with transaction(con):
        row = _state(con, name)
        if row is not None:
            raise CampaignError(
                f"campaign '{name}' was already confirmed at {row[0]:%Y-%m-%d %H:%M} UTC "
                f"(confirmation {row[4]}, {_status(row)}); a campaign is sent once. To send the "
                "same message again, add a campaign with a new name."
            )
        con.execute(
            "INSERT INTO state.campaigns (campaign, segment, channel, template, confirmation_id, "
            "confirmed_at, confirmed_audience, send_at, per_minute, audience_rule) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, campaign.segment, campaign.channel, campaign.template, confirmation_id, now,
             len(kept), scheduled_at(cfg, campaign, now), campaign.per_minute, AUDIENCE_RULE],
        )  # fmt: skip
    frozen = freeze_due(con, cfg, now).get(name)
    return {"campaign": name, "confirmation_id": confirmation_id, "audience": len(kept),
            "segment_size": size, "queued": frozen}  # fmt: skip


def _freeze(
    con: duckdb.DuckDBPyConnection,
    cfg: ClinicConfig,
    campaign: Campaign,
    start: datetime,
    now: datetime,
) -> int:
    """The audience as it is now into the ledger, spread at ``per_minute`` from ``start``.
    ``campaign`` is the confirmed record (:func:`confirmed`), never clinic.yaml's current one."""
    _, kept, _ = audience(con, cfg, campaign)
    messages = [
        PlannedMessage(
            send_key=send_key(campaign.name, patient_id),
            source_kind="campaign",
            source_name=campaign.name,
            patient_id=patient_id,
            channel=campaign.channel,
            purpose="marketing",
            template=campaign.template,
            due_at=start + timedelta(minutes=i // campaign.per_minute),
        )
        for i, (patient_id, _) in enumerate(kept)
    ]
    return ledger.insert_planned(con, messages, now)


def freeze_due(
    con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, now: datetime, held: Collection[str] = ()
) -> dict[str, int]:
    """Freeze every confirmed campaign whose moment has come: campaign -> messages queued.
    A ``held`` one (its segment was not rebuilt) waits for a good build, unfrozen. One that
    cannot be frozen (its segment gone, its entry gone from clinic.yaml) waits too, and the
    others are frozen before a CampaignError names every one that waits and what to do."""
    due = con.execute(
        "SELECT campaign, send_at FROM state.campaigns WHERE audience_frozen_at IS NULL "
        "AND cancelled_at IS NULL AND send_at <= ? ORDER BY send_at",
        [now],
    ).fetchall()
    queued = {}
    configured = {c.name for c in cfg.campaigns}
    missing = [name for name, _ in due if name not in configured]
    problems = []
    for name, send_at in due:
        if name in missing or name in held:
            continue
        try:
            record = confirmed(con, find(cfg, name))
            assert record is not None  # its state.campaigns row was read just above
            campaign, _ = record
            with transaction(con):
                queued[name] = _freeze(con, cfg, campaign, max(send_at, now), now)
                con.execute(
                    "UPDATE state.campaigns SET audience_frozen_at = ?, audience_size = ? "
                    "WHERE campaign = ? AND audience_frozen_at IS NULL",
                    [now, queued[name], name],
                )
        except CampaignError as exc:  # this campaign waits, unfrozen; the others go on
            problems.append(str(exc))
    if missing:
        problems.append(
            f"{cfg.source or cfg.clinic}: campaign(s) {', '.join(missing)} were confirmed but are "
            "no longer under campaigns:, so they cannot be sent. Put them back, or run "
            "`relay campaign cancel NAME`."
        )
    if problems:
        raise CampaignError(" ".join(problems))
    return queued


def cancel(con: duckdb.DuckDBPyConnection, name: str, now: datetime) -> int:
    """Stop a campaign: nothing more of it goes (what went, went). Returns messages cancelled."""
    with transaction(con):
        if _state(con, name) is None:
            raise CampaignError(
                f"campaign '{name}' was never confirmed: there is nothing to cancel"
            )
        con.execute(
            "UPDATE state.campaigns SET cancelled_at = coalesce(cancelled_at, ?) WHERE campaign = ?",
            [now, name],
        )
        ids = [
            r[0]
            for r in con.execute(
                "SELECT message_id FROM state.messages WHERE source_kind = 'campaign' "
                "AND source_name = ? AND status = 'planned'",
                [name],
            ).fetchall()
        ]
        return len(ledger.cancel(con, ids, "campaign cancelled by an operator", now))


def cancel_said(con: duckdb.DuckDBPyConnection, name: str, now: datetime) -> str:
    """``cancel``, and what it did in a sentence for the operator: a campaign already cancelled,
    one whose audience is not frozen yet, or one with nothing left to send says so (not
    "0 planned messages")."""
    before = _state(con, name)
    cancelled = cancel(con, name, now)
    if before is not None and before[3] is not None:
        return f"{name} was already cancelled ({before[3]:%Y-%m-%d %H:%M} UTC): nothing more goes."
    if before is not None and before[2] is None:
        return f"Cancelled {name}: its audience will not be frozen, and none of it goes."
    sent = ledger_counts(con, name).get("sent", 0)
    if not cancelled:
        return f"Cancelled {name}: nothing was left to send ({sent} sent before)."
    return f"Cancelled {name}: {cancelled} planned messages will not be sent ({sent} sent before)."


# --- the re-check before sending ---------------------------------------------------------------


class Preparer(SourcePreparer):
    """Dispatch's re-check of campaign rows (tasks/marketing/recheck.py): the campaign cancelled
    -> cancelled; left the campaign's segment since the freeze, or off the channel's marketing
    list now -> skipped. Dispatch then checks suppressions and renders.
    """

    kind = "campaign"

    def decide(self, name: str) -> dict[int, Ready | Skip]:
        found = self.con.execute(
            "SELECT segment, cancelled_at IS NOT NULL FROM state.campaigns WHERE campaign = ?",
            [name],
        ).fetchone()
        segment, cancelled = found if found else (None, True)
        decisions: dict[int, Ready | Skip] = {}
        decision: Ready | Skip
        for message in self.planned(name, segment):
            if cancelled:
                decision = Skip("campaign cancelled", cancel=True)
            elif segment and not message.in_segment:
                decision = Skip(f"left the segment {segment} after the audience was frozen")
            else:
                decision = self.to_list_address(message)
            decisions[message.message_id] = decision
        return decisions
