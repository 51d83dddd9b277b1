"""Medical alerts, invoices and custom fields in triggers, on small hand-made clinics.

Raw rows are written as the sync writes them, payloads as Cliniko documents them (GET
/medical_alerts, GET /invoices, a patient's custom_fields), then the real models are built and
the planner runs at a fixed clock (the harness of test_plan.py).
"""

from __future__ import annotations

import json
import logging

import pytest

from tasks.triggers import names
from tasks.triggers import plan as planning
from tests.unit.triggers.test_plan import DAY, HOUR, MIN, NOW, Clinic, _link, _ts, live

ALERT = "Insurance patient"
WELCOME = dict(event="medical_alert_added", timing="5 minutes after", channel="email",
               template="welcome", purpose="transactional",
               filters={"medical_alerts": [ALERT]})  # fmt: skip
THANKS = dict(event="invoice_paid", channel="email", template="welcome",
              purpose="transactional")  # fmt: skip
PAID, OPEN, OPEN_CREDIT = 20, 10, 40
STATUS = {10: "Open", 20: "Paid", 30: "Closed", 40: "Open credit"}


class RecordsClinic(Clinic):
    """test_plan's clinic, with medical alerts, invoices and custom fields."""

    def __init__(self) -> None:
        super().__init__()
        self._alerts: dict[int, dict] = {}
        self._invoices: dict[int, dict] = {}

    def alert(self, id_: int, patient: int, name: str = ALERT, *, created=NOW - 2 * MIN) -> int:
        payload = {
            "id": str(id_), "name": name, "created_at": _ts(created), "updated_at": _ts(created),
            "deleted_at": None, "archived_at": None, "patient": _link("patients", patient),
            "links": {"self": f"https://api.au1.cliniko.com/v1/medical_alerts/{id_}"},
        }  # fmt: skip
        self._alerts[id_] = payload
        self._write("medical_alerts", id_, payload)
        return id_

    def remove_alert(self, id_: int, at=NOW - MIN) -> None:
        """The front desk deletes the alert (Cliniko archives it: archived_at)."""
        self._alerts[id_].update(archived_at=_ts(at), updated_at=_ts(at))
        self._write("medical_alerts", id_, self._alerts[id_])

    def invoice(self, id_: int, patient: int, *, status: int = OPEN, created=NOW - HOUR,
                closed=None, deleted=None) -> int:  # fmt: skip
        payload = {
            "id": id_, "number": 100 + id_, "issue_date": "2026-11-22", "total_amount": "95.0",
            "tax_amount": "0.0", "net_amount": "95.0", "discounted_amount": "0.0", "notes": "",
            "status": status, "status_description": STATUS[status],
            "invoice_to": "Pat Tester\r\n1 Example St", "patient_extra_information": "",
            "created_at": _ts(created), "updated_at": _ts(closed or created),
            "deleted_at": _ts(deleted), "closed_at": _ts(closed),
            "appointment": _link("appointments", 500 + id_),
            "business": _link("businesses", 1), "practitioner": _link("practitioners", 7),
            "patient": _link("patients", patient),
        }  # fmt: skip
        self._invoices[id_] = payload
        self._write("invoices", id_, payload)
        return id_

    def update_invoice(self, id_: int, *, status: int, at, closed=None) -> None:
        self._invoices[id_].update(
            status=status, status_description=STATUS[status], updated_at=_ts(at),
            closed_at=_ts(closed),
        )  # fmt: skip
        self._write("invoices", id_, self._invoices[id_])

    def custom_fields(self, patient: int, provider: str | None, policy: str = "") -> None:
        options = [
            {"name": n, "token": f"tok-{n}", **({"selected": True} if n == provider else {})}
            for n in ("Great Insurance", "Super Insurance")
        ]
        fields = {"sections": [{"name": "Insurance coverage", "token": "sec", "fields": [
            {"name": "Provider", "type": "radiobuttons", "other": {"enabled": True},
             "token": "prov", "options": options},
            {"name": "Policy number", "type": "text", "token": "pol", "value": policy},
        ]}]}  # fmt: skip
        self.update_patient(patient, custom_fields=fields)


@pytest.fixture
def clinic():
    c = RecordsClinic()
    yield c
    c.con.close()


def statuses(clinic, trigger):
    return [(r.patient_id, r.status, r.status_reason) for r in clinic.messages(trigger)]


# --- the staging models ------------------------------------------------------------------------


def test_staging_reads_alerts_invoices_and_custom_fields_as_cliniko_sends_them(clinic):
    clinic.patient(1)
    clinic.patient(2)
    clinic.custom_fields(1, "Super Insurance", policy="ABC-12345")
    clinic.custom_fields(2, None)
    clinic.alert(30, 1)
    clinic.alert(31, 2, "Latex allergy")
    clinic.remove_alert(31)
    clinic.invoice(40, 1, status=PAID, closed=NOW - 10 * MIN)
    clinic.invoice(41, 2, deleted=NOW - MIN)
    clinic.build(NOW)
    con = clinic.con
    assert con.execute(
        "SELECT medical_alert_id, patient_id, name, name_normalised FROM staging.medical_alerts"
    ).fetchall() == [(30, 1, ALERT, "insurance patient")]
    assert con.execute(
        "SELECT invoice_id, invoice_number, patient_id, appointment_id, status, is_paid, paid_at,"
        " total_amount::VARCHAR FROM staging.invoices"
    ).fetchall() == [(40, 140, 1, 540, PAID, True, NOW - 10 * MIN, "95.00")]
    assert con.execute(
        "SELECT patient_id FROM staging.patient_custom_fields WHERE section = 'Insurance coverage'"
        " AND field = 'Provider' AND value = 'Super Insurance'"
    ).fetchall() == [(1,)]
    assert con.execute(
        "SELECT patient_id, field, value, field_type FROM staging.patient_custom_fields "
        "ORDER BY patient_id, field"
    ).fetchall() == [
        (1, "Policy number", "ABC-12345", "text"),
        (1, "Provider", "Super Insurance", "radiobuttons"),
    ]


def test_checkboxes_give_a_row_per_ticked_box_and_other_its_text(clinic):
    clinic.patient(1)
    clinic.update_patient(1, custom_fields={"sections": [{"name": "Programs", "fields": [
        {"name": "Enrolled", "type": "checkboxes", "options": [
            {"name": "Pilates", "selected": True}, {"name": "Hydro", "selected": False},
            {"name": "Falls prevention", "selected": True}],
         "other": {"enabled": True, "selected": True, "value": "Run club"}}]}]})  # fmt: skip
    clinic.build(NOW)
    assert clinic.con.execute(
        "SELECT value FROM staging.patient_custom_fields ORDER BY value"
    ).fetchall() == [("Falls prevention",), ("Pilates",), ("Run club",)]


# --- medical_alert_added -----------------------------------------------------------------------


def test_the_welcome_goes_5_minutes_after_the_alert_is_added(clinic):
    clinic.trigger("welcome", **WELCOME)
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.patient(2)
    added = NOW - 2 * MIN
    clinic.alert(30, 1, created=added)
    clinic.alert(31, 2, "Latex allergy", created=added)  # not the trigger's alert
    clinic.plan(NOW)
    row = clinic.one("welcome")
    assert (row.patient_id, row.due_at, row.appointment_id) == (1, added + 5 * MIN, None)
    assert row.send_key == "trigger:welcome:1:medical_alert"


def test_an_alert_from_before_go_live_never_messages_whatever_the_timing(clinic):
    clinic.trigger("welcome", **{**WELCOME, "timing": "2 days after"})
    clinic.patient(1)
    clinic.patient(2)
    clinic.alert(30, 1, created=NOW - DAY)  # before go-live, its message due after it
    clinic.alert(31, 2, created=NOW + HOUR)  # after go-live
    clinic.plan(NOW)  # goes live now
    clinic.plan(NOW + 2 * DAY + 2 * HOUR)
    assert clinic.patients_messaged("welcome") == {2}


def test_removed_before_it_goes_cancels_and_re_added_does_not_message_again(clinic):
    """An alert removed and added again is a new alert in Cliniko: the patient was welcomed (or
    the welcome cancelled) once for this trigger, and that stays so."""
    clinic.trigger("welcome", **{**WELCOME, "timing": "1 day after"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.alert(30, 1, created=NOW - HOUR)
    clinic.plan(NOW)
    assert statuses(clinic, "welcome") == [(1, "planned", None)]
    clinic.remove_alert(30, at=NOW + HOUR)
    clinic.plan(NOW + 2 * HOUR)
    assert statuses(clinic, "welcome") == [(1, "cancelled", "medical alert removed in Cliniko")]
    clinic.alert(31, 1, created=NOW + 3 * HOUR)  # re-added: a new alert
    clinic.plan(NOW + 4 * HOUR)
    clinic.plan(NOW + 2 * DAY)
    assert len(clinic.messages("welcome")) == 1


def test_an_alert_re_added_after_the_welcome_went_sends_nothing_more(clinic):
    clinic.trigger("welcome", **WELCOME)
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.alert(30, 1, created=NOW - 10 * MIN)
    clinic.plan(NOW)
    (row,) = clinic.messages("welcome")
    clinic.remove_alert(30, at=NOW + MIN)
    clinic.alert(31, 1, created=NOW + 2 * MIN)
    clinic.alert(32, 1, created=NOW + 3 * MIN)  # and a duplicate
    clinic.plan(NOW + HOUR)
    assert [r.send_key for r in clinic.messages("welcome")] == ["trigger:welcome:1:medical_alert"]


def test_a_patient_tagged_at_go_live_is_not_welcomed_when_the_alert_is_re_added(clinic):
    """Carrying the alert when the trigger went live, the patient is not newly tagged when the
    desk removes it and adds it again (a new alert in Cliniko), nor when a second alert the
    trigger names outlives the first. One who had it removed before go-live and gets it again
    after is newly tagged."""
    clinic.trigger("welcome", **{**WELCOME, "filters": {"medical_alerts": [ALERT, "VIP"]}})
    for p in (1, 2, 3):
        clinic.patient(p)
    clinic.alert(30, 1, created=NOW - 30 * DAY)  # 1 carries it at go-live
    clinic.alert(31, 2, created=NOW - 30 * DAY)  # so does 2
    clinic.alert(32, 3, created=NOW - 90 * DAY)  # 3 had it, removed before go-live
    clinic.remove_alert(32, at=NOW - 60 * DAY)
    clinic.plan(NOW)  # goes live now
    clinic.remove_alert(30, at=NOW + HOUR)
    clinic.alert(33, 1, created=NOW + HOUR + MIN)  # 1: removed and re-added
    clinic.alert(34, 2, "VIP", created=NOW + HOUR)  # 2: a second named alert...
    clinic.remove_alert(31, at=NOW + 2 * HOUR)  # ... and the first removed
    clinic.alert(35, 3, created=NOW + HOUR)  # 3: newly tagged again
    clinic.plan(NOW + 2 * HOUR + MIN)
    clinic.plan(NOW + 3 * HOUR)
    assert clinic.patients_messaged("welcome") == {3}
    assert [r.send_key for r in clinic.messages("welcome")] == ["trigger:welcome:3:medical_alert"]


# --- invoice_created / invoice_paid -----------------------------------------------------------


def test_invoice_created_messages_each_new_invoice_once(clinic):
    clinic.trigger("invoiced", **{**THANKS, "event": "invoice_created"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.invoice(40, 1, created=NOW - 2 * DAY)  # before go-live
    clinic.invoice(41, 1, created=NOW - HOUR)
    clinic.invoice(42, 1, created=NOW - 30 * MIN)
    clinic.plan(NOW)
    clinic.plan(NOW + MIN)
    assert sorted(r.send_key for r in clinic.messages("invoiced")) == [
        "trigger:invoiced:1:invoice:41",
        "trigger:invoiced:1:invoice:42",
    ]


def test_invoice_paid_goes_when_it_is_paid_not_when_created(clinic):
    clinic.trigger("thanks", **THANKS)
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.invoice(40, 1, created=NOW - 2 * HOUR)
    clinic.plan(NOW - HOUR)
    assert clinic.messages("thanks") == []
    clinic.update_invoice(40, status=PAID, at=NOW - 5 * MIN, closed=NOW - 5 * MIN)
    clinic.plan(NOW)
    row = clinic.one("thanks")
    assert (row.send_key, row.due_at) == ("trigger:thanks:1:invoice:40", NOW - 5 * MIN)


def test_an_invoice_paid_twice_or_credited_then_paid_is_thanked_once(clinic):
    clinic.trigger("thanks", **{**THANKS, "timing": "1 hour after"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.patient(2)
    clinic.invoice(40, 1, status=PAID, created=NOW - 2 * HOUR, closed=NOW - 90 * MIN)
    clinic.invoice(41, 2, status=OPEN_CREDIT, created=NOW - 2 * HOUR)
    clinic.plan(NOW)
    assert statuses(clinic, "thanks") == [(1, "planned", None)]
    # paid, reopened (payment reversed) before the thank-you went: it waits, saying why (it
    # was cancelled, and the invoice paid again was never thanked at all)
    clinic.update_invoice(40, status=OPEN, at=NOW + MIN)
    clinic.plan(NOW + 2 * MIN)
    assert statuses(clinic, "thanks") == [(1, "planned", "invoice no longer paid (now Open)")]
    (waiting,) = clinic.messages("thanks")
    assert waiting.waiting_reason == "invoice no longer paid (now Open)"
    # paid again; the credited one is paid too: one message per invoice, never a second, the
    # first due an hour after its new payment
    clinic.update_invoice(40, status=PAID, at=NOW + 3 * MIN, closed=NOW + 3 * MIN)
    clinic.update_invoice(41, status=PAID, at=NOW + 3 * MIN, closed=NOW + 3 * MIN)
    clinic.plan(NOW + 5 * MIN)
    clinic.plan(NOW + 2 * HOUR)
    rows = sorted(clinic.messages("thanks"), key=lambda r: r.send_key)
    assert [(r.send_key, r.status, r.waiting_reason) for r in rows] == [
        ("trigger:thanks:1:invoice:40", "planned", None),
        ("trigger:thanks:2:invoice:41", "planned", None),
    ]
    assert rows[0].due_at == NOW + 3 * MIN + HOUR


def test_an_invoice_still_unpaid_when_its_grace_window_ends_is_skipped_saying_why(clinic):
    clinic.trigger("thanks", **{**THANKS, "timing": "1 hour after", "grace": "1 hour"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.invoice(40, 1, status=PAID, created=NOW - 2 * HOUR, closed=NOW - 90 * MIN)
    clinic.plan(NOW)
    clinic.update_invoice(40, status=OPEN, at=NOW + MIN)
    clinic.plan(NOW + 2 * MIN)
    clinic.plan(NOW + 3 * HOUR)  # past its moment + grace, still not paid: final
    assert statuses(clinic, "thanks") == [(1, "skipped", "invoice no longer paid (now Open)")]


def test_a_deleted_invoice_cancels_its_thank_you(clinic):
    clinic.trigger("thanks", **{**THANKS, "timing": "1 day after"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.invoice(40, 1, status=PAID, closed=NOW - MIN)
    clinic.plan(NOW)
    clinic.invoice(40, 1, status=PAID, closed=NOW - MIN, deleted=NOW + MIN)
    clinic.plan(NOW + HOUR)
    assert statuses(clinic, "thanks") == [(1, "cancelled", "invoice deleted in Cliniko")]


def test_a_deleted_patient_cancels_their_welcome_and_thank_you_saying_so(clinic):
    clinic.trigger("welcome", **{**WELCOME, "timing": "1 day after"})
    clinic.trigger("thanks", **{**THANKS, "timing": "1 day after"})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.alert(30, 1, created=NOW - HOUR)
    clinic.invoice(40, 1, status=PAID, closed=NOW - MIN)
    clinic.plan(NOW)
    clinic.update_patient(1, deleted_at=_ts(NOW + MIN))
    clinic.plan(NOW + HOUR)
    for trigger in ("welcome", "thanks"):
        assert statuses(clinic, trigger) == [(1, "cancelled", "patient deleted in Cliniko")]


# --- filters and exclusions --------------------------------------------------------------------

PATIENT_WELCOME = dict(event="patient_created", timing="10 minutes after", channel="email",
                       template="welcome", purpose="transactional")  # fmt: skip


def test_medical_alert_filters_or_within_and_exclusions_none_of(clinic):
    clinic.trigger("has", **PATIENT_WELCOME, filters={"medical_alerts": [" insurance PATIENT",
                   "WorkCover"]})  # fmt: skip
    clinic.trigger("has-not", **PATIENT_WELCOME, exclude={"medical_alerts": ["Do not contact"]})
    live(clinic, NOW - DAY)
    for p in (1, 2, 3, 4):
        clinic.patient(p, created=NOW - 5 * MIN)
    clinic.alert(30, 1)
    clinic.alert(31, 2, "Workcover")
    clinic.alert(32, 3, "Do not contact")
    clinic.plan(NOW + 6 * MIN)
    assert clinic.patients_messaged("has") == {1, 2}
    assert clinic.patients_messaged("has-not") == {1, 2, 4}


def test_custom_field_conditions_and_across_or_within_and_a_change_is_rechecked(clinic):
    clinic.trigger("super", **{**THANKS, "timing": "1 day after"}, filters={"custom_fields": [
        {"section": "Insurance coverage", "field": "provider",
         "values": ["Super Insurance", "Mega Insurance"]},
        {"field": "Policy number", "values": ["ABC-12345"]},
    ]})  # fmt: skip
    clinic.trigger(
        "not-great",
        **{**THANKS, "timing": "1 day after"},
        exclude={
            "custom_fields": [
                {
                    "section": "Insurance coverage",
                    "field": "Provider",
                    "values": ["Great Insurance"],
                }
            ]
        },
    )
    live(clinic, NOW - DAY)
    for p, provider, policy in ((1, "Super Insurance", "ABC-12345"), (2, "Super Insurance", "X"),
                                (3, "Great Insurance", "ABC-12345"), (4, None, "")):  # fmt: skip
        clinic.patient(p)
        clinic.custom_fields(p, provider, policy)
        clinic.invoice(40 + p, p, status=PAID, closed=NOW - MIN)
    clinic.plan(NOW)
    assert clinic.patients_messaged("super") == {1}
    assert clinic.patients_messaged("not-great") == {1, 2, 4}
    # patient 1 changes insurer before the message is due: it no longer goes
    clinic.custom_fields(1, "Great Insurance", "ABC-12345")
    clinic.plan(NOW + HOUR)
    assert statuses(clinic, "super") == [
        (1, "cancelled", "no longer matches the trigger's filters (patient changed)")
    ]
    assert (1, "cancelled") in {(p, s) for p, s, _ in statuses(clinic, "not-great")}


def test_names_and_values_typed_with_a_tab_or_a_line_break_around_them_still_match(clinic):
    """clinic.yaml's words are compared trimmed of any whitespace (Python's strip); Cliniko's
    were trimmed of spaces only, so an alert pasted with a tab, or a text field ending in the
    line break Cliniko keeps as \\r\\n, matched no filter and was a "matches no patient" warning."""
    clinic.trigger("has", **PATIENT_WELCOME, filters={
        "medical_alerts": ["Insurance patient"],
        "custom_fields": [{"section": "Insurance coverage", "field": "Policy number",
                           "values": ["ABC-12345"]}]})  # fmt: skip
    live(clinic, NOW - DAY)
    clinic.patient(1, created=NOW - 5 * MIN)
    clinic.custom_fields(1, "Super Insurance", policy="ABC-12345\r\n")
    clinic.alert(30, 1, "\tInsurance patient\u00a0")
    clinic.patient(2, created=NOW - 5 * MIN)
    clinic.custom_fields(2, None, policy=" \r\n")  # left empty: no row
    clinic.plan(NOW + 6 * MIN)
    assert clinic.patients_messaged("has") == {1}
    assert names.drift(clinic.con, clinic.config.triggers, []) == []
    assert clinic.con.execute(
        "SELECT patient_id, field, value_normalised FROM staging.patient_custom_fields ORDER BY ALL"
    ).fetchall() == [(1, "Policy number", "abc-12345"), (1, "Provider", "super insurance")]


def test_an_alert_filter_holds_on_appointment_triggers_too(clinic):
    from tests.unit.triggers.test_plan import REMINDER

    clinic.trigger("reminder", **{**REMINDER, "exclude": {"medical_alerts": ["Do not contact"]}})
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW + 30 * HOUR)
    clinic.appointment(11, 2, NOW + 30 * HOUR)
    clinic.alert(30, 2, "Do not contact")
    clinic.plan(NOW + 6 * HOUR)
    assert clinic.patients_messaged("reminder") == {1}


def test_a_name_no_patient_carries_is_a_warning_not_a_hold(clinic):
    clinic.trigger("welcome", **{**WELCOME, "filters": {"medical_alerts": ["Insurence patient"],
                   "custom_fields": [{"field": "Provider", "values": ["Nobody"]}]}})  # fmt: skip
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.custom_fields(1, "Super Insurance")
    clinic.alert(30, 1)
    clinic.build(NOW)
    config = clinic.config
    assert names.unmatched(clinic.con, config.triggers) == {}
    warned = names.drift(clinic.con, config.triggers, [])
    assert warned == [
        "trigger 'welcome': filters.medical_alerts 'Insurence patient' is on no patient in "
        "Cliniko now (check the spelling in clinic.yaml; the trigger goes on)",
        "trigger 'welcome': filters.custom_fields 'Provider' in ['Nobody'] matches no patient's "
        "custom field in Cliniko now (check the section, field and value in clinic.yaml; the "
        "trigger goes on)",
    ]
    assert "Insurance patient" not in " ".join(warned)  # a patient's alert is never shown


def test_the_preview_warns_of_an_alert_or_field_no_patient_carries(clinic):
    """Preview first: relay preview trigger showed 0 messages for a misspelt alert name with no
    word why, though it warns of a misspelt appointment type. It names the same typos the tick
    summary and relay clinics warn of (clinic.yaml's words only)."""
    from tasks.triggers import preview

    clinic.trigger("welcome", **{**WELCOME, "filters": {"medical_alerts": ["Insurence patient"],
                   "custom_fields": [{"section": "Insurance coverage", "field": "Provider",
                                      "values": ["Medibnk"]}]},
                   "exclude": {"medical_alerts": ["Do not contact"]}})  # fmt: skip
    clinic.patient(1)
    clinic.custom_fields(1, "Super Insurance")
    clinic.alert(30, 1)
    clinic.build(NOW)
    problems = preview.unknown_references(clinic.con, clinic.config.triggers[0])
    assert problems == [
        "filters.medical_alerts 'Insurence patient' is on no patient in Cliniko now",
        "filters.custom_fields 'Insurance coverage / Provider' in ['Medibnk'] matches no "
        "patient's custom field in Cliniko now",
        "exclude.medical_alerts 'Do not contact' is on no patient in Cliniko now",
    ]
    clinic.trigger("welcome", **WELCOME)
    assert preview.unknown_references(clinic.con, clinic.config.triggers[0]) == []


def test_a_switched_off_trigger_s_unmatched_names_warn_in_relay_clinics_not_every_tick(clinic):
    """A trigger written ahead, switched off ("preview first, then switch on"), naming an alert
    nobody carries yet: as for its appointment names, ticks (their summary and the
    relay.clinic.warning alert) say nothing of it; relay clinics shows it, marked disabled."""
    from tasks import tick

    clinic.trigger(
        "dnc",
        **{**PATIENT_WELCOME, "enabled": False},
        exclude={"medical_alerts": ["Do not contact"],
                 "custom_fields": [{"field": "Provider", "values": ["Nobody"]}]},
    )  # fmt: skip
    clinic.patient(1)
    clinic.build(NOW)
    config = clinic.config
    assert tick.warnings(clinic.con, config) == []
    _errors, warned = names.check(clinic.con, config.triggers, [])
    assert [w.split(":")[0] for w in warned] == ["trigger 'dnc' (disabled)"] * 2
    clinic.trigger("dnc", **{**PATIENT_WELCOME, "enabled": True},
                   exclude={"medical_alerts": ["Do not contact"]})  # fmt: skip
    assert tick.warnings(clinic.con, clinic.config) == [
        "trigger 'dnc': exclude.medical_alerts 'Do not contact' is on no patient in Cliniko now "
        "(check the spelling in clinic.yaml; the trigger goes on)"
    ]


def test_no_alert_name_or_invoice_detail_reaches_the_plan_result_or_logs(clinic, caplog):
    clinic.trigger("welcome", **WELCOME)
    clinic.trigger("thanks", **THANKS)
    live(clinic, NOW - DAY)
    clinic.patient(1)
    clinic.alert(30, 1)
    clinic.invoice(40, 1, status=PAID, closed=NOW - MIN)
    with caplog.at_level(logging.DEBUG):
        result = clinic.plan(NOW)
    shown = json.dumps(result.as_dict()) + caplog.text
    assert result.as_dict()["totals"] == {"planned": 2}
    for private in (ALERT, "insurance patient", "95", "Example St", "Pat1"):
        assert private not in shown


def test_definition_errors_name_the_field():
    from pydantic import ValidationError

    from tasks.triggers.definition import Trigger

    with pytest.raises(ValidationError, match="filters.medical_alerts: medical_alert_added needs"):
        Trigger.model_validate({**WELCOME, "name": "w", "filters": {}})
    with pytest.raises(ValidationError, match="invoice_paid has no appointment to filter on"):
        Trigger.model_validate({**THANKS, "name": "t", "filters": {"categories": ["x"]}})
    with pytest.raises(ValidationError, match="use 'N ... after'"):
        Trigger.model_validate({**THANKS, "name": "t", "timing": "1 day before"})
    with pytest.raises(ValidationError, match="values"):
        Trigger.model_validate({**THANKS, "name": "t", "filters": {"custom_fields": [
            {"field": "Provider", "values": []}]}})  # fmt: skip


def test_the_preview_lists_the_thank_you_without_reaching_back(clinic):
    from tasks.triggers import preview

    clinic.trigger("thanks", **THANKS)
    clinic.patient(1)
    clinic.invoice(40, 1, status=PAID, closed=NOW - DAY)  # before the preview's go-live (now)
    clinic.invoice(41, 1, status=PAID, closed=NOW + HOUR)
    clinic.build(NOW + 2 * HOUR)
    _, rows = preview.preview(clinic.con, clinic.config.triggers[0], NOW, days=1)
    assert [(r.patient_id, r.due_at) for r in rows] == [(1, NOW + HOUR)]
    assert planning.went_live(clinic.con, clinic.config.triggers[0]) is None


def test_yes_no_and_numbers_unquoted_in_yaml_are_explained_not_type_errors(tmp_path):
    """A Yes/No custom field ("Private health insurance?") is common in Cliniko, and YAML reads an
    unquoted Yes, No, On or Off as true/false and 0 as a number: the analyst is told to quote
    it, once per list, not "Input should be a valid string" plus a tuple-length complaint."""
    from tasks.config import ConfigError, load_clinic

    path = tmp_path / "clinic.yaml"
    path.write_text(
        "clinic: x\nname: X\ntriggers:\n"
        "  - name: thanks\n    event: invoice_paid\n    channel: email\n    template: welcome\n"
        "    purpose: transactional\n"
        "    filters:\n"
        "      medical_alerts: [2024 intake, 2025]\n"
        "      custom_fields: [{section: Insurance, field: Private health insurance, values: [Yes]}]\n"
        "    exclude:\n"
        "      custom_fields: [{field: Children, values: [0, '1']}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    message = str(err.value)
    assert "filters.custom_fields.0.values: YAML read an unquoted value as true/false" in message
    assert "put each value in quotes" in message
    assert "exclude.custom_fields.0.values: YAML read an unquoted value as a number" in message
    assert "filters.medical_alerts: YAML read an unquoted value as a number" in message
    assert "valid string" not in message and "Tuple should" not in message

    quoted = path.read_text().replace("[Yes]", "['Yes']").replace("[0, '1']", "['0', '1']")
    path.write_text(quoted.replace(", 2025]", ", '2025']"))
    (trigger,) = load_clinic(path).triggers
    assert trigger.filters.custom_fields[0].values == ("Yes",)
    assert trigger.exclude.custom_fields[0].values == ("0", "1")


def test_one_name_written_without_brackets_is_explained_not_a_tuple_error(tmp_path):
    """`medical_alerts: Insurance patient` (one alert, no brackets) is the first thing a clinic
    owner writes: they are told to put it in brackets, not "Input should be a valid tuple"."""
    from tasks.config import ConfigError, load_clinic

    path = tmp_path / "clinic.yaml"
    path.write_text(
        "clinic: x\nname: X\ntag_categories: Admin Only\ntriggers:\n"
        "  - name: welcome\n    event: medical_alert_added\n    channel: email\n"
        "    template: welcome\n    purpose: transactional\n"
        "    filters:\n      medical_alerts: Insurance patient\n"
        "    exclude:\n"
        "      custom_fields: {section: Insurance coverage, field: Provider, values: [Medibank]}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_clinic(path)
    message = str(err.value)
    assert "filters.medical_alerts: expected a list: write [Insurance patient]" in message
    assert "exclude.custom_fields: expected a list: put it in brackets, [...]" in message
    assert "tag_categories: expected a list: write [Admin Only]" in message
    assert "tuple" not in message
