"""The campaign flow: runs on demand with parameters (``relay campaign send NAME --confirm``, or a
deployment run from the Prefect UI). Without ``confirm`` it only counts the audience; with it, it
records the confirmation once and freezes the audience into the ledger when the campaign's time
has come (otherwise the tick's journeys step does that at ``send_at``). Dispatch sends, throttled.

Results and artifacts are counts only: the preview's sample belongs to ``relay campaign preview``
in the operator's terminal, never to Prefect.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.artifacts import artifact_key
from tasks import tick
from tasks.config import load_clinic
from tasks.homecopy import require_current_copy
from tasks.marketing import campaigns
from tasks.models import runner as models
from tasks.warehouse import data_out_of_errors, open_db


@flow(name="campaign", flow_run_name="campaign-{clinic}-{campaign}")
def send_campaign(clinic: str, campaign: str, confirm: bool = False, force: bool = False) -> dict:
    """Count the campaign's audience; with ``confirm=True``, confirm it (once) and queue it.
    ``force``: confirm although its send_at has passed (refused otherwise)."""
    with data_out_of_errors():
        config = load_clinic(clinic)
        now = datetime.now(UTC)
        with open_db(config.database_path, create=False) as con:
            if confirm:  # confirmed on a copy the home never reads, it would never go
                require_current_copy(con, config.clinic)
            models.require_good_build(con)
            held = tick.held_sources(con, config).get(("campaign", campaign))
            if held and confirm:  # confirming freezes an audience: not from a segment that failed
                raise campaigns.CampaignError(f"{config.clinic}: campaign {campaign} waits: {held}")
            preview = campaigns.preview(con, config, campaign, now, sample_size=0).counts()
            result = campaigns.confirm(con, config, campaign, now, force=force) if confirm else None
        if result is None:  # what a person who ran it from the UI came to see: counts only
            get_run_logger().info(
                "campaign %s (%s) not confirmed, counted only: segment %s: %s patients; not on "
                "the %s marketing list: %s; suppressed: %s; audience %s messages, send at %s. "
                "To send it: run it again with confirm=true.",
                campaign, preview["status"], preview["segment"], preview["segment_size"],
                preview["channel"], preview["not_on_list"], preview["suppressed"],
                preview["audience"], preview["send_at"],
            )  # fmt: skip
            return {"preview": preview, "confirmed": False}
        create_markdown_artifact(
            f"# Campaign {campaign}\n\nConfirmed ({result['confirmation_id']}) for "
            f"{result['audience']} of {result['segment_size']} in segment {preview['segment']}; "
            + (
                f"{result['queued']} messages queued."
                if result["queued"] is not None
                else f"the audience is frozen and sent from {preview['send_at']}."
            ),
            key=artifact_key("campaign", config.clinic, campaign),
            description="Campaign confirmation (counts only)",
        )
        return {"preview": preview, "confirmed": True, **result}
