"""An idle tick (nothing written to raw.* since the last build) leaves the models whose inputs did
not change as they were (tasks/models/tables.py), yet planning still sees what the clock alone
brought: a reminder whose moment came within the planning horizon, an appointment whose start
passed (upcoming -> attended) and so fires its after-trigger. The build and the planner run as
the tick runs them (tasks.models.runner.build, tasks.triggers.plan.plan, at the tick's clock)."""

from __future__ import annotations

from tasks.models import tables
from tests.unit.triggers.test_plan import (
    DAY,
    HOUR,
    INITIAL,
    MIN,
    NOW,
    RECALL,
    REMINDER,
    SAM,
    Clinic,
    live,
)


def idle_tick(clinic: Clinic, at) -> None:
    """A tick at ``at`` with nothing new from Cliniko: no raw write since the last build."""
    written = tables.data_high_water(clinic.con)
    clinic.plan(at)
    assert tables.data_high_water(clinic.con) == written, "the tick must be idle"


def tamper(clinic: Clinic) -> None:
    """A mark on a table model that reads only raw.practitioners: an idle build that ran it
    would wipe the mark, so the mark staying shows the build left it as it was."""
    clinic.con.execute(
        "UPDATE staging.practitioners SET title = 'kept' WHERE practitioner_id = ?", [SAM]
    )


def kept(clinic: Clinic) -> bool:
    return clinic.con.execute(
        "SELECT title = 'kept' FROM staging.practitioners WHERE practitioner_id = ?", [SAM]
    ).fetchone()[0]


def test_an_idle_tick_plans_a_reminder_whose_moment_the_clock_brought_within_the_horizon():
    clinic = Clinic()
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 5 * DAY, created=NOW - DAY)
    clinic.plan(NOW)
    assert clinic.messages() == [], "4 days away: beyond the 2-day planning horizon"
    tamper(clinic)

    idle_tick(clinic, NOW + 2 * DAY + HOUR)
    assert kept(clinic), "an idle build leaves the raw-only tables as they were"
    row = clinic.one("reminder")
    assert (row.status, row.due_at) == ("planned", NOW + 4 * DAY)


def test_an_idle_tick_fires_an_after_trigger_once_the_appointment_s_start_has_passed():
    """Nothing is synced after the booking: the appointment is attended (unmarked, past) only
    because the clock passed its start, and its recall becomes plannable by the clock alone."""
    clinic = Clinic()
    clinic.trigger("recall", **{**RECALL, "purpose": "transactional", "template": "welcome"})
    live(clinic)
    clinic.patient(1)
    starts = NOW + HOUR
    clinic.appointment(10, 1, starts, type_id=INITIAL, created=NOW - DAY)
    clinic.plan(NOW)
    assert clinic.messages() == []
    status = "SELECT status FROM marts.appointments WHERE appointment_id = 10"
    assert clinic.con.execute(status).fetchone() == ("upcoming",)
    tamper(clinic)

    idle_tick(clinic, starts + 2 * HOUR)  # the appointment is over; still 6 weeks to the recall
    assert clinic.con.execute(status).fetchone() == ("unmarked",)
    assert kept(clinic)
    assert clinic.messages() == [], "6 weeks after: beyond the horizon still"

    idle_tick(clinic, starts + 41 * DAY)
    row = clinic.one("recall")
    assert (row.status, row.due_at) == ("planned", starts + 30 * MIN + 42 * DAY)
    assert kept(clinic)
