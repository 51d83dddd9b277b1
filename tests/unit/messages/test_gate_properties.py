"""Property: whatever marketing is due, and whenever, the gate never lets a patient get more than
the cap in any window, never lets a marketing SMS out in quiet hours, never sends before the due
moment, and loses nothing: every message goes in the end."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import FrequencyCap, QuietHours
from tasks.messages import ledger
from tasks.messages.gate import Gate
from tasks.messages.ledger import PlannedMessage, make_send_key
from tasks.warehouse import memory_db

ZONE = "Australia/Melbourne"
START = datetime(2026, 3, 30, 13, 0, tzinfo=UTC)  # the week Melbourne leaves daylight saving
CAP = FrequencyCap(messages=2, days=7)
GATE = Gate(ZONE, CAP, ("trigger", "journey", "campaign"), QuietHours())

messages = st.lists(
    st.tuples(
        st.integers(1, 3),  # patient
        st.sampled_from(["trigger", "journey", "campaign"]),
        st.sampled_from(["email", "sms"]),
        st.integers(0, 14 * 24),  # due, hours after the start
    ),
    min_size=1,
    max_size=9,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_the_cap_and_quiet_hours_always_hold_and_every_message_goes_in_the_end(planned):
    con = memory_db()
    batch = [
        PlannedMessage(
            send_key=make_send_key(kind, f"src{i}", patient, "once"),
            source_kind=kind,
            source_name=f"src{i}",
            patient_id=patient,
            channel=channel,
            purpose="marketing",
            template="t",
            due_at=START + timedelta(hours=hours),
        )  # fmt: skip
        for i, (patient, kind, channel, hours) in enumerate(planned)
    ]
    ledger.insert_planned(con, batch, START)
    now, end = START, START + timedelta(days=60)
    while now <= end:
        passed = GATE(con, ledger.due(con, now), now)
        ids = [r.message_id for r in passed]
        ledger.transition(con, ids, "planned", "sending", now)
        ledger.transition(con, ids, "sending", "sent", now)
        # dispatch runs every few minutes; jump to the next moment anything could change
        upcoming = con.execute(
            "SELECT min(greatest(due_at, coalesce(next_attempt_at, due_at))) "
            "FROM state.messages WHERE status = 'planned'"
        ).fetchone()[0]
        if upcoming is None:
            break
        now = max(now + timedelta(minutes=5), upcoming)

    sent = ledger.in_status(con, "sent")
    assert len(sent) == len(batch), ledger.status_counts(con)  # nothing lost, nothing skipped
    by_patient = defaultdict(list)
    for row in sent:
        assert row.sent_at >= row.due_at
        by_patient[row.patient_id].append(row.sent_at)
        if row.channel == "sms":
            local = row.sent_at.astimezone(ZoneInfo(ZONE)).time()
            assert GATE.quiet_hours.end <= local < GATE.quiet_hours.start
    window = timedelta(days=CAP.days)
    for times in by_patient.values():
        times.sort()
        for i, first in enumerate(times):
            assert sum(1 for t in times[i:] if t < first + window) <= CAP.messages
    con.close()
