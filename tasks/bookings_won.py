"""Bookings won: of the people a trigger, journey or campaign messaged, how many booked soon after.

How it is counted (the report prints ``EXPLANATION`` so the owner reads the same words):

- **Recipients**: patients with a ``sent`` message from that source in the cohort window (the
  ledger, state.messages); a patient messaged twice counts once, from their first message.
- **Booked**: the patient's first appointment *booked* (Cliniko's ``created_at``, not its start)
  after that message and within N days of it (clinic.yaml ``report.booked_within_days``, 14 by
  default), days on the clinic's clock (across a DST change too). Tag appointments
  (``marts.appointments.is_tag``: clinic.yaml ``tag_categories``) never count, nor do
  appointments since deleted or archived; one booked and later cancelled does (it was booked). A merged-away patient's bookings are found under the patient they were
  merged into, and someone messaged under both ids is one person, from the first message.
- **Baseline**, like-for-like: patients the *same* trigger, journey or campaign chose at the
  same time, who were not messaged for a reason that says nothing about whether they would
  book: the frequency cap or quiet hours held the message past its grace window, or the tick
  came too late (``past its grace window``). Their clock starts at the moment the message was
  due. Anyone that source did message within N days either side of that moment is left out.
  Reasons tied to the patient (no address, unsubscribed, archived, cancelled or already
  rebooked) make a different kind of person and are not a baseline; so do a journey's people
  who left before a step (they left its segment, often by booking, or unsubscribed), and a
  campaign's who left the segment after the freeze. Where no such patient exists, the report
  says "no baseline" rather than compare with anyone else. Not done (yet): a trigger's
  would-be recipients before it went live (the candidate query is not replayed over history).
- Every count is a number of people, never a name, and comes with its n.

The cohort window is chosen by the caller so that every recipient has had the full N days
(tasks/owner_report.py: the week that ended N days before the report's week ended).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

from tasks.messages.waiting import PAST_GRACE
from tasks.warehouse import relation_exists

# Skip reasons (state.messages.status_reason) that say nothing about the patient: the marketing
# gate's "frequency cap: ..." / "quiet hours: ..." (tasks/messages/gate.py) and dispatch's
# "past its grace window" (tasks/messages/dispatch.py). A LIKE pattern each.
UNRELATED_SKIPS = ("frequency cap:%", "quiet hours:%", PAST_GRACE)

EXPLANATION = (
    "Recipients: people a trigger, journey or campaign sent a message to in the week shown "
    "(counted once, from their first message). Booked: they booked an appointment (the day it "
    "was made, not the day it is for) after that message and within {days} days of it; admin "
    "tag appointments ({tags}) and appointments since deleted or archived do not count, one "
    "cancelled afterwards does. Baseline: people the same trigger, journey or campaign chose at "
    "the same time but did not message for a reason that has nothing to do with them (the "
    "limit on marketing messages per person or quiet hours held the message too long, or the "
    "system ran too late), counted the same way from when their message was due. Where there "
    "are none, the report says so instead of comparing with other people. The difference is in "
    "percentage points; with few people (small n) it can be chance."
)


@dataclass(frozen=True)
class Won:
    """One source's counts: people, never who."""

    source_kind: str
    source_name: str
    recipients: int = 0
    booked: int = 0
    baseline: int = 0
    baseline_booked: int = 0

    @property
    def source(self) -> str:
        return f"{self.source_kind}:{self.source_name}"

    @property
    def rate(self) -> float | None:
        return self.booked / self.recipients if self.recipients else None

    @property
    def baseline_rate(self) -> float | None:
        return self.baseline_booked / self.baseline if self.baseline else None

    @property
    def difference(self) -> float | None:
        """Percentage points above (or below) the baseline; None without both rates."""
        if self.rate is None or self.baseline_rate is None:
            return None
        return 100 * (self.rate - self.baseline_rate)

    def as_row(self) -> dict:
        """For tables and the artifact: counts and words, no personal data."""
        return {
            "source": self.source,
            "recipients": self.recipients,
            "booked": self.booked,
            "booked_rate": _pct(self.rate),
            "baseline": self.baseline if self.baseline else "no baseline",
            "baseline_booked": self.baseline_booked if self.baseline else "",
            "baseline_rate": _pct(self.baseline_rate) if self.baseline else "",
            "difference": "" if self.difference is None else f"{self.difference:+.1f} points",
        }


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{100 * rate:.1f}%"


def bookings_won(
    con: duckdb.DuckDBPyConnection,
    first: datetime,
    last: datetime,
    within_days: int,
    sources: Sequence[tuple[str, str]] = (),
    time_zone: str = "UTC",
) -> list[Won]:
    """Per source, messages sent (or due, for the baseline) in ``[first, last)``: recipients and
    baseline, and how many of each booked within ``within_days``, days on the clinic's clock
    (``time_zone``: 09:00 to 09:00 two weeks later across a DST change). ``sources`` (kind,
    name) are listed even when nothing of theirs falls in the window. Needs the model build's
    marts.appointments (a clinic never built has no bookings to count: ``[]`` of counts)."""
    if within_days < 1:
        raise ValueError("bookings are counted within at least one day of the message")
    found: dict[tuple[str, str], dict] = {(kind, name): {} for kind, name in sources}
    if not relation_exists(con, "marts.appointments"):
        return [Won(k, n) for k, n in found]
    survivor = (
        "LEFT JOIN staging.patients sp ON sp.patient_id = x.patient_id"
        if relation_exists(con, "staging.patients")
        else "LEFT JOIN (SELECT NULL::BIGINT AS patient_id, NULL::BIGINT AS merged_into_patient_id)"
        " sp ON false"
    )

    # N days on the clinic's clock: a local wall time moved N days, as an instant again
    def days(sign: str) -> str:
        return f"timezone($tz, timezone($tz, {{}}) {sign} to_days($days::INTEGER))"

    params = {"first": first, "last": last, "days": within_days, "tz": time_zone}
    params |= {f"skip{i}": reason for i, reason in enumerate(UNRELATED_SKIPS)}
    unrelated = " OR ".join(f"status_reason LIKE $skip{i}" for i in range(len(UNRELATED_SKIPS)))
    rows = con.execute(
        f"""
        WITH sent AS (
            SELECT source_kind, source_name, patient_id, min(sent_at) AS anchor
            FROM state.messages
            WHERE status = 'sent' AND sent_at >= $first AND sent_at < $last
            GROUP BY ALL
        ),
        held AS (
            SELECT source_kind, source_name, patient_id, min(due_at) AS anchor
            FROM state.messages
            WHERE status = 'skipped' AND due_at >= $first AND due_at < $last AND ({unrelated})
            GROUP BY ALL
        ),
        baseline AS (
            SELECT h.* FROM held h
            WHERE NOT EXISTS (
                SELECT 1 FROM state.messages m
                WHERE m.source_kind = h.source_kind AND m.source_name = h.source_name
                  AND m.patient_id = h.patient_id AND m.status IN ('sent', 'sending', 'unknown')
                  AND coalesce(m.sent_at, m.unknown_at, m.sending_at)
                      BETWEEN {days("-").format("h.anchor")} AND {days("+").format("h.anchor")}
            )
        ),
        people AS (  -- a person messaged under two ids merged since: once, from the first
            SELECT x.grp, x.source_kind, x.source_name, min(x.anchor) AS anchor,
                   coalesce(sp.merged_into_patient_id, x.patient_id) AS patient_id
            FROM (SELECT 'messaged' AS grp, * FROM sent
                  UNION ALL SELECT 'baseline' AS grp, * FROM baseline) x
            {survivor}
            GROUP BY x.grp, x.source_kind, x.source_name,
                     coalesce(sp.merged_into_patient_id, x.patient_id)
        ),
        flagged AS (
            SELECT p.grp, p.source_kind, p.source_name, p.patient_id, p.anchor,
                   count(a.appointment_id) > 0 AS booked
            FROM people p
            LEFT JOIN marts.appointments a
              ON a.patient_id = p.patient_id AND NOT a.is_tag
             AND a.status NOT IN ('deleted', 'archived')
             AND a.created_at > p.anchor AND a.created_at <= {days("+").format("p.anchor")}
            GROUP BY ALL
        )
        SELECT grp, source_kind, source_name, count(*), count(*) FILTER (WHERE booked)
        FROM flagged GROUP BY ALL ORDER BY 2, 3, 1
        """,
        params,
    ).fetchall()
    for grp, kind, name, people, booked in rows:
        counts = found.setdefault((kind, name), {})
        if grp == "messaged":
            counts.update(recipients=people, booked=booked)
        else:
            counts.update(baseline=people, baseline_booked=booked)
    order = {"trigger": 0, "journey": 1, "campaign": 2}
    return [
        Won(kind, name, **counts)
        for (kind, name), counts in sorted(found.items(), key=lambda i: (order[i[0][0]], i[0][1]))
    ]


HEADER = ["source", "recipients", "booked", "booked %", "baseline (n)", "baseline booked",
          "baseline %", "difference"]  # fmt: skip


def table_rows(won: list[Won]) -> list[list]:
    return [list(w.as_row().values()) for w in won]


def html_section(won: list[Won], cohort: str, within_days: int, tags: str, table) -> str:
    """The report's section: heading, the cohort, the table (``table``: tasks.reports' table
    renderer, one home for the look), and how it is counted."""
    return "".join(
        [
            "<h2>Bookings won</h2>",
            f"<p class='meta'>People messaged {html.escape(cohort)}: every one of them has had "
            f"the full {within_days} days to book.</p>",
            table(HEADER, table_rows(won), "No trigger, journey or campaign messaged anyone then."),
            f"<p class='meta'>How it is counted. "
            f"{html.escape(EXPLANATION.format(days=within_days, tags=tags))}</p>",
        ]
    )
