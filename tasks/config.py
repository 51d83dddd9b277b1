"""The clinic's versioned configuration: one YAML file per clinic, validated by typed models.

A clinic lives in ``clinics/<clinic>/clinic.yaml`` (``clinic:`` is its folder's name; templates
sit beside it). Credentials never live here: the file names a Prefect block, or ``env``. Every
error names the file, entry and field and what to do; an unknown key (a typo) is refused.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from tasks.errors import UserFacingError
from tasks.list_settings import MarketingListSettings
from tasks.paths import PROJECT_ROOT, clinics_dir, data_dir, misnamed, read_edited_text
from tasks.report_settings import ReportSettings
from tasks.settings_model import Settings
from tasks.triggers.definition import (
    ClockTime,
    Trigger,
    explain,
    parse_clock_time,
    parse_duration,
    parse_triggers,
)

SEGMENTS_DIR = PROJECT_ROOT / "sql" / "segments"
DEFAULT_TAG_CATEGORIES = ("Admin Only",)  # seed 000's category for admin "dummy" appointments


class ConfigError(UserFacingError, ValueError):
    """A clinic configuration problem, worded for the person who edits the file."""


class _Section(Settings):
    """A clinic.yaml section (tasks/settings_model.py: no unknown keys, no true/false for a
    number)."""


class ClinikoSettings(_Section):
    account: str = Field(
        "env",
        description=(
            "Name of a saved ClinikoAccount block, or 'env' to read CLINIKO_API_KEY, "
            "CLINIKO_CONTACT and CLINIKO_BASE_URL from the environment."
        ),
    )


class SyncSettings(_Section):
    overlap_minutes: int = Field(5, ge=1, le=24 * 60)
    reconcile_every_hours: int = Field(24, ge=1)
    stale_after_minutes: int = Field(20, ge=1)


def _minute_of_day(value: object) -> object:
    """HH:MM, read as clinic.yaml's other times of day are (an unquoted 23:30 refused, "3:00" ok)."""
    read = None if value is None else parse_clock_time(value)
    if isinstance(read, time) and read.second:
        raise ValueError("the nightly reconcile runs on whole minutes: write it as HH:MM")
    return None if read is None else f"{read:%H:%M}"


class ScheduleSettings(_Section):
    """When ``relay deploy`` schedules the clinic's runs (relay/cli/deploy.py)."""

    tick_every_minutes: float = Field(5, ge=1)
    # The nightly tick with reconcile (hard deletes), HH:MM in the clinic's time_zone; null: none.
    nightly_reconcile: Annotated[str | None, BeforeValidator(_minute_of_day)] = "03:00"
    max_lateness_minutes: float = Field(10, ge=1)


class FastLaneSettings(_Section):
    """The tick stays on between ticks polling Cliniko for new bookings (tasks/lane.py)."""

    enabled: bool = False
    every_seconds: float | None = Field(None, ge=1, le=300)  # None: from the budget
    requests_per_minute: int = Field(50, ge=5, le=200)  # Cliniko requests, the tick's included


class SenderSettings(_Section):
    """Who messages come from; also the ``clinic`` variables templates see."""

    name: str | None = Field(None, description="Display name; default: the clinic's name.")
    email: str = Field("hello@clinic.example", description="From address of outbox email.")
    reply_to: str | None = None
    phone: str = ""
    website: str = ""
    address: str = ""


class TrackingSettings(_Section):
    """Postmark open and link tracking of marketing email (reminders and other transactional
    mail stay untracked); counts come back per template and week (tasks/engagement.py)."""

    opens: bool = False
    links: bool = False


class ProvidersSettings(_Section):
    """Where messages go. Credentials live in Prefect blocks (or env vars), never here."""

    email: str = Field(
        "outbox",
        description=(
            "'outbox' (files under data/outbox/<clinic>/), 'env' (POSTMARK_SERVER_TOKEN, "
            "POSTMARK_FROM, POSTMARK_BASE_URL), or the name of a saved PostmarkServer block."
        ),
    )
    sms: str = Field(
        "outbox",
        description=(
            "'outbox', 'env' (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM or "
            "TWILIO_MESSAGING_SERVICE_SID, TWILIO_BASE_URL), or a saved TwilioAccount block name."
        ),
    )
    sender: SenderSettings = SenderSettings()
    # Marketing email links here (plus RFC 8058 one-click headers); the token is appended.
    unsubscribe_url: str = Field("http://127.0.0.1:8765/unsubscribe", pattern=r"^https?://")
    tracking: TrackingSettings = TrackingSettings()


# --- marketing: journeys, campaigns, frequency cap and quiet hours (PRODUCT.md §5, §6) ---------

_SOURCE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # part of every send key: no ':' and no spaces


def _duration(value: object) -> object:
    """'3 days', '12 hours', '90 minutes', '2 weeks' (a number of seconds also works)."""
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _segment_name(name: str) -> str:
    """A segment is a file sql/segments/<name>.sql; name it here so a typo fails at load."""
    if not re.fullmatch(r"[a-z0-9_]+", name) or not (SEGMENTS_DIR / f"{name}.sql").is_file():
        known = ", ".join(sorted(p.stem for p in SEGMENTS_DIR.glob("*.sql")))
        raise ValueError(f"no segment '{name}' (sql/segments/{name}.sql); known: {known}")
    return name


SegmentName = Annotated[str, AfterValidator(_segment_name)]


class JourneyEntry(_Section):
    """Exactly one way in. Entries come from the membership history, after the journey went live."""

    joins_list: Literal["email", "sms"] | None = None
    enters_segment: SegmentName | None = None
    exits_segment: SegmentName | None = None
    # A DATE column of marts.patients (e.g. date_of_birth): its anniversary each year, at `at`
    # in the clinic's time zone.
    date_field: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]*$")
    at: ClockTime = time(9, 0)

    @model_validator(mode="after")
    def _exactly_one(self) -> JourneyEntry:
        kinds = [k for k in ENTRY_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(ENTRY_KINDS)} (got {len(kinds)})")
        return self


ENTRY_KINDS = ("joins_list", "enters_segment", "exits_segment", "date_field")


class SendStep(_Section):
    send: Literal["email", "sms"]
    template: str
    # Skip the message (not send it late) if the frequency cap or quiet hours hold it longer
    # than this, e.g. '1 day' for a birthday. None: it waits as long as it takes.
    within: Duration | None = None


class WaitStep(_Section):
    wait: Duration

    @field_validator("wait")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("a wait must be longer than zero")
        return value


class ConditionStep(_Section):
    """Go on only if this holds now; otherwise the enrolment ends here (exited)."""

    only_if: Literal["still_in_segment", "in_segment", "not_in_segment"]
    segment: SegmentName | None = None

    @model_validator(mode="after")
    def _needs_segment(self) -> ConditionStep:
        if self.only_if != "still_in_segment" and self.segment is None:
            raise ValueError(f"only_if: {self.only_if} needs a segment: <name>")
        return self


def _step_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return next((k for k in ("send", "wait", "only_if") if k in value), None)
    kinds: dict[type, str] = {SendStep: "send", WaitStep: "wait", ConditionStep: "only_if"}
    return kinds.get(type(value))


JourneyStep = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[ConditionStep, Tag("only_if")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step is one of: send (with template), wait, only_if",
    ),
]


class JourneyExit(_Section):
    leaves_segment: bool = True  # enters_segment journeys: leaving that segment ends it
    unsubscribes: bool = True  # off every list the journey sends on: it ends


class Journey(_Section):
    name: str = Field(pattern=_SOURCE_NAME)
    entry: JourneyEntry
    steps: list[JourneyStep] = Field(min_length=1)
    exit: JourneyExit = JourneyExit()
    # once: a patient goes through it once ever; after_leaving: again, once the previous
    # enrolment has ended (a birthday journey needs this to come back every year).
    reentry: Literal["once", "after_leaving"] = "once"

    @model_validator(mode="after")
    def _coherent(self) -> Journey:
        if not any(isinstance(s, SendStep) for s in self.steps):
            raise ValueError("steps: a journey needs at least one send step")
        still_in = [s for s in self.steps if getattr(s, "only_if", None) == "still_in_segment"]
        if still_in and self.entry.enters_segment is None:
            raise ValueError(
                "steps: only_if: still_in_segment needs an enters_segment entry; "
                "use only_if: in_segment with segment: <name>"
            )
        return self

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(sorted({s.send for s in self.steps if isinstance(s, SendStep)}))


class Campaign(_Section):
    name: str = Field(pattern=_SOURCE_NAME)
    segment: SegmentName
    channel: Literal["email", "sms"]
    template: str
    # When the audience is frozen and sending starts: a time without an offset is the clinic's
    # local time. None: as soon as it is confirmed.
    send_at: datetime | None = None
    per_minute: int = Field(
        100,
        ge=1,
        description="Throttle: the audience comes due this many a minute from send_at; each "
        "tick sends what has come due (README, campaigns).",
    )


class FrequencyCap(_Section):
    messages: int = Field(2, ge=1)
    days: int = Field(7, ge=1)


class QuietHours(_Section):
    """No marketing SMS between start and end, in the clinic's time zone."""

    start: ClockTime = time(20, 0)
    end: ClockTime = time(9, 0)

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are equal; use quiet_hours: null for no quiet hours")
        return self


class MarketingSettings(_Section):
    """Limits over every marketing message: journeys, campaigns and marketing triggers.

    Reminders and other transactional messages are never held back by these.
    """

    frequency_cap: FrequencyCap | None = FrequencyCap()
    # Which source goes first when more are due than the cap allows; the rest wait.
    priority: tuple[Literal["trigger", "journey", "campaign"], ...] = (
        "trigger",
        "journey",
        "campaign",
    )
    quiet_hours: QuietHours | None = QuietHours()

    @field_validator("priority")
    @classmethod
    def _each_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(value) != ["campaign", "journey", "trigger"]:
            raise ValueError("list trigger, journey and campaign, each once, first = first sent")
        return value


def _unique_names(items: list) -> list:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"the name '{item.name}' is used twice; names must be unique")
        seen.add(item.name)
    return items


def _category_name(value: str) -> str:
    if not value.strip():
        raise ValueError("blank: write an appointment category as Cliniko names it (Admin Only)")
    return value


class ClinicConfig(_Section):
    clinic: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str
    time_zone: str = "Australia/Melbourne"
    country: str = Field("AU", pattern=r"^[A-Z]{2}$")
    database: Path | None = None
    cliniko: ClinikoSettings = ClinikoSettings()
    sync: SyncSettings = SyncSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    fast_lane: FastLaneSettings = FastLaneSettings()
    marketing_list: MarketingListSettings = MarketingListSettings()
    providers: ProvidersSettings = ProvidersSettings()
    journeys: Annotated[list[Journey], AfterValidator(_unique_names)] = []
    campaigns: Annotated[list[Campaign], AfterValidator(_unique_names)] = []
    marketing: MarketingSettings = MarketingSettings()
    # The owner's weekly report (tasks/report_settings.py); None: no report for this clinic.
    report: ReportSettings | None = None
    # Appointment categories that tag a patient (seed 000's admin-only "dummy" types), matched
    # like trigger category names (case and surrounding spaces ignored). Their appointments never
    # count as visits: not for the active-patient limit, recalls, visit-based segments,
    # appointment counts, Nth appointment or "no future appointment" (marts.appointments.is_tag).
    # Triggers and segments still target them by type or category. [] = no tags. An appointment
    # type once in a tag category stays a tag after a rename in Cliniko (state.tag_types, with a
    # warning each tick); taking the name out of this list lets its types go.
    tag_categories: tuple[Annotated[str, AfterValidator(_category_name)], ...] = (
        DEFAULT_TAG_CATEGORIES
    )
    # tasks/triggers/definition.py: validated there, so errors name the trigger and the field.
    triggers: Annotated[tuple[Trigger, ...], BeforeValidator(parse_triggers)] = ()

    # Where the file was read from; relative paths in it are resolved against this folder.
    source: Path | None = Field(None, exclude=True)

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"'{value}' is not an IANA time zone name (e.g. Australia/Sydney)"
            ) from None
        return value

    @model_validator(mode="after")
    def _trigger_templates(self) -> ClinicConfig:
        """Every trigger's template rendered as its messages will be (with no appointment for a
        patient, alert or invoice): a missing variable or file fails the load, not a send."""
        from tasks.messages.templates import TemplateError, Templates

        templates = Templates(self.folder)
        for i, trigger in enumerate(self.triggers):
            try:
                templates.validate(
                    trigger.template, trigger.channel, marketing=trigger.purpose == "marketing",
                    appointment=trigger.is_appointment_event,
                )  # fmt: skip
            except TemplateError as exc:
                raise PydanticCustomError(
                    "trigger_template",
                    "triggers: trigger '{name}' (entry {n}): template: {problem}",
                    {"name": trigger.name, "n": i + 1, "problem": str(exc)},
                ) from None
        return self

    @model_validator(mode="after")
    def _marketing_templates(self) -> ClinicConfig:
        """Journey and campaign templates checked as they will be sent: marketing, no
        appointment."""
        from tasks.messages.templates import TemplateError, Templates

        templates = Templates(self.folder)
        uses = [
            (f"journey '{j.name}' step {i + 1}", s.template, s.send)
            for j in self.journeys
            for i, s in enumerate(j.steps)
            if isinstance(s, SendStep)
        ] + [(f"campaign '{c.name}'", c.template, c.channel) for c in self.campaigns]
        for where, template, channel in uses:
            try:
                templates.validate(template, channel, marketing=True, appointment=False)
            except TemplateError as exc:
                raise PydanticCustomError(
                    "marketing_template",
                    "{where}: template: {problem}",
                    {"where": where, "problem": str(exc)},
                ) from None
        return self

    @property
    def folder(self) -> Path:
        return self.source.parent if self.source else clinics_dir() / self.clinic

    def written_tag_categories(self) -> tuple[str, ...]:
        """The tag categories clinic.yaml writes: each is checked against Cliniko (a typo
        makes its tag appointments visits); the default, not written, is not."""
        return self.tag_categories if "tag_categories" in self.model_fields_set else ()

    @property
    def database_path(self) -> Path:
        if self.database is None:
            return data_dir() / f"{self.clinic}.duckdb"
        return self.database if self.database.is_absolute() else self.folder / self.database


def _describe(err: ErrorDetails, raw: dict | None = None) -> str:
    loc = err["loc"]
    if not loc and err["type"] in ("trigger_template", "marketing_template"):
        return err["msg"]  # it names the trigger, journey or campaign
    where = ".".join(str(p) for p in loc) or "(top level)"
    if raw and len(loc) > 1 and loc[0] in ("journeys", "campaigns") and isinstance(loc[1], int):
        # name the entry, not just its position: "journeys[1] (birthday).steps.0.template"
        entries = raw.get(loc[0])
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        rest = "".join(f".{p}" for p in loc[2:])
        where = f"{loc[0]}[{loc[1]}]" + (f" ({name})" if name else "") + rest
    kind: Literal["missing", "extra_forbidden"] | str = err["type"]
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown setting (check the spelling; see clinics/demo/clinic.yaml)"
    return f"{where}: {explain(err)}"


# libyaml's safe loader when PyYAML has it (every tick step loads the file: 7x faster).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_clinic(path_or_name: str | Path) -> ClinicConfig:
    """Load ``clinics/<name>/clinic.yaml`` (or an explicit path) and validate it."""
    path = Path(path_or_name)
    if path.suffix not in (".yaml", ".yml"):
        path = clinics_dir() / str(path_or_name) / "clinic.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in clinics_dir().glob("*/clinic.yaml"))
        raise ConfigError(
            f"No clinic configuration at {path}. Known clinics: {', '.join(known) or 'none'}. "
            "Create clinics/<clinic>/clinic.yaml (copy clinics/demo/clinic.yaml)."
        )
    try:
        raw = yaml.load(read_edited_text(path, ConfigError), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    if problem := misnamed(path, raw.get("clinic")):
        raise ConfigError(problem)
    try:
        return ClinicConfig(**raw, source=path.resolve())
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e, raw) for e in exc.errors())
        raise ConfigError(f"{path}: invalid configuration:\n  {problems}") from None


def list_clinics() -> list[str]:
    return sorted(p.parent.name for p in clinics_dir().glob("*/clinic.yaml"))
