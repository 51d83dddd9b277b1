"""The tick's own rules: the circuit breaker, late ticks, the summary's counts, the held database."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tasks import tick, warehouse
from tasks.messages import ledger
from tasks.tick import COMPLETED, FAILED, Freshness, Step, Summary

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SYNCED = Step("sync", COMPLETED)


def test_fresh_data_from_a_completed_sync_lets_planning_and_sending_go_ahead():
    assert tick.breaker(SYNCED, Freshness(NOW - timedelta(minutes=3), NOW), 20) is None


def test_a_failed_sync_holds_sending_even_when_the_last_good_data_is_recent():
    reason = tick.breaker(Step("sync", FAILED), Freshness(NOW - timedelta(minutes=3), NOW), 20)
    assert reason == "the sync failed"


def test_data_older_than_the_clinics_threshold_holds_sending_and_says_how_old():
    reason = tick.breaker(SYNCED, Freshness(NOW - timedelta(minutes=45), NOW), 20)
    assert reason == "the data is 45 minutes old (sync.stale_after_minutes is 20)"


def test_a_clinic_never_synced_holds_sending():
    assert "never been synced" in tick.breaker(SYNCED, Freshness(None, NOW), 20)


def test_a_hold_is_its_own_alert_only_in_a_tick_that_does_not_fail_for_it():
    """A failed sync or build fails the tick, and its "a run failed or crashed" alert says what
    was held: the relay.sync.stale event made it two alerts for one failure."""
    stale = tick.breaker(SYNCED, Freshness(NOW - timedelta(minutes=45), NOW), 20)
    built = Step("models", COMPLETED)
    assert tick.hold_to_alert(stale, SYNCED, built) == stale
    assert tick.hold_to_alert(None, SYNCED, built) is None
    failed = tick.breaker(Step("sync", FAILED), Freshness(NOW - timedelta(minutes=45), NOW), 20)
    assert tick.hold_to_alert(failed, Step("sync", FAILED), Step("models", "held")) is None
    assert tick.hold_to_alert("the model build failed", SYNCED, Step("models", FAILED)) is None
    summary = Summary("acme", NOW, steps=[Step("sync", FAILED, "BadApiKey: check the key")])
    summary.held = failed
    assert tick.failure(summary) == (
        "acme: sync failed (BadApiKey: check the key). Planning and sending held: the sync "
        "failed; the data is 45 minutes old (sync.stale_after_minutes is 20)"
    )


def test_the_fast_lanes_partial_syncs_do_not_make_stale_data_look_fresh():
    from tasks.warehouse import memory_db

    con = memory_db()
    runs = [("full", "incremental", 45), ("lane", "partial", 1), ("failed", "incremental", 2)]
    for run_id, kind, minutes in runs:
        con.execute(
            "INSERT INTO state.sync_runs (run_id, kind, started_at, status) VALUES (?, ?, ?, ?)",
            [run_id, kind, NOW - timedelta(minutes=minutes),
             "failed" if run_id == "failed" else "completed"],
        )  # fmt: skip
    fresh = tick.freshness(con, NOW)
    assert fresh.age == timedelta(minutes=45)
    assert "45 minutes old" in tick.breaker(SYNCED, fresh, 20)


def test_a_scheduled_tick_far_behind_its_time_does_nothing_but_a_requested_one_runs():
    late = NOW - timedelta(minutes=30)
    limit = timedelta(minutes=10)
    assert "30 minutes late" in tick.too_late(late, NOW, True, limit)
    assert tick.too_late(late, NOW, False, limit) is None  # a person asked for it
    assert tick.too_late(NOW - timedelta(minutes=4), NOW, True, limit) is None


def _message(con, key: str, status: str, at: datetime, reason: str | None = None) -> None:
    ledger.insert_planned(
        con,
        [
            ledger.PlannedMessage(
                send_key=ledger.make_send_key("trigger", "welcome", len(key), key),
                source_kind="trigger", source_name="welcome", patient_id=len(key),
                channel="email", purpose="transactional", template="welcome", due_at=at,
            )
        ],
        at,
    )  # fmt: skip
    if status != "planned":
        con.execute(
            f"UPDATE state.messages SET status = ?, status_reason = ?, {status}_at = ?, "
            "to_address = 'jane.citizen@example.com' WHERE send_key LIKE ?",
            [status, reason, at, f"%:{key}"],
        )


def test_the_summary_counts_this_ticks_messages_by_outcome_and_reason_without_addresses():
    con = warehouse.memory_db()
    before = NOW - timedelta(minutes=5)
    _message(con, "old", "sent", before)  # an earlier tick's
    _message(con, "a", "sent", NOW)
    _message(con, "bb", "skipped", NOW, "appointment cancelled")
    _message(con, "ccc", "skipped", NOW, "appointment cancelled")
    _message(con, "dddd", "planned", NOW)

    summary = tick.collect(con, Summary("demo", NOW, steps=[SYNCED], freshness="as of now"))

    assert summary.messages["sent"] == {"-": 1}
    assert summary.messages["skipped"] == {"appointment cancelled": 2}
    assert summary.messages["planned"] == {"-": 4}
    assert summary.backlog == {"planned": 1}
    text = tick.markdown(summary)
    assert "| skipped | appointment cancelled | 2 |" in text
    assert "jane" not in text and "example.com" not in text


def test_a_held_database_is_this_processes_alone_until_released(tmp_path):
    db = tmp_path / "clinic.duckdb"
    other = [
        sys.executable,
        "-c",
        f"from tasks import warehouse\nwith warehouse.open_db({str(db)!r}, wait_seconds=0.2): pass",
    ]
    with warehouse.hold(db):
        with warehouse.open_db(db) as con:  # a step of the tick gets in
            con.execute("SELECT 1")
        with warehouse.open_db(db, read_only=True):
            pass
        refused = subprocess.run(other, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "DatabaseBusy" in refused.stderr
    assert subprocess.run(other, capture_output=True, timeout=60).returncode == 0


def test_markdown_says_why_a_step_did_not_run():
    summary = Summary(
        "demo", NOW, steps=[Step("sync", FAILED, "ClinikoAuthError: 401"), Step("plan", "held", "circuit breaker")],
        held="the sync failed", freshness="never synced",
    )  # fmt: skip
    text = tick.markdown(summary)
    assert "**Planning and sending held:** the sync failed." in text
    assert "| sync | failed | 0.0 | ClinikoAuthError: 401 |" in text


# What a bad key's sync failure says (tasks/cliniko/client.py), as a tick's step records it.
BAD_KEY = (
    "BadApiKey: Cliniko rejected the API key (401) at 127.0.0.1:18771. The key names shard "
    "'au1' (by its suffix; no suffix means au1) and this run asked http://127.0.0.1:18771/v1. "
    "Check the key in the ClinikoAccount block: it may be mistyped or revoked, or its shard "
    "suffix may not match the account's region."
)


def test_a_failed_steps_advice_reaches_the_summary_and_the_alert_whole():
    """The tick's summary cut each reason at 200 characters and its failure (what the "a run
    failed" alert shows) at 300, mid-word and unmarked: a bad key's advice ended "Check the key
    in the Clin" and "...may not match the account's reg"."""
    summary = Summary(
        "acme", NOW, steps=[Step("sync", FAILED, BAD_KEY), Step("models", "held", "sync failed")],
        held="the sync failed",
    )  # fmt: skip
    assert f"| sync | failed | 0.0 | {BAD_KEY} |" in tick.markdown(summary)
    assert tick.failure(summary) == (
        f"acme: sync failed ({BAD_KEY}). Planning and sending held: the sync failed"
    )


def test_a_reason_too_long_for_the_alert_is_cut_between_words_and_says_so():
    endless = "Cliniko said " + " ".join(["nothing"] * 400)
    summary = Summary("acme", NOW, steps=[Step("sync", FAILED, endless)])
    said = tick.failure(summary)
    cut = said.removeprefix("acme: sync failed (").removesuffix(")")
    assert cut.endswith("nothing …") and len(cut) < len(endless)
    row = next(line for line in tick.markdown(summary).splitlines() if line.startswith("| sync"))
    assert row.endswith("nothing … |")


def test_markdown_lists_the_names_that_drifted_and_the_triggers_they_hold():
    why = "exclude.categories 'Admin Onyl' matches no category in Cliniko"
    summary = Summary(
        "demo", NOW, held_sources={"trigger reminder": why},
        warnings=[f"trigger 'reminder' held: {why}",
                  "trigger 'recall': filters.appointment_types 'Initial' no longer names ..."],
    )  # fmt: skip
    text = tick.markdown(summary)
    assert f"**Held** (everything else went on):\n- trigger reminder: {why}" in text
    assert "**Warnings** (names in clinic.yaml that match nothing or changed in Cliniko):" in text
    assert f"- trigger 'reminder' held: {why}\n- trigger 'recall': filters." in text


def test_a_completed_step_prefect_returns_without_its_counts_still_counts_as_completed(
    monkeypatch,
):
    from prefect.logging import disable_run_logger
    from prefect.states import Completed

    from flows import tick as tick_flow

    monkeypatch.setattr(tick_flow, "run_as_task", lambda step, params: Completed(data=None))
    summary = Summary("demo", NOW)
    with disable_run_logger():
        outcome, result = tick_flow.run_step(summary, "sync", clinic="demo")
    assert outcome.status == COMPLETED and result is None
    assert tick.rows_synced(result) == {}


def test_a_failed_step_says_why_as_its_exception_does_and_keeps_what_it_did(monkeypatch):
    """A step fails the tick with "ExceptionType: message", as a failed subflow did; feedback's
    failure carries the tables of the feeds it could read, and they still reach the summary."""
    from prefect.logging import disable_run_logger
    from prefect.states import Completed, Failed

    from flows import tick as tick_flow
    from flows.artifacts import Artifact, StepOutput
    from flows.feedback import FeedbackFailed

    pulled = Artifact("feedback-demo", "demo: what this pull recorded", table=[{"bounce": 1}])
    failure = FeedbackFailed("demo: Postmark bounces: 401", StepOutput({"bounce": 1}, [pulled]))
    states = {
        "sync": Completed(data=StepOutput({}, [Artifact("s", "sync", markdown="# Sync\n\nok")])),
        "feedback": Failed(
            data=failure, message="Task run encountered an exception FeedbackFailed"
        ),
    }
    monkeypatch.setattr(tick_flow, "run_as_task", lambda step, params: states[step])
    summary, tables = Summary("demo", NOW), []
    with disable_run_logger():
        tick_flow.run_step(summary, "sync", tables=tables, clinic="demo")
        outcome, result = tick_flow.run_step(summary, "feedback", tables=tables, clinic="demo")
    assert outcome.status == FAILED and result is None
    assert outcome.reason == "FeedbackFailed: demo: Postmark bounces: 401"
    assert [t.key for t in tables] == ["s", "feedback-demo"]
    assert tables[1].section() == ("### demo: what this pull recorded\n\n| bounce |\n|---|\n| 1 |")


def test_report_tables_are_rebuilt_only_after_a_tick_that_moved_something_they_count():
    idle = Summary("demo", NOW, audiences={"loyal": {"size": 9, "joined": 0, "left": 0}})
    assert not tick.moved(idle, {"unsubscribe_clicks": 0})
    assert tick.moved(Summary("demo", NOW, messages={"sent": {"-": 1}}), {})
    assert tick.moved(
        Summary("demo", NOW, audiences={"loyal": {"size": 9, "joined": 1, "left": 0}}), {}
    )
    assert tick.moved(idle, {"hard_bounce": 2})
    assert tick.moved(idle, None)  # the feedback step failed or was held: rebuild, not trust
