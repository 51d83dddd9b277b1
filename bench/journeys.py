"""Journeys, campaigns and the marketing gate at clinic scale (issue 5): ``python -m bench journeys``.

The state the models would leave (a 100,000-patient email list, a "new" segment, membership
events, 200,000 marketing messages already sent) is written straight into DuckDB, so this
measures the journey engine, the campaign freeze and the gate, not the model build
(``bench.models`` does that). Printed figures:

- a journeys tick enrolling 5,000 new patients and queuing their first email;
- a tick with nothing due (the steady state every 5 minutes);
- a tick advancing 5,000 enrolments past a wait to their next email;
- the birthday journey on 100,000 patients (about 275 birthdays a day);
- freezing a 30,000-patient campaign into the ledger;
- the marketing gate on a 500-message dispatch batch, against that sending history, with the
  re-check it gives the cap's slots by (the campaign's first decision included);
- the re-check before sending (journey and campaign messages), in messages a second.

No targets of their own (issue 5 asked for the figures): each goes, in seconds with what it did,
to bench/results/journeys.jsonl (bench/_results.py).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from bench._results import load_average, record
from tasks.config import ClinicConfig
from tasks.marketing import campaigns, journeys
from tasks.messages import ledger
from tasks.messages.gate import Gate
from tasks.messages.prepare import by_source_kind
from tasks.warehouse import memory_db

PATIENTS, NEW, CAMPAIGN = 100_000, 5_000, 30_000
NOW = datetime(2026, 11, 2, 22, 0, tzinfo=UTC)  # 09:00 in Melbourne


def _state(con) -> None:
    params = {"n": PATIENTS, "new": NEW, "campaign": CAMPAIGN,
              "before": NOW - timedelta(days=30)}  # fmt: skip
    for statement in (
        """CREATE TABLE marts.patients AS SELECT i AS patient_id, false AS is_archived,
            DATE '1950-01-01' + (i * 37 % 20000)::INTEGER AS date_of_birth,
            'Name' || i AS first_name, NULL::VARCHAR AS preferred_first_name,
            'Last' AS last_name, 'Name' || i AS greeting_name,
            NULL::BIGINT AS merged_into_patient_id
        FROM range(1, $n + 1) t(i)""",
        """CREATE TABLE marts.email_marketing_list AS SELECT 'p' || patient_id || '@example.com'
            AS email, patient_id, 'subscribed' AS status FROM marts.patients""",
        """CREATE TABLE marts.sms_marketing_list AS SELECT NULL::VARCHAR AS mobile_e164,
            NULL::BIGINT AS patient_id, 'subscribed' AS status LIMIT 0""",
        """CREATE TABLE segments.new_patients AS SELECT patient_id FROM marts.patients
            WHERE patient_id <= $new""",
        """CREATE TABLE segments.recall_90_179 AS SELECT patient_id FROM marts.patients
            WHERE patient_id > $new AND patient_id <= $new + $campaign""",
        """INSERT INTO state.audiences VALUES ('email_marketing_list', 'b0', $before, NULL),
            ('segments.new_patients', 'b0', $before, NULL),
            ('segments.recall_90_179', 'b0', $before, NULL)""",
        """INSERT INTO state.audience_members SELECT 'email_marketing_list', email, patient_id,
            $before FROM marts.email_marketing_list""",
        """INSERT INTO state.audience_members SELECT 'segments.recall_90_179',
            patient_id::VARCHAR, patient_id, $before FROM segments.recall_90_179""",
    ):
        names = set(re.findall(r"\$(\w+)", statement))
        con.execute(statement, {k: params[k] for k in names})
    # 200,000 marketing messages sent over the last 14 days (two each): what the cap counts
    con.execute(
        """
        INSERT INTO state.messages (send_key, source_kind, source_name, patient_id, channel,
            purpose, template, due_at, status, planned_at, sent_at, updated_at)
        SELECT 'campaign:old' || (i % 10) || ':' || (i % $n + 1) || ':' || i, 'campaign',
            'old' || (i % 10), i % $n + 1, 'email', 'marketing', 'recall-checkin', t, 'sent', t,
            t, t
        FROM (SELECT i, $now - INTERVAL 1 MINUTE - INTERVAL 1 SECOND * (i * 6) AS t
              FROM range(200000) r(i))
        """,
        {"n": PATIENTS, "now": NOW},
    )


FIGURES: dict = {}  # label -> {"seconds", "result"}, recorded at the end of main()


def _timed(label: str, fn):
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    print(f"{label:<62} {seconds:7.3f} s   {result}", flush=True)
    FIGURES[label] = {"seconds": round(seconds, 3), "result": str(result)}
    return result


def prepare_rate(con, cfg, rows) -> str:
    """The re-check as dispatch runs it: a fresh preparer per run, asked row by row."""
    prepare = by_source_kind(
        {"journey": journeys.Preparer(con, cfg), "campaign": campaigns.Preparer(con, cfg)}
    )
    started = time.perf_counter()
    ready = sum(1 for row in rows if type(prepare(row)).__name__ == "Ready")
    return f"{len(rows) / (time.perf_counter() - started):,.0f} rows/s ({ready} ready)"


def main() -> None:
    load_at_start = load_average()
    FIGURES.clear()
    con = memory_db()
    _state(con)
    cfg = ClinicConfig(
        clinic="bench",
        name="Bench",
        journeys=[
            {
                "name": "new-patient",
                "entry": {"enters_segment": "new_patients"},
                "steps": [
                    {"send": "email", "template": "new-patient-welcome"},
                    {"wait": "3 days"},
                    {"only_if": "still_in_segment"},
                    {"send": "email", "template": "new-patient-tips"},
                ],
            },
            {
                "name": "birthday",
                "entry": {"date_field": "date_of_birth"},
                "steps": [{"send": "email", "template": "birthday"}],
                "reentry": "after_leaving",
            },
        ],  # fmt: skip
        campaigns=[
            {
                "name": "recall",
                "segment": "recall_90_179",
                "channel": "email",
                "template": "recall-checkin",
                "per_minute": 500,
            }
        ],  # fmt: skip
    )
    journeys.run_journeys(con, cfg, NOW - timedelta(days=1))  # go-live
    at = {"at": NOW - timedelta(minutes=5)}
    con.execute(
        "INSERT INTO state.audience_members SELECT 'segments.new_patients', "
        "patient_id::VARCHAR, patient_id, $at FROM segments.new_patients",
        at,
    )
    con.execute(
        "INSERT INTO state.membership_events (build_id, audience, member_key, patient_id, event, "
        "occurred_at) SELECT 'b1', 'segments.new_patients', patient_id::VARCHAR, patient_id, "
        "'joined', $at FROM segments.new_patients",
        at,
    )
    _timed(f"journeys tick: {NEW:,} enter, first email queued",
           lambda: journeys.run_journeys(con, cfg, NOW))  # fmt: skip
    _timed("journeys tick: nothing due",
           lambda: journeys.run_journeys(con, cfg, NOW + timedelta(minutes=5)))  # fmt: skip
    # dispatch sent the welcomes a minute later (as it records them): the wait counts from then
    con.execute(
        "UPDATE state.messages SET status = 'sent', sending_at = $at, sent_at = $at, "
        "updated_at = $at WHERE source_kind = 'journey' AND status = 'planned'",
        {"at": NOW + timedelta(minutes=1)},
    )
    _timed(f"journeys tick: {NEW:,} past the wait, second email queued",
           lambda: journeys.run_journeys(con, cfg, NOW + timedelta(days=3, minutes=6)))  # fmt: skip
    _timed(f"campaign freeze: {CAMPAIGN:,} patients into the ledger",
           lambda: campaigns.confirm(con, cfg, "recall", NOW)["queued"])  # fmt: skip
    # wired as flows/dispatch.py wires it: the cap's slots only for rows the re-check lets go
    recheck = by_source_kind(
        {"journey": journeys.Preparer(con, cfg), "campaign": campaigns.Preparer(con, cfg)}
    )
    gate = Gate.from_config(cfg, recheck=recheck)
    at = NOW + timedelta(minutes=10)
    batch = ledger.due(con, at, channel="email", limit=500)
    _timed("marketing gate: a 500-message batch (cap, priority, re-check)",
           lambda: f"{len(gate(con, batch, at))} of {len(batch)} may go now")  # fmt: skip
    campaign_rows = [r for r in ledger.in_status(con, "planned") if r.source_kind == "campaign"]
    journey_rows = [r for r in ledger.in_status(con, "planned") if r.source_kind == "journey"]
    _timed("re-check before sending: 2,000 campaign messages",
           lambda: prepare_rate(con, cfg, campaign_rows[:2000]))  # fmt: skip
    _timed("re-check before sending: 2,000 journey messages",
           lambda: prepare_rate(con, cfg, journey_rows[:2000]))  # fmt: skip
    print(f"ledger: {ledger.status_counts(con)}")
    record("journeys", {"patients": PATIENTS, "new": NEW, "campaign": CAMPAIGN, **FIGURES},
           load_at_start=load_at_start)  # fmt: skip


if __name__ == "__main__":
    main()
