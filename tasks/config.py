"""The clinic's versioned configuration: one YAML file per clinic, validated by typed models.

A clinic lives in ``clinics/<clinic>/clinic.yaml`` (templates and other clinic files sit beside it).
Credentials never live here: the file names a Prefect block, or ``env`` for environment variables.
Every error names the file, the entry and the field, and says what to do.

Later features add their own section (marketing list, triggers, journeys, campaigns, providers) as
another model below; unknown keys are refused so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relay.env import PROJECT_ROOT, data_dir
from tasks.errors import UserFacingError
from tasks.triggers import Trigger, parse_triggers

CLINICS_DIR = PROJECT_ROOT / "clinics"


class ConfigError(UserFacingError, ValueError):
    """A clinic configuration problem, worded for the person who edits the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class MarketingListSettings(_Section):
    """Who is on the email and SMS marketing lists (PRODUCT.md §2; read by sql/marts)."""

    # Patients seen (or created) within this many months; 'all' keeps everyone.
    active_patient_limit: Literal[6, 12, 18, 24, "all"] = 24
    # At most this many subscribed emails (a trial account's 250); none = no cap.
    size_cap: int | None = Field(None, ge=1)
    # Which people a cap keeps first: the most recently seen, or the longest-standing patients.
    cap_keeps: Literal["most_recent_visit", "earliest_created"] = "most_recent_visit"
    # Only add patients whose Cliniko accepted_email_marketing is true.
    honour_cliniko_email_opt_in: bool = False

    @property
    def active_patient_months(self) -> int | None:
        return None if self.active_patient_limit == "all" else int(self.active_patient_limit)


class SenderSettings(_Section):
    """Who messages come from; also the ``clinic`` variables templates see."""

    name: str | None = Field(None, description="Display name; default: the clinic's name.")
    email: str = Field("hello@clinic.example", description="From address of outbox email.")
    reply_to: str | None = None
    phone: str = ""
    website: str = ""
    address: str = ""


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


class ClinicConfig(_Section):
    clinic: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str
    time_zone: str = "Australia/Melbourne"
    country: str = Field("AU", pattern=r"^[A-Z]{2}$")
    database: Path | None = None
    cliniko: ClinikoSettings = ClinikoSettings()
    sync: SyncSettings = SyncSettings()
    marketing_list: MarketingListSettings = MarketingListSettings()
    providers: ProvidersSettings = ProvidersSettings()
    # tasks/triggers.py: validated there, so errors name the trigger and the field.
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
        """Render every trigger's template against the sample context: a missing variable or
        file fails the load, so nothing is ever sent with a blank in it."""
        from tasks.templates import TemplateError, Templates

        templates = Templates(self.folder)
        for i, trigger in enumerate(self.triggers):
            try:
                templates.validate(
                    trigger.template, trigger.channel, marketing=trigger.purpose == "marketing"
                )
            except TemplateError as exc:
                raise PydanticCustomError(
                    "trigger_template",
                    "triggers: trigger '{name}' (entry {n}): template: {problem}",
                    {"name": trigger.name, "n": i + 1, "problem": str(exc)},
                ) from None
        return self

    @property
    def folder(self) -> Path:
        return self.source.parent if self.source else CLINICS_DIR / self.clinic

    @property
    def database_path(self) -> Path:
        if self.database is None:
            return data_dir() / f"{self.clinic}.duckdb"
        return self.database if self.database.is_absolute() else self.folder / self.database


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind: Literal["missing", "extra_forbidden"] | str = err["type"]
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown setting (check the spelling; see clinics/demo/clinic.yaml)"
    return f"{where}: {err['msg']}"


def load_clinic(path_or_name: str | Path) -> ClinicConfig:
    """Load ``clinics/<name>/clinic.yaml`` (or an explicit path) and validate it."""
    path = Path(path_or_name)
    if path.suffix not in (".yaml", ".yml"):
        path = CLINICS_DIR / str(path_or_name) / "clinic.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in CLINICS_DIR.glob("*/clinic.yaml"))
        raise ConfigError(
            f"No clinic configuration at {path}. Known clinics: {', '.join(known) or 'none'}. "
            "Create clinics/<clinic>/clinic.yaml (copy clinics/demo/clinic.yaml)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return ClinicConfig(**raw, source=path.resolve())
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: invalid configuration:\n  {problems}") from None


def list_clinics() -> list[str]:
    return sorted(p.parent.name for p in CLINICS_DIR.glob("*/clinic.yaml"))
