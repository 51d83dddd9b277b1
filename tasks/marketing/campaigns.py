"""Campaigns: a one-off send of a template to a segment at a scheduled time.

The life of a campaign (``campaigns:`` in clinic.yaml):

1. **Preview** (``relay campaign preview NAME``): the segment's size, how many of them are on the
   channel's marketing list and not suppressed (the audience), and a sample; nothing is written.
2. **Confirm** (``relay campaign send NAME --confirm``): the operator's explicit go-ahead is
   recorded in ``state.campaigns`` with an id and the audience size they saw. A campaign is
   confirmed once: a second confirmation is refused, however it is asked for.
3. **Freeze** at ``send_at`` (at once when that has passed; otherwise by the tick's journeys step):
   the audience as it is then goes into the ledger, one row per patient with the key
   ``campaign:<name>:<patient>:once``, in the same transaction that marks the campaign frozen.
   Rows are spread over time (``per_minute``), which is how sending is throttled; dispatch sends
   whatever is due each tick, so a stopped run resumes where the ledger says.
4. Just before each message goes, the re-check (:class:`Preparer`) drops it if the campaign was
   cancelled or the patient left the segment since the freeze; dispatch adds the suppression
   check and the marketing gate the frequency cap and quiet hours.

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
from tasks.warehouse import transaction


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
        "SELECT 1 FROM state.audiences WHERE audience = ? AND retired_at IS NULL",
        [f"segments.{campaign.segment}"],
    ).fetchone()
    if not built:
        raise CampaignError(
            f"{cfg.source or cfg.clinic}: campaign '{campaign.name}': segment "
            f"'{campaign.segment}' has not been built yet. Run `relay models build` first."
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
    size = con.execute(f"SELECT count(*) FROM {segment}").fetchone()[0]
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
        }


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
    """Who would get it, and how it reads for one of them. Writes nothing."""
    campaign = find(cfg, name)
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


def confirm(con: duckdb.DuckDBPyConnection, cfg: ClinicConfig, name: str, now: datetime) -> dict:
    """Record the operator's go-ahead (once), and freeze at once when send_at has come."""
    campaign = find(cfg, name)
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
            "confirmed_at, confirmed_audience, send_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [name, campaign.segment, campaign.channel, campaign.template, confirmation_id, now,
             len(kept), scheduled_at(cfg, campaign, now)],
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
    """The audience as it is now into the ledger, spread at ``per_minute`` from ``start``."""
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
    A ``held`` one (its segment was not rebuilt) waits for a good build, unfrozen."""
    due = con.execute(
        "SELECT campaign, send_at FROM state.campaigns WHERE audience_frozen_at IS NULL "
        "AND cancelled_at IS NULL AND send_at <= ? ORDER BY send_at",
        [now],
    ).fetchall()
    queued = {}
    configured = {c.name for c in cfg.campaigns}
    missing = [name for name, _ in due if name not in configured]
    for name, send_at in due:
        if name in missing or name in held:
            continue
        campaign = find(cfg, name)
        with transaction(con):
            queued[name] = _freeze(con, cfg, campaign, max(send_at, now), now)
            con.execute(
                "UPDATE state.campaigns SET audience_frozen_at = ?, audience_size = ? "
                "WHERE campaign = ? AND audience_frozen_at IS NULL",
                [now, queued[name], name],
            )
    if missing:
        raise CampaignError(
            f"{cfg.source or cfg.clinic}: campaign(s) {', '.join(missing)} were confirmed but are "
            "no longer under campaigns:, so they cannot be sent. Put them back, or run "
            "`relay campaign cancel NAME`."
        )
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
        for message in self.planned(name, segment):
            if cancelled:
                decision = Skip("campaign cancelled", cancel=True)
            elif segment and not message.in_segment:
                decision = Skip(f"left the segment {segment} after the audience was frozen")
            else:
                decision = self.to_list_address(message)
            decisions[message.message_id] = decision
        return decisions
