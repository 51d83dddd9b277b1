"""Campaigns on a hand-made clinic: preview writes nothing, confirmation is explicit and once,
the audience is frozen into the ledger at the scheduled time, sending is throttled and resumable,
and the re-check drops people who left the segment or a cancelled campaign."""

from __future__ import annotations

import importlib.util
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.marketing import campaigns
from tasks.marketing.campaigns import CampaignError
from tasks.models import runner as models

_spec = importlib.util.spec_from_file_location(
    "journey_clinic", Path(__file__).with_name("journey_clinic.py")
)
journey_clinic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(journey_clinic)

RECALL = {"name": "autumn-recall", "segment": "recall_90_179", "channel": "email",
          "template": "recall-checkin", "per_minute": 2}  # fmt: skip


@pytest.fixture
def clinic():
    c = journey_clinic.Clinic(campaigns=[RECALL], marketing={"frequency_cap": None})
    for p in range(1, 6):
        c.patient(p)
        c.visit(p, days_ago=100 + p)
    c.patient(6, email=None)  # in the band, on no list
    c.visit(6, days_ago=120)
    c.patient(7)
    c.visit(7, days_ago=30)  # not in the band
    c.unsubscribe("patient5@example.com")
    c.build()
    yield c
    c.con.close()


def counts(clinic):
    return dict(
        clinic.con.execute(
            "SELECT status, count(*) FROM state.messages GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )


def test_preview_gives_the_audience_and_a_sample_and_writes_nothing(clinic):
    preview = campaigns.preview(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    assert (preview.segment_size, preview.not_on_list, preview.audience) == (6, 2, 4)
    assert preview.status == "draft" and preview.ledger == {}
    assert [p for p, _, _ in preview.sample] == [1, 2, 3, 4]
    assert preview.rendered.subject == "Time for a check-in, Name1?"
    assert "patient" not in repr(preview) and "Name1" not in str(preview.counts())
    assert clinic.con.execute("SELECT count(*) FROM state.campaigns").fetchone()[0] == 0
    assert counts(clinic) == {}


def test_confirming_freezes_the_audience_into_the_ledger_once_with_campaign_patient_keys(clinic):
    result = campaigns.confirm(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    assert (result["audience"], result["queued"]) == (4, 4)
    keys = sorted(k for k, *_ in clinic.all_messages())
    assert keys == [f"campaign:autumn-recall:{p}:once" for p in (1, 2, 3, 4)]
    with pytest.raises(CampaignError, match="already confirmed .* a campaign is sent once"):
        campaigns.confirm(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    assert len(clinic.all_messages()) == 4


def test_sending_is_throttled_and_resumes_where_the_ledger_says(clinic, tmp_path):
    campaigns.confirm(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    due = [
        r[0]
        for r in clinic.con.execute(
            "SELECT due_at FROM state.messages ORDER BY patient_id"
        ).fetchall()
    ]
    start = clinic.now
    assert due == [
        start,
        start,
        start + timedelta(minutes=1),
        start + timedelta(minutes=1),
    ]
    clinic.send(tmp_path)
    assert counts(clinic) == {"planned": 2, "sent": 2}
    clinic.advance(minutes=1)
    clinic.send(tmp_path)
    clinic.send(tmp_path)
    assert counts(clinic) == {"sent": 4}
    assert len(list(tmp_path.glob("*.json"))) == 4
    # cancelled now, it says nothing was left (it said "0 planned messages will not be sent")
    assert campaigns.cancel_said(clinic.con, "autumn-recall", clinic.now) == (
        "Cancelled autumn-recall: nothing was left to send (4 sent before)."
    )


def test_a_tick_sends_every_row_of_the_campaign_that_has_come_due(tmp_path):
    """per_minute spreads due times; each tick's dispatch sends all that have come due, so a
    tick every 5 minutes sends up to 5 x per_minute together (README, campaigns)."""
    c = journey_clinic.Clinic(campaigns=[RECALL], marketing={"frequency_cap": None})
    for p in range(1, 9):
        c.patient(p)
        c.visit(p, days_ago=100 + p)
    c.build()
    campaigns.confirm(c.con, c.cfg(), "autumn-recall", c.now)
    c.send(tmp_path)
    assert counts(c) == {"planned": 6, "sent": 2}
    c.advance(minutes=5)
    c.send(tmp_path)
    assert counts(c) == {"sent": 8}
    c.con.close()


def test_a_scheduled_campaign_is_frozen_at_its_local_send_time_with_the_audience_of_then(clinic):
    # 4 November 2026 09:00 in Melbourne, written without an offset = 3 November 22:00 UTC
    local = {**RECALL, "send_at": "2026-11-04T09:00:00"}
    cfg = clinic.cfg(campaigns=[local])
    result = campaigns.confirm(clinic.con, cfg, "autumn-recall", clinic.now)
    assert result["queued"] is None and counts(clinic) == {}
    assert campaigns.freeze_due(clinic.con, cfg, clinic.now + timedelta(hours=22)) == {}
    clinic.book(2, days_ahead=5)  # patient 2 books before the campaign goes: out of the band
    clinic.advance(hours=24)
    clinic.build()
    assert campaigns.freeze_due(clinic.con, cfg, clinic.now) == {"autumn-recall": 3}
    assert sorted(p for *_, p in clinic.all_messages()) == [1, 3, 4]
    start = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)
    assert min(
        r[0] for r in clinic.con.execute("SELECT due_at FROM state.messages").fetchall()
    ) == max(start, clinic.now)


def test_someone_who_books_after_the_freeze_is_skipped_and_a_cancelled_campaign_stops(
    clinic, tmp_path
):
    campaigns.confirm(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)
    clinic.book(1, days_ahead=5)
    clinic.advance(seconds=10)
    clinic.build()
    clinic.send(tmp_path)
    skipped = clinic.messages(status="skipped")
    assert [(r.patient_id, r.status_reason) for r in skipped] == [
        (1, "left the segment recall_90_179 after the audience was frozen")
    ]
    assert campaigns.cancel_said(clinic.con, "autumn-recall", clinic.now) == (
        "Cancelled autumn-recall: 2 planned messages will not be sent (1 sent before)."
    )
    clinic.advance(minutes=5)
    clinic.send(tmp_path)
    assert counts(clinic) == {"cancelled": 2, "sent": 1, "skipped": 1}
    # Cancelled again, it says it was; it said "Cancelled autumn-recall: 0 planned messages".
    said = campaigns.cancel_said(clinic.con, "autumn-recall", clinic.now)
    assert said.startswith("autumn-recall was already cancelled (") and "nothing more" in said
    assert (
        campaigns.preview(clinic.con, clinic.cfg(), "autumn-recall", clinic.now).status
        == "cancelled"
    )


def test_a_crash_while_freezing_leaves_nothing_half_written(clinic, monkeypatch):
    cfg = clinic.cfg(campaigns=[{**RECALL, "send_at": "2026-11-04T09:00:00"}])
    campaigns.confirm(clinic.con, cfg, "autumn-recall", clinic.now)
    real = campaigns._freeze

    def dies(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("killed after the ledger rows, before the campaign row")

    monkeypatch.setattr(campaigns, "_freeze", dies)
    later = clinic.now + timedelta(days=2)
    with pytest.raises(KeyboardInterrupt):
        campaigns.freeze_due(clinic.con, cfg, later)
    assert counts(clinic) == {}
    monkeypatch.undo()
    assert campaigns.freeze_due(clinic.con, cfg, later) == {"autumn-recall": 4}
    assert campaigns.freeze_due(clinic.con, cfg, later) == {}


def test_an_unknown_campaign_or_a_segment_never_built_is_a_clear_error(clinic):
    with pytest.raises(
        CampaignError, match="no campaign 'nope' under campaigns: \\(known: autumn-recall\\)"
    ):
        campaigns.preview(clinic.con, clinic.cfg(), "nope", clinic.now)
    clinic.con.execute("DELETE FROM state.audiences WHERE audience = 'segments.recall_90_179'")
    with pytest.raises(CampaignError, match="segment 'recall_90_179' has not been built yet"):
        campaigns.preview(clinic.con, clinic.cfg(), "autumn-recall", clinic.now)


def test_a_confirmed_segment_whose_file_was_removed_waits_and_the_other_campaigns_go(
    clinic, tmp_path
):
    """clinic.yaml may move on after a confirmation (here to another segment); what is sent is
    what was confirmed. Its segment's file removed, that campaign cannot be frozen: it waits,
    with an error saying what to do, and another campaign due the same tick is frozen."""
    later = {"send_at": (clinic.now + timedelta(days=1)).isoformat()}
    other = {**RECALL, **later, "name": "welcome-offer", "segment": "new_patients"}
    cfg = clinic.cfg(campaigns=[{**RECALL, **later}, other])
    campaigns.confirm(clinic.con, cfg, "autumn-recall", clinic.now)
    campaigns.confirm(clinic.con, cfg, "welcome-offer", clinic.now)
    sql = tmp_path / "sql"
    shutil.copytree(journey_clinic.sql_dir(), sql)
    (sql / "segments" / "recall_90_179.sql").unlink()
    edited = clinic.cfg(campaigns=[{**RECALL, **later, "segment": "upcoming_appointment"}, other])
    clinic.advance(days=1, minutes=1)
    models.build(clinic.con, models.ListSettings(active_patient_months=24), sql_dir=sql,
                 now=clinic.now)  # fmt: skip

    with pytest.raises(CampaignError) as raised:
        campaigns.freeze_due(clinic.con, edited, clinic.now)
    assert str(raised.value) == (
        "test: campaign 'autumn-recall': segment 'recall_90_179' is no longer built: "
        "sql/segments/recall_90_179.sql was removed. Restore it and run `relay models build`, "
        "or run `relay campaign cancel autumn-recall`."
    )
    assert clinic.con.execute(
        "SELECT source_name, status, count(*) FROM state.messages GROUP BY ALL"
    ).fetchall() == [("welcome-offer", "planned", 5)]
    assert clinic.con.execute(
        "SELECT campaign FROM state.campaigns WHERE audience_frozen_at IS NULL"
    ).fetchall() == [("autumn-recall",)]


def test_cancelling_a_campaign_not_frozen_yet_says_none_of_it_goes(clinic):
    # It said "Cancelled NAME: 0 planned messages will not be sent", hiding that the whole
    # campaign was stopped.
    later = clinic.cfg(campaigns=[{**RECALL, "send_at": "2026-11-04T09:00:00"}])
    campaigns.confirm(clinic.con, later, "autumn-recall", clinic.now)
    assert campaigns.cancel_said(clinic.con, "autumn-recall", clinic.now) == (
        "Cancelled autumn-recall: its audience will not be frozen, and none of it goes."
    )
