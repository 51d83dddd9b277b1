"""Triggers: declarative "send this template, on this channel, at this moment, to these people".

A clinic writes them under ``triggers:`` in its clinic.yaml (PRODUCT.md §3; seeds 000, 001, 004):

    - name: sms-reminder              # letters, digits, '-', '_': part of every send key
      enabled: true                   # off by default: preview first, then switch on
      event: before_appointment
      timing: 24 hours before         # 'immediately' or 'N minutes|hours|days|weeks before|after'
      last_minute: send               # booked after the planned moment: send at once (the
                                      # default for 'before' triggers), or skip
      grace: 2 hours                  # later than this past its moment: skipped, not sent late
      channel: sms
      template: reminder-24h
      purpose: transactional          # or marketing: reaches only the marketing lists
      exclude: {categories: [Admin Only]}

Events and the moment each is measured from:

=====================  ==================================  =====================================
event                  moment                              still true when sent?
=====================  ==================================  =====================================
appointment_booked     the appointment was created         not cancelled, archived or deleted
before_appointment     the appointment starts (before)     kept (not cancelled, did-not-arrive)
after_appointment      the appointment ends (attended)     attended: arrived, or past and not
                                                           marked ('require_arrived' for arrived)
cancelled              the appointment was cancelled       still cancelled
did_not_arrive         the missed appointment ends         still marked did-not-arrive
first_appointment      the patient's 1st appointment:      as before/after_appointment; counts
nth_appointment (n)    starts (before) or ends (after)     kept appointments the filters accept
patient_created        the patient was created             patient not archived
medical_alert_added    the patient's first current alert   the alert still on the patient
                       named in filters.medical_alerts
                       was created in Cliniko
invoice_created        the invoice was created             invoice not deleted
invoice_paid           the invoice was paid (closed_at of  still paid (status 20)
                       a status-20 invoice)
=====================  ==================================  =====================================

Medical alerts and invoices (tasks/triggers/patient_records.py), seed 000's most common tag and
Peptalkr's three events:

    - name: insurance-welcome
      event: medical_alert_added      # any of these alerts newly on a patient
      filters: {medical_alerts: [Insurance patient]}
      timing: 5 minutes after
      ...
    - name: thank-you
      event: invoice_paid             # or invoice_created
      exclude: {custom_fields: [{section: Insurance coverage, field: Provider,
                                 values: [Super Insurance]}]}

Like patient_created, each messages a patient once per trigger: ``medical_alert_added`` once per
patient (an alert removed and added again, which in Cliniko is a new alert, sends nothing more;
nor does a second alert the trigger names; a patient carrying one when the trigger went live
gets nothing, even after it is removed and added again), the invoice events once per invoice
(an invoice paid, reopened or credited and paid again is thanked once). Only an alert or invoice
whose moment is at or after go-live messages: switching one on never reaches back, whatever its
timing. An alert removed (or an invoice deleted) before its message goes cancels it; an invoice
no longer paid (reopened, payment reversed) waits to be paid again, to the end of its grace
window (tasks/triggers/gone.py).

Patient filters, on any event: ``medical_alerts: [names]`` (has any of them now) and
``exclude: {medical_alerts: [names]}`` (has none of them now); ``custom_fields: [conditions]``
(every condition holds) and ``exclude: {custom_fields: [...]}`` (none holds), each condition a
field of the patient's Cliniko custom fields, ``{section: ..., field: ..., values: [...]}``
(section optional), holding when a value of that field is one of ``values`` (a selected option
or the text typed; staging.patient_custom_fields). They are read as they are at planning and
again when the message is due. Alert names and values are text: quote a Yes, No or number
(``values: ['Yes']``), which YAML would otherwise read as true/false or a number.

Filters are OR within a kind and AND across kinds. Names are matched without regard to case or
surrounding spaces; a number is a Cliniko id. A live trigger stays on the ids its names matched
when it went live, whatever Cliniko renames later; a name that matches nothing holds the trigger
(tasks/triggers/names.py). Nothing here reaches SQL as text: the planner (tasks/triggers/query.py)
binds every value as a parameter.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from itertools import product
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from tasks.settings_model import Settings

Event = Literal[
    "appointment_booked",
    "before_appointment",
    "after_appointment",
    "cancelled",
    "did_not_arrive",
    "first_appointment",
    "nth_appointment",
    "patient_created",
    "medical_alert_added",
    "invoice_created",
    "invoice_paid",
]
# Events about a patient's medical alerts and invoices (tasks/triggers/patient_records.py).
RECORD_EVENTS = frozenset({"medical_alert_added", "invoice_created", "invoice_paid"})
PATIENT_EVENTS = RECORD_EVENTS | {"patient_created"}  # no appointment to filter on
APPOINTMENT_EVENTS = frozenset(get_args(Event)) - PATIENT_EVENTS
# Events whose timing may point either way from the appointment (before it starts, after it ends).
EITHER_WAY_EVENTS = frozenset({"first_appointment", "nth_appointment"})

_UNITS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*(minute|hour|day|week)s?\s*$", re.IGNORECASE)
_TIMING = re.compile(r"^\s*(\d+)\s*(minute|hour|day|week)s?\s+(before|after)\s*$", re.IGNORECASE)
MAX_OFFSET = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """'30 minutes', '12 hours', '3 days', '2 weeks': every duration clinic.yaml writes (a
    trigger's grace, a journey's wait and within) is read here."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            f"'{text}' is not a duration; write e.g. '3 days', '12 hours', '30 minutes'"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2).lower()])


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def parse_clock_time(value: object) -> object:
    """'08:00', '8:00', '20:30': every time of day clinic.yaml writes (quiet hours, a journey's
    date entry, the owner's report) is read here, 24-hour, in the clinic's time zone. YAML reads
    an unquoted 9:00 or 20:00 as a number of minutes (540, 1200), which pydantic took as seconds
    past midnight (00:09, 00:20: quiet hours from twenty past midnight): refused, saying how to
    write it. A ``time`` passes as it is."""
    if isinstance(value, time):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        hours, minutes = divmod(int(value), 60)
        if value == int(value) and 0 <= value < 24 * 60:
            raise ValueError(
                f'write the time in quotes, e.g. "{hours:02d}:{minutes:02d}" (unquoted, YAML '
                f"reads {hours}:{minutes:02d} as the number {int(value)})"
            )
    match = _CLOCK.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(
            f"'{value}' is not a time of day; write it 24-hour and in quotes, e.g. \"08:00\" "
            'or "20:30"'
        )
    return time(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


ClockTime = Annotated[time, BeforeValidator(parse_clock_time)]


class _Strict(Settings):
    """tasks/settings_model.py: no unknown keys, no true/false for a number."""


Ref = int | str  # a Cliniko id, or a name


def _names(values: tuple[Ref, ...]) -> list[str]:
    return sorted({v.strip().lower() for v in values if isinstance(v, str)})


def _ids(values: tuple[Ref, ...]) -> list[int]:
    return sorted({v for v in values if isinstance(v, int)})


class Range(_Strict):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class AppointmentCount(Range):
    """The patient's kept appointments (attended, past unmarked or upcoming), of any type or of
    these types; cancelled and did-not-arrive ones do not count. Inclusive bounds."""

    types: tuple[Ref, ...] = ()


def _written_as_text(value: Any) -> Any:
    """A list of names or values compared as text (alert names, custom-field values): YAML reads
    an unquoted Yes, No, On or Off as true/false and 0 or 2024 as a number, which are not what
    the front desk typed in Cliniko (and cannot be turned back: True was Yes, yes, On or true).
    One error for the list, saying to quote them, instead of pydantic's type errors per item."""
    if isinstance(value, list | tuple):
        for kind, types in (("true/false", bool), ("a number", int | float)):
            if any(isinstance(v, types) for v in value):
                raise PydanticCustomError(
                    "yaml_text",
                    f"YAML read an unquoted value as {kind}: put each value in quotes as it is "
                    "written in Cliniko, e.g. ['Yes', 'No'] or ['0']",
                )
        if any(isinstance(v, str) and not v.strip() for v in value):
            # compared trimmed, a blank matches nothing: a filter on it never fires
            raise PydanticCustomError(
                "yaml_text", "a blank name matches nothing: remove it or write the name"
            )
    return value


# Names and values compared as written in Cliniko (trimmed, case ignored), never ids.
Texts = Annotated[tuple[str, ...], BeforeValidator(_written_as_text)]
# One such name (a custom field's section or field): not blank, or it matches nothing.
Name = Annotated[str, BeforeValidator(lambda v: _written_as_text([v])[0] if v is not None else v)]


class CustomField(_Strict):
    """One condition on the patient's Cliniko custom fields: a value of ``field`` (in
    ``section``, if given) is one of ``values`` (OR within). Compared trimmed, case ignored."""

    section: Name | None = None
    field: Name
    values: Texts = Field(min_length=1)

    def describe(self) -> str:
        where = f"{self.section.strip()} / " if self.section else ""
        return f"'{where}{self.field.strip()}' in {[v.strip() for v in self.values]}"

    def ruled_out_by(self, other: CustomField) -> list[str]:
        """Values wanted here that the exclusion ``other`` (same field; any or same section) drops."""
        key = [(c.field.strip().lower(), (c.section or "").strip().lower()) for c in (self, other)]
        same = key[0][0] == key[1][0] and key[1][1] in ("", key[0][1])
        return sorted(set(_names(self.values)) & set(_names(other.values))) if same else []


class Filters(_Strict):
    appointment_types: tuple[Ref, ...] = ()
    categories: tuple[str, ...] = ()
    businesses: tuple[Ref, ...] = ()
    practitioners: tuple[Ref, ...] = ()
    appointment_count: AppointmentCount | None = None
    age: Range | None = None  # whole years
    # Checked when the message is due: no kept appointment starting later (other than this one).
    no_future_appointment: bool = False
    # cancelled / did_not_arrive only: no appointment booked after the cancellation (or miss).
    not_rebooked_since_cancelling: bool = False
    # The patient carries any of these medical alerts now (names; medical_alert_added: the
    # alerts it fires on).
    medical_alerts: Texts = ()
    custom_fields: tuple[CustomField, ...] = ()  # every condition holds (AND across)


# Filter and exclusion kinds that pick appointments (the rest are about the patient).
APPOINTMENT_KINDS = ("appointment_types", "categories", "businesses", "practitioners")


class Exclusions(_Strict):
    appointment_types: tuple[Ref, ...] = ()
    categories: tuple[str, ...] = ()
    businesses: tuple[Ref, ...] = ()
    medical_alerts: Texts = ()  # the patient carries none of these now
    custom_fields: tuple[CustomField, ...] = ()  # no condition holds


class Trigger(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    enabled: bool = False
    event: Event
    n: int | None = Field(None, ge=1, le=1000)  # nth_appointment only
    timing: str = "immediately"
    # 'before' triggers: a message whose planned moment had passed when its appointment was
    # booked goes at once (send) or never (skip). A move into the window is such a booking, seen
    # when made: for a message already planned, at the tick that sees the move; for one not yet
    # planned (the appointment was further off than the planner looks ahead), at the
    # appointment's last edit (Cliniko's updated_at, the only sign of a move). So an unplanned
    # appointment edited for any reason after its reminder's moment (and before it starts) counts
    # as booked then; never for a moment before the trigger went live.
    last_minute: Literal["send", "skip"] | None = None
    grace: str = "1 day"
    channel: Literal["email", "sms"]
    template: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    purpose: Literal["transactional", "marketing"]
    # Honour Cliniko's reminder_type (SMS / Email / SMS & Email / None); default: on for
    # before_appointment (reminders), off for everything else.
    respect_reminder_preference: bool | None = None
    # after_appointment (and first/nth after): count only appointments Cliniko marked arrived;
    # by default a past appointment nobody marked counts as attended (many clinics never mark).
    require_arrived: bool = False
    filters: Filters = Filters()
    exclude: Exclusions = Exclusions()

    @field_validator("timing")
    @classmethod
    def _timing(cls, value: str) -> str:
        if value.strip().lower() == "immediately":
            return "immediately"
        match = _TIMING.match(value)
        if not match:
            raise ValueError(
                f"'{value}' is not a timing: write 'immediately' or e.g. '5 minutes after', "
                "'24 hours before', '6 weeks after'"
            )
        n, unit, direction = int(match.group(1)), match.group(2).lower(), match.group(3).lower()
        if timedelta(seconds=n * _UNITS[unit]) > MAX_OFFSET:
            raise ValueError(f"'{value}' is more than a year")
        return f"{n} {unit}{'s' if n != 1 else ''} {direction}"

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: str) -> str:
        grace = parse_duration(value)
        if not timedelta(minutes=1) <= grace <= timedelta(days=30):
            raise ValueError(f"'{value}': a grace window is between 1 minute and 30 days")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Trigger:
        event, direction = self.event, self.direction
        if event == "before_appointment" and direction != "before":
            raise _field_error("timing", "before_appointment needs a timing 'N ... before'")
        if event not in APPOINTMENT_EVENTS | PATIENT_EVENTS:  # pragma: no cover (Literal)
            raise _field_error("event", f"unknown event {event}")
        if event not in EITHER_WAY_EVENTS | {"before_appointment"} and direction == "before":
            raise _field_error(
                "timing", f"{event} happens first and the message after it: use 'N ... after'"
            )
        if (event == "nth_appointment") != (self.n is not None):
            raise _field_error("n", "n (which appointment: 2, 5, 10...) goes with nth_appointment")
        if self.last_minute is not None and direction != "before":
            raise _field_error("last_minute", "applies only to triggers timed 'before'")
        if self.require_arrived and not (
            event == "after_appointment" or (event in EITHER_WAY_EVENTS and direction != "before")
        ):
            raise _field_error("require_arrived", "applies only to 'after' appointment triggers")
        if event in PATIENT_EVENTS:
            for field in APPOINTMENT_KINDS:
                if getattr(self.filters, field):
                    raise _field_error(
                        f"filters.{field}", f"{event} has no appointment to filter on"
                    )
            if any(getattr(self.exclude, f, ()) for f in APPOINTMENT_KINDS):
                raise _field_error("exclude", f"{event} has no appointment to exclude")
        if event == "medical_alert_added" and not self.filters.medical_alerts:
            raise _field_error(
                "filters.medical_alerts",
                "medical_alert_added needs the alerts it fires on, e.g. "
                "filters: {medical_alerts: [Insurance patient]}",
            )
        for field in ("appointment_types", "categories", "businesses", "medical_alerts"):
            wanted, unwanted = getattr(self.filters, field), getattr(self.exclude, field)
            both: list[Ref] = [*sorted(set(_names(wanted)) & set(_names(unwanted)))]
            both += sorted(set(_ids(wanted)) & set(_ids(unwanted)))
            if both:  # it could never fire, without a word
                raise _field_error(
                    f"exclude.{field}",
                    f"{both[0]!r} is in filters.{field} too: the trigger would never fire",
                )
        for wanted, unwanted in product(self.filters.custom_fields, self.exclude.custom_fields):
            if common := wanted.ruled_out_by(unwanted):  # it never fires for that value
                what = f"'{wanted.field.strip()}' {common[0]!r} is in filters.custom_fields too"
                raise _field_error("exclude.custom_fields", f"{what}: it would never fire for it")
        if self.filters.not_rebooked_since_cancelling and event not in (
            "cancelled",
            "did_not_arrive",
        ):
            raise _field_error(
                "filters.not_rebooked_since_cancelling", "goes with cancelled or did_not_arrive"
            )
        return self

    # --- derived ------------------------------------------------------------------------------

    @property
    def direction(self) -> Literal["before", "after"]:
        return "before" if self.timing.endswith("before") else "after"

    @property
    def offset(self) -> timedelta:
        """How far the send moment is from the event's moment (always >= 0; see direction)."""
        if self.timing == "immediately":
            return timedelta(0)
        n, unit, _ = self.timing.split()
        return timedelta(seconds=int(n) * _UNITS[unit.rstrip("s")])

    @property
    def grace_window(self) -> timedelta:
        return parse_duration(self.grace)

    @property
    def is_appointment_event(self) -> bool:
        return self.event in APPOINTMENT_EVENTS

    @property
    def is_record_event(self) -> bool:
        """Fires on a medical alert or an invoice (tasks/triggers/patient_records.py)."""
        return self.event in RECORD_EVENTS

    @property
    def position(self) -> int | None:
        """Which of the patient's (filtered) appointments this fires on: 1st, nth, or any."""
        return 1 if self.event == "first_appointment" else self.n

    @property
    def honours_reminder_preference(self) -> bool:
        if self.respect_reminder_preference is not None:
            return self.respect_reminder_preference
        return self.event == "before_appointment"

    @property
    def fingerprint(self) -> str:
        """What decides who gets it and when: a change re-dates the go-live (see plan.py).

        The name, description, template and enabled flag are left out: wording and switching
        are not a new definition.
        """
        material = self.model_dump(
            mode="json", exclude={"name", "description", "template", "enabled"}
        )
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def definition_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _field_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(
        "trigger_field", "{field}: {message}", {"field": field, "message": message}
    )


def explain(err: ErrorDetails) -> str:
    """pydantic's words for a problem in clinic.yaml, except where they are a programmer's: one
    value where a list goes ("medical_alerts: Insurance patient") is not "a valid tuple"."""
    if err["type"] in ("tuple_type", "list_type"):
        given = err.get("input")
        if isinstance(given, str) and given.strip():
            return f"expected a list: write [{given.strip()}], in brackets even for one"
        return "expected a list: put it in brackets, [...], even for one"
    return err["msg"]


def describe_error(index: int, raw: Any, exc: ValidationError) -> str:
    """One line per problem: which trigger (by name and position) and which field."""
    name = raw.get("name") if isinstance(raw, dict) else None
    who = f"trigger '{name}' (entry {index + 1})" if name else f"trigger entry {index + 1}"
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "trigger_field":
            lines.append(f"{who}: {err['msg']}")
        elif err["type"] == "missing":
            lines.append(f"{who}: {loc}: required but missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{who}: {loc}: unknown setting (check the spelling)")
        else:
            lines.append(f"{who}: {loc or '(entry)'}: {explain(err)}")
    return "\n  ".join(lines)


def parse_triggers(raw: Any) -> tuple[Trigger, ...]:
    """Validate the ``triggers:`` list; errors name the trigger and the field."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise PydanticCustomError(
            "triggers", "expected a list of triggers (each starts with '- name:')"
        )
    triggers, problems, seen = [], [], set()
    for i, item in enumerate(raw):
        if isinstance(item, Trigger):
            trigger = item
        else:
            try:
                trigger = Trigger.model_validate(item)
            except ValidationError as exc:
                problems.append(describe_error(i, item, exc))
                continue
        if trigger.name in seen:
            problems.append(f"trigger '{trigger.name}' (entry {i + 1}): name: used twice")
        seen.add(trigger.name)
        triggers.append(trigger)
    if problems:
        raise PydanticCustomError("triggers", "{problems}", {"problems": "\n  ".join(problems)})
    return tuple(triggers)


def reference_lists(values: tuple[Ref, ...]) -> tuple[list[int], list[str]]:
    """(ids, normalised names) for binding as SQL parameters."""
    return _ids(values), _names(values)
