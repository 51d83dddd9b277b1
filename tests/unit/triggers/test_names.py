"""Names that drift: clinic.yaml names appointment types, categories, businesses and practitioners;
anyone can rename them in Cliniko. Hand-made clinics, real DuckDB and the real models, and the
planner as the tick runs it (flows/plan.py: the holds, then plan): a live trigger stays on the ids
its names matched when it went live, and says so; a name matching nothing holds its trigger alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks import tick
from tasks.triggers import names
from tasks.triggers import plan as planning
from tests.unit.triggers.test_plan import (
    ADMIN_BUSINESS,
    ADMIN_TAG,
    ALEX,
    DAY,
    HOUR,
    INITIAL,
    MAIN,
    MIN,
    NOW,
    REMINDER,
    SAM,
    STANDARD,
    WELCOME,
    Clinic,
)


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


def run_tick(clinic: Clinic, now: datetime) -> dict[str, str]:
    """Build the models, then plan as flows/plan.py does: with the tick's holds. Returns them."""
    clinic.build(now)
    held = tick.of_kind(tick.held_sources(clinic.con, clinic.config), "trigger")
    planning.plan(clinic.con, clinic.config, now, held=held)
    return held


def rename_type(clinic: Clinic, id_: int, name: str, category: str) -> None:
    clinic._write("appointment_types", id_, {"id": str(id_), "name": name, "category": category})


def planned_appointments(clinic: Clinic, trigger: str) -> list[int]:
    return sorted(r.appointment_id for r in clinic.messages(trigger))


def test_a_renamed_admin_only_category_keeps_tag_appointments_out_of_the_sms_reminder(clinic):
    clinic.trigger("reminder", **REMINDER)  # exclude: {categories: [Admin Only]}
    clinic.patient(1)
    run_tick(clinic, NOW - DAY)  # goes live: 'Admin Only' is appointment type 12
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Admin")
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=ADMIN_TAG, business=ADMIN_BUSINESS)
    clinic.appointment(11, 1, NOW + 30 * HOUR, type_id=STANDARD)
    assert run_tick(clinic, NOW) == {}
    assert planned_appointments(clinic, "reminder") == [11]
    assert tick.warnings(clinic.con, clinic.config) == [
        "trigger 'reminder': exclude.categories 'Admin Only' no longer names appointment type 12 "
        "(renamed in Cliniko?): the trigger stays on the ids it went live with",
        "tag_categories 'Admin Only' no longer names appointment type 12 (renamed in Cliniko?): "
        "they stay tags; to let them go, take the name out of tag_categories",
    ]


def test_a_reminder_filtered_on_a_renamed_appointment_type_still_goes(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {},
                                  "filters": {"appointment_types": ["Initial Consultation"]}})  # fmt: skip
    clinic.patient(1)
    run_tick(clinic, NOW - DAY)
    rename_type(clinic, INITIAL, "Initial Assessment", "Physiotherapy")
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=INITIAL)
    clinic.appointment(11, 1, NOW + 30 * HOUR, type_id=STANDARD)
    run_tick(clinic, NOW)
    assert planned_appointments(clinic, "reminder") == [10]
    assert tick.warnings(clinic.con, clinic.config) == [
        "trigger 'reminder': filters.appointment_types 'Initial Consultation' no longer names "
        "appointment type 1 (renamed in Cliniko?): the trigger stays on the ids it went live with"
    ]


def test_a_category_renamed_to_a_filtered_name_does_not_widen_the_trigger(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {},
                                  "filters": {"categories": ["Physiotherapy"]}})  # fmt: skip
    clinic.patient(1)
    run_tick(clinic, NOW - DAY)  # 'Physiotherapy' is types 1 and 2
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Physiotherapy")
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=ADMIN_TAG)
    clinic.appointment(11, 1, NOW + 30 * HOUR, type_id=STANDARD)
    run_tick(clinic, NOW)
    assert planned_appointments(clinic, "reminder") == [11]
    assert tick.warnings(clinic.con, clinic.config)[0] == (
        "trigger 'reminder': filters.categories 'Physiotherapy' now also names appointment type "
        "12: not taken in; edit the trigger to read its names afresh"
    )


def test_a_renamed_business_stays_excluded_and_a_renamed_practitioner_stays_filtered(clinic):
    clinic.trigger("reminder", **{**REMINDER, "filters": {"practitioners": ["Sam Example"]},
                                  "exclude": {"businesses": ["Admin"]}})  # fmt: skip
    clinic.patient(1)
    run_tick(clinic, NOW - DAY)
    clinic._write("businesses", ADMIN_BUSINESS, {"id": str(ADMIN_BUSINESS), "business_name":
                  "Back office", "time_zone_identifier": "Australia/Melbourne"})  # fmt: skip
    clinic._write("practitioners", SAM, {"id": str(SAM), "first_name": "Samantha",
                                         "last_name": "Example"})  # fmt: skip
    clinic.appointment(10, 1, NOW + 25 * HOUR, business=ADMIN_BUSINESS, practitioner=SAM)
    clinic.appointment(11, 1, NOW + 26 * HOUR, business=MAIN, practitioner=SAM)
    clinic.appointment(12, 1, NOW + 27 * HOUR, business=MAIN, practitioner=ALEX)
    run_tick(clinic, NOW)
    assert planned_appointments(clinic, "reminder") == [11]
    warnings = tick.warnings(clinic.con, clinic.config)
    assert [w.split(" no longer names ")[0] for w in warnings] == [
        "trigger 'reminder': filters.practitioners 'Sam Example'",
        "trigger 'reminder': exclude.businesses 'Admin'",
    ]


def test_an_exclusion_that_matches_nothing_holds_its_trigger_and_only_it(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"categories": ["Admin Onyl"]}})
    clinic.trigger("welcome", **WELCOME)
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=ADMIN_TAG, created=NOW - 2 * MIN)
    why = (
        "exclude.categories 'Admin Onyl' matches no category in Cliniko (check the spelling in "
        "clinic.yaml, or write the Cliniko id)"
    )
    for now in (NOW, NOW + HOUR):  # every tick, not only the first
        assert run_tick(clinic, now) == {"reminder": why}
        assert tick.warnings(clinic.con, clinic.config) == [f"trigger 'reminder' held: {why}"]
    assert planned_appointments(clinic, "reminder") == []
    assert planned_appointments(clinic, "welcome") == [10]


def test_a_held_trigger_goes_on_once_its_name_exists_in_cliniko(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"categories": ["Admin"]}})
    clinic.settings = {"tag_categories": ["Admin"]}
    clinic.patient(1)
    assert run_tick(clinic, NOW - DAY) != {}
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Admin")
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=ADMIN_TAG)
    clinic.appointment(11, 1, NOW + 30 * HOUR, type_id=STANDARD)
    assert run_tick(clinic, NOW) == {}
    assert planned_appointments(clinic, "reminder") == [11]
    assert tick.warnings(clinic.con, clinic.config) == []


def test_a_plan_without_the_ticks_holds_still_holds_a_trigger_whose_name_matches_nothing(clinic):
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"categories": ["Admin Onyl"]}})
    clinic.patient(1)
    clinic.appointment(10, 1, NOW + 25 * HOUR, type_id=ADMIN_TAG)
    clinic.plan(NOW)  # planning.plan alone (relay, a replay): no holds passed in
    assert planned_appointments(clinic, "reminder") == []


def test_a_renamed_tag_category_keeps_its_appointments_tags(clinic):
    clinic.trigger("first", event="first_appointment", timing="2 days before", channel="email",
                   template="welcome", purpose="transactional")  # fmt: skip
    clinic.patient(1)
    clinic.patient(2)
    run_tick(clinic, NOW - DAY)  # records type 12 as a tag ('Admin Only')
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Admin")
    clinic.appointment(10, 1, NOW + 36 * HOUR, type_id=INITIAL)
    clinic.appointment(20, 2, NOW + 36 * HOUR, type_id=ADMIN_TAG)  # a tag: no first appointment
    run_tick(clinic, NOW)
    assert planned_appointments(clinic, "first") == [10]
    tags = clinic.con.execute(
        "SELECT appointment_id FROM marts.appointments WHERE is_tag ORDER BY 1"
    ).fetchall()
    assert tags == [(20,)]


def test_taking_a_category_out_of_tag_categories_lets_its_recorded_types_go(clinic):
    clinic.patient(2)
    run_tick(clinic, NOW - DAY)
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Admin")
    clinic.appointment(20, 2, NOW + 36 * HOUR, type_id=ADMIN_TAG)
    clinic.settings = {"tag_categories": ["Admin"]}
    run_tick(clinic, NOW)
    clinic.settings = {"tag_categories": []}
    run_tick(clinic, NOW + MIN)
    tags = clinic.con.execute("SELECT count(*) FROM marts.appointments WHERE is_tag").fetchone()
    assert tags == (0,)


def test_a_tag_category_that_matches_nothing_is_a_warning_every_tick(clinic):
    # A typo in tag_categories makes every tag appointment a visit: a patient lapsed for years
    # and tagged yesterday goes back onto the marketing list. Nothing in Cliniko is held, but
    # the clinic is told, every tick, until the name matches.
    clinic.settings = {"tag_categories": ["Admin Onyl", "Admin Only"]}
    clinic.patient(1)
    assert run_tick(clinic, NOW) == {}
    assert tick.warnings(clinic.con, clinic.config) == [
        "tag_categories 'Admin Onyl' matches no category in Cliniko: its appointments count as "
        "visits (check the spelling in clinic.yaml)"
    ]


def test_the_default_tag_category_is_not_reported_where_the_clinic_has_none(clinic):
    rename_type(clinic, ADMIN_TAG, "Admin - Insurance Patient", "Admin")  # no 'Admin Only' at all
    clinic.patient(1)
    run_tick(clinic, NOW)  # tag_categories not written: the default [Admin Only]
    assert tick.warnings(clinic.con, clinic.config) == []


def test_names_are_not_held_before_anything_is_synced_and_built():
    clinic = Clinic()
    clinic.trigger("reminder", **{**REMINDER, "exclude": {"categories": ["Admin Onyl"]}})
    assert names.matches_now(clinic.con, ["categories"]) is None
    assert names.unmatched(clinic.con, clinic.config.triggers) == {}  # the breaker holds it all
    clinic.con.close()


# --- relay clinics: the configuration error at load -----------------------------------------------


def _clinics(
    tmp_path, monkeypatch, exclude: list[str], *, synced: bool, args=("clinics",), **settings
):
    """A clinics folder with one clinic whose reminder excludes ``exclude`` (and other
    clinic.yaml ``settings``); its database synced and built when ``synced``. Returns `relay
    clinics`' result."""
    import yaml
    from typer.testing import CliRunner

    from relay.cli import app
    from tasks.warehouse import open_db

    folder = tmp_path / "clinics" / "disk"
    folder.mkdir(parents=True)
    db = tmp_path / "disk.duckdb"
    reminder = {**REMINDER, "name": "reminder", "enabled": True, "exclude": {"categories": exclude}}
    (folder / "clinic.yaml").write_text(
        yaml.safe_dump(
            {
                "clinic": "disk",
                "name": "Disk Physio",
                "database": str(db),
                "triggers": [reminder],
                **settings,
            }
        )  # fmt: skip
    )
    if synced:
        with open_db(db) as con:
            c = Clinic(con)
            c.patient(1)
            c.appointment(10, 1, datetime.now(UTC) + 30 * HOUR)
            c.build(datetime.now(UTC))
    monkeypatch.setenv("RELAY_CLINICS_DIR", str(tmp_path / "clinics"))
    return CliRunner().invoke(app, list(args))


def test_relay_clinics_reports_a_name_that_matches_nothing_as_an_error(tmp_path, monkeypatch):
    out = _clinics(tmp_path, monkeypatch, ["Admin Onyl"], synced=True)
    assert out.exit_code == 2, out.output
    assert (
        "error: trigger 'reminder': exclude.categories 'Admin Onyl' matches no category in "
        "Cliniko" in out.output
    )


def test_relay_clinics_passes_names_that_match(tmp_path, monkeypatch):
    out = _clinics(tmp_path, monkeypatch, ["admin only "], synced=True)
    assert out.exit_code == 0, out.output
    assert "error" not in out.output and "not checked" not in out.output


def test_relay_clinics_before_the_first_sync_says_the_names_are_not_checked(tmp_path, monkeypatch):
    out = _clinics(tmp_path, monkeypatch, ["Admin Onyl"], synced=False)
    assert out.exit_code == 0, out.output
    assert "names not checked: nothing synced and built yet" in out.output


def test_relay_clinics_reports_a_tag_category_that_matches_nothing_as_an_error(
    tmp_path, monkeypatch
):
    out = _clinics(tmp_path, monkeypatch, ["Admin Only"], synced=True,
                   tag_categories=["Admin Onyl"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "error: tag_categories 'Admin Onyl' matches no category in Cliniko" in out.output


def test_relay_clinics_reports_a_journey_date_field_that_is_not_a_date_column(
    tmp_path, monkeypatch
):
    # Each tick holds such a journey; relay clinics said nothing of it (exit 0).
    birthday = {"name": "birthday", "entry": {"date_field": "birthday"},
                "steps": [{"send": "email", "template": "birthday"}]}  # fmt: skip
    out = _clinics(tmp_path, monkeypatch, ["Admin Only"], synced=True, journeys=[birthday])
    assert out.exit_code == 2, out.output
    assert (
        "error: journey 'birthday': entry.date_field 'birthday' is not a DATE column of "
        "marts.patients" in " ".join(out.output.split())
    )
    right = {**birthday, "entry": {"date_field": "date_of_birth"}}
    out = _clinics(tmp_path / "right", monkeypatch, ["Admin Only"], synced=True, journeys=[right])
    assert out.exit_code == 0, out.output


def test_relay_preview_trigger_says_the_tick_holds_a_trigger_whose_name_matches_nothing(
    tmp_path, monkeypatch
):
    # The preview listed the reminder as "send" under a mild warning, while every tick holds it
    # and sends nothing: it now says so, before the calendar of what it does once put right.
    args = ("preview", "trigger", "reminder", "--days", "3", "--clinic", "disk")
    out = _clinics(tmp_path, monkeypatch, ["Admin Onyl"], synced=True, args=args)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert (
        "held: exclude.categories 'Admin Onyl' matches no category in Cliniko (check the "
        "spelling in clinic.yaml, or write the Cliniko id): each tick plans and sends none of it "
        "until this is put right; below, what it does then"
    ) in text, out.output
    out = _clinics(tmp_path / "ok", monkeypatch, ["Admin Only"], synced=True, args=args)
    assert out.exit_code == 0, out.output
    assert "held" not in out.output and ": send" in out.output
