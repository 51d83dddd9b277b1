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


# --- the tick's dispatch, right after its plan step -----------------------------------------


def _dispatch(clinic: Clinic, at, monkeypatch, tmp_path, *, recheck: bool) -> dict:
    """flows.dispatch.dispatch_clinic on the hand-made clinic at ``at``, sending to an outbox."""
    import contextlib

    from flows import dispatch as dispatch_flow
    from tasks.providers.outbox import OutboxProvider

    outbox = OutboxProvider(tmp_path, email_from="clinic@example.com", sms_from="Clinic")
    monkeypatch.setattr(dispatch_flow, "load_clinic", lambda name: clinic.config)
    monkeypatch.setattr(dispatch_flow, "open_db", lambda path: contextlib.nullcontext(clinic.con))
    monkeypatch.setattr(dispatch_flow, "providers_for", lambda cfg: dict.fromkeys(
        ("email", "sms"), outbox))  # fmt: skip
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        return dispatch_flow.dispatch_clinic(
            "test", at, as_tasks=False, held={}, recheck=recheck
        ).result


def test_the_ticks_dispatch_sends_on_planning_s_re_check_without_one_of_its_own(
    monkeypatch, tmp_path
):
    """The tick's dispatch runs only after its plan step re-checked every planned message
    against the same build (flows/tick.py): its own re-check found the same and is not run.
    A reminder whose appointment moved to within its 24 hours goes at once, as planning moved
    it (without planning's move it would be skipped as "moved after planning")."""
    from tasks.triggers import plan as planning

    clinic = Clinic()
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + DAY + 12 * HOUR, created=NOW - DAY)
    clinic.plan(NOW)
    assert clinic.one("reminder").due_at == NOW + 12 * HOUR
    clinic.update_appointment(10, starts_at=NOW + DAY + 2 * HOUR, updated_at=NOW + HOUR)

    at = NOW + 2 * HOUR + MIN  # the tick that sees the move: its reminder is due now
    clinic.plan(at)  # the tick's plan step: the row moves with its appointment

    def no_second_recheck(*args, **kwargs):
        raise AssertionError("the tick's dispatch re-checked what planning just re-checked")

    monkeypatch.setattr(planning, "recheck", no_second_recheck)
    result = _dispatch(clinic, at, monkeypatch, tmp_path, recheck=False)
    assert result["counts"] == {"sent": 1}
    row = clinic.one("reminder")
    assert (row.status, row.due_at) == ("sent", at)  # moved inside 24 h: due when seen


def test_dispatch_run_alone_still_re_checks_first(monkeypatch, tmp_path):
    """``relay dispatch`` (and the dispatch flow) has no plan step before it: it re-checks."""
    clinic = Clinic()
    clinic.trigger("reminder", **REMINDER)
    live(clinic)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + DAY + 12 * HOUR, created=NOW - DAY)
    clinic.plan(NOW)
    clinic.update_appointment(10, cancelled_at=NOW + HOUR, updated_at=NOW + HOUR)
    clinic.build(NOW + 2 * HOUR)
    result = _dispatch(clinic, NOW + 2 * HOUR, monkeypatch, tmp_path, recheck=True)
    assert result["rechecked"] == {"cancelled": 1}
    assert clinic.one("reminder").status == "cancelled"
