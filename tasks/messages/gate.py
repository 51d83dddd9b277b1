"""The marketing gate: frequency cap and quiet hours, the last word on when marketing may go.

Dispatch calls the gate with each batch of due rows, just before it re-checks and claims them
(``dispatch(..., gate=Gate.from_config(cfg))``). The gate looks only at marketing rows (journeys,
campaigns and marketing triggers alike); reminders and other transactional messages always pass.

- **Quiet hours** (marketing SMS only, the clinic's time zone, default 20:00-09:00): a message due
  in them waits for the end of the quiet hours, computed with zoneinfo on the local calendar, so
  "09:00 tomorrow" stays 09:00 across a daylight-saving change (an end in the hour the clocks go
  back is the one still to come, never the hour-old first one). A campaign's messages keep their
  throttle: each goes as long after the end as it was due after the start of the quiet hours
  (or of the campaign, when it started in them), so they leave at ``per_minute`` as planned.
- **Frequency cap** (default: 2 marketing messages per 7 days per patient, any channel): messages
  sent, being sent or of unknown outcome in the last N days count. When more are due than the
  cap allows, the configured priority decides who goes (source kind, then the earlier due, then
  the older row); the rest wait until the oldest counted message leaves the window, and are
  weighed again then. Slots go only to rows that will really be sent: with the re-check
  (``recheck``, dispatch's ``prepare``), a row it will cancel or skip, one past its grace window
  or to a suppressed address takes none.

Held rows are deferred, not dropped (``ledger.defer``: their ``due_at`` stays as planned); a row
that could only go after its grace window (``expires_at``) is skipped instead, with the reason.
Nothing here logs personal data; rows are identified by ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks.config import ClinicConfig, FrequencyCap, QuietHours
from tasks.messages import ledger
from tasks.messages.ledger import LedgerRow
from tasks.messages.prepare import Prepare, Ready
from tasks.warehouse import transaction

QUIET_HOURS_CHANNELS = frozenset({"sms"})
# After the hold's name ("frequency cap", "quiet hours"): the skip of a row it held past its grace
# window (tasks/triggers/reopen.py reads it as a skip about time).
GRACE_ENDED = ": could not go before its grace window ended"


def local_moment(day: date, at: time, zone: ZoneInfo) -> datetime:
    """``at`` o'clock on ``day`` in ``zone``, as UTC (quiet hours here, a journey's date entries).
    A time the clocks skip (DST gap) is read with the offset in force before the change, as
    zoneinfo does: 02:30 in a 02:00-03:00 gap is 03:30. One the clocks repeat is its first
    pass (``_both_readings`` gives both)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _both_readings(day: date, at: time, zone: ZoneInfo) -> list[datetime]:
    """``at`` o'clock on ``day`` in ``zone`` as UTC, read with the offset before and after a
    daylight-saving change (PEP 495 ``fold``): twice in the hour the clocks go back, two
    readings of a skipped time in the hour they go forward, one moment any other day."""
    return sorted(
        {datetime.combine(day, at, tzinfo=zone).replace(fold=f).astimezone(UTC) for f in (0, 1)}
    )


@dataclass(frozen=True)
class Gate:
    time_zone: str
    cap: FrequencyCap | None
    priority: tuple[str, ...]
    quiet_hours: QuietHours | None
    # dispatch's re-check (the same ``prepare``): the cap's slots go only to rows it lets go
    recheck: Prepare | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: ClinicConfig, recheck: Prepare | None = None) -> Gate:
        m = cfg.marketing
        return cls(cfg.time_zone, m.frequency_cap, m.priority, m.quiet_hours, recheck)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    # --- quiet hours ---------------------------------------------------------------------------

    def is_quiet(self, at: datetime) -> bool:
        if self.quiet_hours is None:
            return False
        start, end = self.quiet_hours.start, self.quiet_hours.end
        local = at.astimezone(self.zone).time()
        if start > end:  # overnight, e.g. 20:00-09:00
            return local >= start or local < end
        return start <= local < end

    def quiet_until(self, at: datetime) -> datetime:
        """The end of the quiet hours ``at`` falls in (``at`` itself when it is not quiet)."""
        if not self.is_quiet(at):
            return at
        assert self.quiet_hours is not None  # is_quiet is False without quiet hours
        local = at.astimezone(self.zone)
        end = self.quiet_hours.end
        day = local.date() + timedelta(days=1) if local.time() >= end else local.date()
        # an end in the hour the clocks go back comes twice: the first still to come (in the
        # second pass, the first one is an hour past); one the clocks skip: the reading after
        # the change (the other is before it, still quiet)
        readings = _both_readings(day, end, self.zone)
        return min((m for m in readings if m > at and not self.is_quiet(m)), default=readings[-1])

    def quiet_since(self, at: datetime) -> datetime:
        """The start of the quiet hours ``at`` falls in (``at`` must be quiet)."""
        assert self.quiet_hours is not None  # ``at`` is quiet: there are quiet hours
        end = self.quiet_until(at).astimezone(self.zone).date()
        overnight = self.quiet_hours.start > self.quiet_hours.end
        day = end - timedelta(days=overnight)
        # a start in the hour the clocks skip: the reading not after ``at`` (the other is later)
        readings = _both_readings(day, self.quiet_hours.start, self.zone)
        return max((m for m in readings if m <= at), default=min(readings))

    def _released(
        self, con: duckdb.DuckDBPyConnection, rows: Sequence[LedgerRow], now: datetime
    ) -> dict[int, datetime]:
        """message_id -> when each row the quiet hours hold goes: their end; a campaign's row as
        long after it as it was due after the quiet hours (or the campaign) started."""
        if not rows:
            return {}
        end = self.quiet_until(now)
        names = sorted({r.source_name for r in rows if r.source_kind == "campaign"})
        first = dict(
            con.execute(
                "SELECT source_name, min(due_at) FROM state.messages WHERE source_kind = "
                "'campaign' AND source_name IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1",
                [names],
            ).fetchall()
        )
        since = self.quiet_since(now)
        released = {}
        for row in rows:
            late = timedelta(0)
            if row.source_kind == "campaign":
                late = max(timedelta(0), row.due_at - max(since, first[row.source_name]))
            released[row.message_id] = end + late
        return released

    def held_by_quiet_hours(self, row: LedgerRow, now: datetime) -> bool:
        return (
            row.purpose == "marketing"
            and row.channel in QUIET_HOURS_CHANNELS
            and (self.is_quiet(now))
        )

    # --- frequency cap -------------------------------------------------------------------------

    def _rank(self, row: LedgerRow) -> tuple:
        return (self.priority.index(row.source_kind), row.due_at, row.message_id)

    def _counted(
        self,
        con: duckdb.DuckDBPyConnection,
        patients: Sequence[int],
        now: datetime,
        cap: FrequencyCap,
    ) -> dict[int, list[datetime]]:
        """Per patient, when each marketing message in the cap's window went (or started to)."""
        window = timedelta(days=cap.days)
        rows = con.execute(
            """
            SELECT patient_id, coalesce(sent_at, sending_at) AS went
            FROM state.messages
            WHERE purpose = 'marketing' AND status IN ('sending', 'sent', 'unknown')
              AND patient_id IN (SELECT unnest($patients::BIGINT[]))
              AND coalesce(sent_at, sending_at) > $since
            ORDER BY went
            """,
            {"patients": list(patients), "since": now - window},
        ).fetchall()
        counted: dict[int, list[datetime]] = defaultdict(list)
        for patient_id, went in rows:
            counted[patient_id].append(went)
        return counted

    def _waiting(
        self, con: duckdb.DuckDBPyConnection, patients: Sequence[int], now: datetime
    ) -> list[LedgerRow]:
        """Every marketing row of these patients that could go now, in any channel or batch,
        and would really be sent: not past its grace window, let go by the re-check, to an
        address not suppressed (what dispatch checks before claiming)."""
        rows = [
            r
            for r in ledger.due_marketing(con, now, patients)
            if not self.held_by_quiet_hours(r, now)
            and (r.expires_at is None or now <= r.expires_at)
        ]
        if self.recheck is None:
            return rows
        going: list[tuple[LedgerRow, str]] = []
        for row in rows:
            try:
                decision = self.recheck(row)
            except Exception:  # dispatch holds a row whose re-check fails: it takes no slot
                continue
            if isinstance(decision, Ready):
                going.append((row, ledger.normalise_address(row.channel, decision.to)))
        suppressed = {
            (channel, address)
            for channel in {r.channel for r, _ in going}
            for address in ledger.suppressed_addresses(
                con, channel, [a for r, a in going if r.channel == channel], "marketing"
            )
        }
        return [r for r, a in going if (r.channel, a) not in suppressed]

    def cap_holds(
        self, con: duckdb.DuckDBPyConnection, rows: Sequence[LedgerRow], now: datetime
    ) -> dict[int, datetime]:
        """message_id -> when to weigh it again, for the rows the cap holds back now."""
        if self.cap is None:
            return {}
        patients = sorted({r.patient_id for r in rows})
        counted = self._counted(con, patients, now, self.cap)
        by_patient: dict[int, list[LedgerRow]] = defaultdict(list)
        for row in self._waiting(con, patients, now):
            by_patient[row.patient_id].append(row)
        window = timedelta(days=self.cap.days)
        holds: dict[int, datetime] = {}
        for patient_id, waiting in by_patient.items():
            free = self.cap.messages - len(counted[patient_id])
            ranked = sorted(waiting, key=self._rank)
            going = ranked[: max(0, free)]
            # a slot frees when the oldest message in the window (or one going now) leaves it
            went = sorted(counted[patient_id] + [now] * len(going))
            for row in ranked[max(0, free) :]:
                holds[row.message_id] = went[0] + window
        return holds

    # --- the hook ------------------------------------------------------------------------------

    def __call__(
        self, con: duckdb.DuckDBPyConnection, rows: list[LedgerRow], now: datetime
    ) -> list[LedgerRow]:
        """Dispatch's hook: defer (or skip) the marketing rows that may not go now; return the
        rows that may."""
        marketing = [r for r in rows if r.purpose == "marketing"]
        if not marketing:
            return rows
        quiet = [r for r in marketing if self.held_by_quiet_hours(r, now)]
        held: dict[int, tuple[datetime, str]] = {
            message_id: (until, "quiet hours")
            for message_id, until in self._released(con, quiet, now).items()
        }
        open_rows = [r for r in marketing if r.message_id not in held]
        for message_id, until in self.cap_holds(con, open_rows, now).items():
            held[message_id] = (until, "frequency cap")
        in_batch = {r.message_id: r for r in marketing}
        deferred: list[tuple[int, datetime, str]] = []
        skipped: dict[str, list[int]] = defaultdict(list)
        for message_id, (until, why) in held.items():
            row = in_batch.get(message_id)
            if row is None:
                continue  # another batch or channel: decided when dispatch gets there
            if row.expires_at is not None and until > row.expires_at:
                skipped[f"{why}{GRACE_ENDED}"].append(message_id)
            else:
                deferred.append((message_id, until, f"deferred: {why}"))
        if deferred or skipped:
            with transaction(con):
                if deferred:
                    ids, untils, reasons = zip(*deferred, strict=True)
                    ledger.defer(con, ids, untils, reasons, now)
                for reason, skip_ids in skipped.items():
                    ledger.skip(con, skip_ids, reason, now)
        return [r for r in rows if r.message_id not in held]
