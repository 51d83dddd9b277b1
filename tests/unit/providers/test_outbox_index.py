"""The outbox's index as a person reads it: which trigger, journey or campaign sent each message,
when (in the clinic's time zone), and which run the folder holds."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import pytest

from tasks.messages import ledger
from tasks.messages.dispatch import Unsubscribe, dispatch
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.messages.prepare import Ready
from tasks.messages.templates import Templates, build_context
from tasks.providers.outbox import OutboxProvider, list_messages, start_run, write_index
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # 09:30 on 2 March in Melbourne (AEDT, +11)
ZONE = "Australia/Melbourne"
CLINIC = {"name": "Demo Physio", "phone": "03 9000 1234", "website": "https://demo.example",
          "address": "12 Swan St", "email": "hello@demo.example"}  # fmt: skip


def _ready(row):
    context = build_context(
        clinic=CLINIC, first_name=f"Pat{row.patient_id}",
        appointment_starts_at=NOW + timedelta(days=1), time_zone=ZONE,
        appointment_type="Follow-up", practitioner="Dr Who", business="Richmond",
    )  # fmt: skip
    return Ready(to=f"pat{row.patient_id}@example.com", context=context)


def _send(folder, planned, now=NOW):
    con = memory_db()
    try:
        ledger.insert_planned(con, planned, now)
        outbox = OutboxProvider(folder, email_from="Demo <d@demo.example>", sms_from="Demo",
                                time_zone=ZONE)  # fmt: skip
        return dispatch(
            con, providers={"email": outbox, "sms": outbox}, prepare=_ready,
            templates=Templates(), unsubscribe=Unsubscribe("demo", "https://r.example/u", b"k"),
            clock=lambda: now,
        )  # fmt: skip
    finally:
        con.close()


def _planned(kind, name, patient_id, template, purpose):
    return PlannedMessage(
        send_key=make_send_key(kind, name, patient_id, "once"), source_kind=kind,
        source_name=name, patient_id=patient_id, appointment_id=None, channel="email",
        purpose=purpose, template=template, due_at=NOW, expires_at=None,
    )  # fmt: skip


@pytest.fixture
def sent(tmp_path):
    folder = tmp_path / "outbox"
    result = _send(folder, [
        _planned("trigger", "welcome-insurance", 1, "welcome", "transactional"),
        _planned("journey", "new-patient-series", 2, "new-patient-welcome", "marketing"),
        _planned("campaign", "recall-90-179", 3, "recall-checkin", "marketing"),
    ])  # fmt: skip
    assert result.counts["sent"] == 3
    return folder


def test_the_index_names_the_trigger_journey_or_campaign_that_sent_each_message(sent):
    page = (sent / "index.html").read_text(encoding="utf-8")
    assert "<th>Sent by</th>" in page
    for source in ("trigger welcome-insurance", "journey new-patient-series",
                   "campaign recall-90-179"):  # fmt: skip
        assert f"<td>{source}</td>" in page
    by_key = {m["send_key"].split(":")[1]: m["source"] for m in list_messages(sent)}
    assert by_key == {"welcome-insurance": "trigger welcome-insurance",
                      "new-patient-series": "journey new-patient-series",
                      "recall-90-179": "campaign recall-90-179"}  # fmt: skip


def test_the_index_shows_times_in_the_clinics_zone_and_says_which_zone(sent):
    (first, *_) = list_messages(sent)
    # rewrite one record's time to a known instant: the index must show it in Melbourne time
    record = sent / f"{first['stem']}.json"
    record.write_text(record.read_text().replace(first["written_at"], NOW.isoformat()))
    page = write_index(sent, time_zone=ZONE).read_text(encoding="utf-8")
    assert f"<th>Written ({ZONE})</th>" in page
    assert "<td>2026-03-02 09:30:00</td>" in page
    assert "2026-03-01 22:30" not in page


def test_the_index_adds_no_personal_data_beyond_the_recipient_the_files_already_show(sent):
    page = (sent / "index.html").read_text(encoding="utf-8")
    # the recipient (the outbox stands in for a mailbox) and the subject; nothing else of theirs
    assert "pat1@example.com" in page
    for m in list_messages(sent):
        assert m["send_key"] not in page  # patient ids stay in the files, not the listing
    assert set(list_messages(sent)[0]) == {
        "send_key",
        "to",
        "title",
        "channel",
        "source",
        "file",
        "written_at",
        "stem",
    }


def test_a_new_run_starts_an_empty_outbox_that_says_which_run_it_is(sent):
    assert len(list_messages(sent)) == 3
    start_run(sent, "relay demo --seed 7 --patients 50", now=NOW)
    assert list_messages(sent) == []
    page = (sent / "index.html").read_text(encoding="utf-8")
    assert "Outbox: 0 messages" in page
    assert (
        html.escape("Run: relay demo --seed 7 --patients 50, started 2026-03-01 22:30:00") in page
    )
    # the same send key in the new run is written again, not taken for the old run's file
    result = _send(sent, [_planned("trigger", "welcome-insurance", 1, "welcome", "transactional")])
    assert result.counts["sent"] == 1
    (again,) = list_messages(sent)
    assert again["source"] == "trigger welcome-insurance"
    assert (sent / again["file"]).exists()
    assert "Outbox: 1 message<" in (sent / "index.html").read_text(encoding="utf-8")


def test_relay_outbox_lists_who_sent_each_message_in_the_clinics_time_and_which_run(data_dir):
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.providers.outbox import outbox_dir

    folder = outbox_dir("demo")  # the demo clinic's zone: Australia/Melbourne, as ZONE
    start_run(folder, "relay demo --seed 1 --patients 500", now=NOW)
    _send(folder, [_planned("journey", "birthday", 4, "birthday", "marketing")])
    (listed,) = list_messages(folder)
    record = folder / f"{listed['stem']}.json"
    record.write_text(record.read_text().replace(listed["written_at"], NOW.isoformat()))

    out = CliRunner().invoke(app, ["outbox", "--clinic", "demo"])
    assert out.exit_code == 0, out.output
    assert "Run: relay demo --seed 1 --patients 500, started 2026-03-02 09:30:00" in out.output
    (line,) = [ln for ln in out.output.splitlines() if listed["send_key"] in ln]
    assert line.startswith("2026-03-02 09:30:00  email  journey birthday")
    assert "(times in Australia/Melbourne)" in out.output
    assert "pat4@" not in out.output and "Pat4" not in out.output
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "<td>2026-03-02 09:30:00</td><td>journey birthday</td>" in page


def test_relay_outbox_before_anything_was_sent_says_so_and_makes_no_folder(data_dir):
    # It wrote index.html into a new, empty folder, as if an outbox were in use
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.providers.outbox import outbox_dir

    out = CliRunner().invoke(app, ["outbox", "--clinic", "demo"])
    assert out.exit_code == 0, out.output
    assert "No outbox at" in out.output and "nothing has been sent" in out.output
    assert not outbox_dir("demo").exists()
