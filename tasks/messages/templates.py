"""Message templates: Jinja2 files a clinic edits, rendered strictly.

A template is a folder named after it, looked up first in the clinic's ``templates/`` folder, then
in the project's ``templates/``:

    <name>/subject.txt, <name>/body.html, <name>/body.txt     an email
    <name>/sms.txt                                             an SMS

The example emails extend one layout, ``_layout/email.html`` (the HTML shell) and, for
marketing, ``_layout/email.txt``: the unsubscribe footer is written there once and a template fills
its ``content`` block (a transactional one overrides the ``footer`` block). A clinic's templates may
extend it too, or override it in their own ``_layout/``; it is no template name of its own (a name
starts with a letter or digit).

Rules, checked when the configuration loads (every template is rendered against a sample context)
and again on every real render:
- a missing variable is an error (StrictUndefined), never a blank in a patient's message; so is
  an expression Python refuses (``{{ name + 1 }}``), named by its line and class, not its text;
- at load, also in branches the sample does not take: every ``{{ x }}`` and ``patient.x`` /
  ``appointment.x`` / ``clinic.x`` the template's text (and a layout it extends) reads must be a
  name messages have (the sample's, built as real ones are), else an error naming the line and
  the names there are; one guarded by ``is defined`` or ``| default`` may be missing
  (tasks/messages/template_names.py);
- HTML is autoescaped (a patient called ``<b>`` stays text);
- marketing email must carry ``{{ unsubscribe_url }}`` in both bodies; it also gets RFC 8058
  one-click ``List-Unsubscribe`` headers (its URL in ASCII: an internationalised host in its
  IDNA form), unless the provider manages unsubscribes and adds its own (then
  ``unsubscribe_url`` is its placeholder: tasks/providers/postmark.py);
- marketing SMS must tell the patient how to opt out ("Reply STOP to opt out");
- an SMS longer than one segment is a warning (GSM-7 vs UCS-2 counting).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import jinja2

from tasks.errors import UserFacingError
from tasks.messages.template_names import unknown_name
from tasks.paths import PROJECT_ROOT
from tasks.providers.common import Rendered, RenderedEmail, RenderedSms, SmsSize

PROJECT_TEMPLATES = PROJECT_ROOT / "templates"
EMAIL_PARTS = ("subject.txt", "body.html", "body.txt")
SMS_PART = "sms.txt"

# A marketing SMS must say how to stop, in words the carrier keyword handling understands
# ("Reply STOP", "Reply with 'STOP'", "Text STOPALL"; Twilio's words: tasks/providers/twilio.py).
OPT_OUT = re.compile(
    r"\b(reply|text|txt|send|sms)\s+(with\s+)?[\"']?(stop|stopall|unsubscribe|optout)\b",
    re.IGNORECASE,
)

# GSM 03.38: the basic set costs one septet, the extension set two (escape + char).
GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = set("^{}\\[~]|€\f")


class TemplateError(UserFacingError):
    """A template that cannot be used: names the template, the file and what to change."""


class Blank(str):
    """A clinic detail clinic.yaml leaves empty (``providers.sender.phone``, ``website``,
    ``address``) in :func:`clinic_variables`: false in ``{% if clinic.phone %}``, but printed as
    it stands it is an error (:func:`template_warnings` checks each trigger's template with
    these, so a message saying "To change it call ." is seen before it goes)."""

    setting: str

    def __new__(cls, setting: str) -> Blank:
        blank = super().__new__(cls, "")
        blank.setting = setting
        return blank


class _BlankPrinted(jinja2.TemplateRuntimeError):
    pass


def _no_blanks(value: Any) -> Any:
    """Jinja's finalize: every ``{{ ... }}`` value passes here before it is written."""
    if isinstance(value, Blank):
        raise _BlankPrinted(
            f"clinic.{value.setting} is empty: set providers.sender.{value.setting} in "
            f"clinic.yaml, or print it only under {{% if clinic.{value.setting} %}}"
        )
    return value


def clinic_variables(sender: Any, clinic_name: str) -> dict[str, str]:
    """The ``clinic`` variables as clinic.yaml's ``providers.sender`` gives them, a detail left
    empty as :class:`Blank` (the check; messages get tasks.messages.prepare.clinic_details)."""
    details = {
        "name": sender.name or clinic_name,
        "email": sender.reply_to or sender.email,
        "phone": sender.phone,
        "website": sender.website,
        "address": sender.address,
    }
    return {k: v if v.strip() else Blank(k) for k, v in details.items()}


def sms_size(text: str) -> SmsSize:
    """How many segments a carrier bills for this text (concatenated parts lose header room).
    A part never splits a character (an escape and its extended character, an emoji's two
    UTF-16 units): one that would straddle a boundary goes whole to the next part."""
    if all(c in GSM_BASIC or c in GSM_EXTENDED for c in text):
        costs = [2 if c in GSM_EXTENDED else 1 for c in text]
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]  # UTF-16 code units
        single, multi, encoding = 70, 67, "UCS-2"
    units = sum(costs)
    if units <= single:
        return SmsSize(encoding, units, 1)
    segments, room = 1, multi
    for cost in costs:
        if cost > room:
            segments, room = segments + 1, multi
        room -= cost
    return SmsSize(encoding, units, segments)


def unsubscribe_headers(unsubscribe_url: str) -> dict[str, str]:
    """RFC 8058 one-click: mail clients POST ``List-Unsubscribe=One-Click`` to the URL, given as
    a URI (RFC 2369): a header with a character outside ASCII is written as RFC 2047 encoded
    words, which no client reads as a link."""
    return {
        "List-Unsubscribe": f"<{_ascii_uri(unsubscribe_url)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def _ascii_uri(url: str) -> str:
    """``url`` with an internationalised host in its IDNA form (``praxis-müller.de`` ->
    ``xn--praxis-mller-klb.de``) and any other character outside ASCII percent-encoded (UTF-8,
    which the endpoint's server decodes back to the route it serves)."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, colon, port = hostport.partition(":")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:  # not a name IDNA can write: percent-encoded, as RFC 3986 allows
        host = quote(host, safe="")
    safe = "/:@!$&'()*+,;=%~"
    netloc = quote(userinfo, safe=safe) + at + host + colon + port
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe + "?"),
            quote(parts.fragment, safe=safe),
        )
    )


@lru_cache(maxsize=32)
def _environment(search_path: tuple[Path, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        keep_trailing_newline=False,
        finalize=_no_blanks,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Templates:
    """The templates one clinic can use: its own folder first, then the project's examples."""

    def __init__(self, clinic_folder: Path | None = None, *, extra: Sequence[Path] = ()) -> None:
        paths = [*extra]
        if clinic_folder is not None:
            paths.append(clinic_folder / "templates")
        paths.append(PROJECT_TEMPLATES)
        self.search_path = tuple(p.resolve() for p in paths)
        self.env = _environment(self.search_path)
        # One lookup per part for this object's life (a dispatch run), not one file check per message.
        self._compiled: dict[tuple[str, str], jinja2.Template] = {}

    def _part(self, name: str, part: str) -> jinja2.Template:
        if (name, part) not in self._compiled:
            self._compiled[name, part] = self._load(name, part)
        return self._compiled[name, part]

    def _load(self, name: str, part: str) -> jinja2.Template:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise TemplateError(
                f"template name {name!r}: use letters, digits, '-', '_' or '.' (it names a folder)"
            )
        try:
            return self.env.get_template(f"{name}/{part}")
        except jinja2.TemplateNotFound:
            where = " or ".join(str(p / name / part) for p in self.search_path)
            raise TemplateError(f"template {name!r}: no file {where}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template {name!r}: {exc.filename} line {exc.lineno}: {exc.message}"
            ) from None

    def _render(self, name: str, part: str, context: Mapping[str, Any]) -> str:
        template = self._part(name, part)
        try:
            return template.render(context)
        except jinja2.UndefinedError as exc:
            # Jinja's message names the variable, never a value.
            raise TemplateError(
                f"template {name!r} ({part}): {exc.message}. Use only variables the context has "
                "(patient, appointment, clinic, unsubscribe_url), or guard with {% if ... %}."
            ) from None
        except _BlankPrinted as exc:  # names the setting, never a value
            raise TemplateError(f"template {name!r} ({part}): {exc}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {name!r} ({part}): {type(exc).__name__}") from None
        except Exception as exc:  # Python refused an expression ({{ name + 1 }}: TypeError)
            # its text can quote a value: the class and the template's line only
            lines = [
                f.lineno for f in traceback.extract_tb(exc.__traceback__)
                if f.filename == template.filename
            ]  # fmt: skip
            where = f" line {lines[-1]}" if lines else ""
            raise TemplateError(
                f"template {name!r} ({part}){where}: {type(exc).__name__} (an expression "
                "Python cannot work out)"
            ) from None

    def render_email(
        self, name: str, context: Mapping[str, Any], *, marketing: bool,
        one_click_headers: bool = True,
    ) -> RenderedEmail:  # fmt: skip
        subject = " ".join(self._render(name, "subject.txt", context).split())
        if not subject:
            raise TemplateError(f"template {name!r}: subject.txt renders to an empty subject")
        html = self._render(name, "body.html", context)
        text = self._render(name, "body.txt", context)
        headers: dict[str, str] = {}
        if marketing:
            url = context.get("unsubscribe_url")
            if not url or url not in text or _html_attr(url) not in html:
                raise TemplateError(
                    f"template {name!r} is used for marketing, so body.html and body.txt must "
                    "both include {{ unsubscribe_url }} (a working unsubscribe link is the law)."
                )
            headers = unsubscribe_headers(url) if one_click_headers else {}
        return RenderedEmail(subject=subject, html=html, text=text, headers=headers)

    def render_sms(self, name: str, context: Mapping[str, Any], *, marketing: bool) -> RenderedSms:
        text = self._render(name, SMS_PART, context).strip()
        if not text:
            raise TemplateError(f"template {name!r}: sms.txt renders to an empty message")
        if marketing and not OPT_OUT.search(text):
            raise TemplateError(
                f"template {name!r} is used for marketing SMS, so it must say how to opt out, "
                "e.g. end it with 'Reply STOP to opt out'."
            )
        return RenderedSms(text=text, size=sms_size(text))

    def render(
        self, name: str, channel: str, context: Mapping[str, Any], *, marketing: bool,
        one_click_headers: bool = True,
    ) -> Rendered:  # fmt: skip
        if channel == "email":
            return self.render_email(
                name, context, marketing=marketing, one_click_headers=one_click_headers
            )
        return self.render_sms(name, context, marketing=marketing)

    def validate(
        self, name: str, channel: str, *, marketing: bool, appointment: bool = True,
        clinic: Mapping[str, Any] | None = None,
    ) -> list[str]:  # fmt: skip
        """Render against the sample context; raise TemplateError, or return warnings to show.
        ``appointment``: whether its messages are about an appointment (False: a trigger on a
        patient, alert or invoice, whose messages have ``appointment`` empty); ``clinic``: the
        clinic's own details (:func:`clinic_variables`), else a sample clinic's."""
        context = sample_context(
            marketing=marketing, channel=channel, appointment=appointment, clinic=clinic
        )
        rendered = self.render(name, channel, context, marketing=marketing)
        # the branches the sample did not take: every name read must be one a message has
        every = sample_context(marketing=True, channel="email", clinic=clinic)
        for part in EMAIL_PARTS if channel == "email" else (SMS_PART,):
            problem = unknown_name(self.env, name, part, context, every)
            if problem:
                raise TemplateError(problem)
        if isinstance(rendered, RenderedSms) and rendered.size.segments > 1:
            size = rendered.size
            return [
                f"template {name!r}: the sample SMS is {size.segments} segments "
                f"({size.units} {size.encoding} units; one segment holds "
                f"{160 if size.encoding == 'GSM-7' else 70}). Each segment is billed."
                + (
                    " Non-GSM characters (emoji, curly quotes) force UCS-2."
                    if size.encoding == "UCS-2"
                    else ""
                )
            ]
        return []


def template_warnings(config: Any, trigger: Any) -> list[str]:
    """What a trigger's template warns of against the sample context (an SMS over one segment),
    and a clinic detail it prints that clinic.yaml leaves empty ("To change it call ."): the
    configuration loads with these, so the commands that check a clinic or a trigger (``relay
    clinics``, ``relay preview trigger``) show them."""
    templates = Templates(config.folder)
    kwargs = dict(
        marketing=trigger.purpose == "marketing", appointment=trigger.is_appointment_event
    )
    warnings = templates.validate(trigger.template, trigger.channel, **kwargs)
    clinic = clinic_variables(config.providers.sender, config.name)
    try:
        templates.validate(trigger.template, trigger.channel, clinic=clinic, **kwargs)
    except TemplateError as exc:
        warnings.append(f"{exc}; as it stands its messages would say nothing there")
    return warnings


def size_note(size: SmsSize) -> str:
    """One line on what an SMS costs: its units, encoding and segments."""
    return f"{size.units} {size.encoding} units, {size.segments} segment" + (
        "" if size.segments == 1 else "s (each segment is billed)"
    )


def _html_attr(url: str) -> str:
    # the URL as it appears in autoescaped HTML (& becomes &amp;)
    return str(jinja2.utils.markupsafe.escape(url))


def build_context(
    *,
    clinic: Mapping[str, Any],
    first_name: str,
    preferred_first_name: str | None = None,
    last_name: str | None = None,
    appointment_starts_at: datetime | None = None,
    time_zone: str | None = None,
    appointment_type: str | None = None,
    practitioner: str | None = None,
    business: str | None = None,
    unsubscribe_url: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The variables every template sees. ``first_name`` is the preferred name when there is one.

    The appointment's time is shown in ``time_zone`` (the business's, from Cliniko's
    ``time_zone_identifier``); pass the UTC start and let this do the conversion.
    ``appointment.day`` says the day as the patient reads it when the message goes (``now``):
    "today", "tomorrow", else "on Monday 7 December" (a reminder sent at once for a late
    booking is not "tomorrow"); without ``now`` (a sample), the longest form.
    """
    context: dict[str, Any] = {
        "patient": {
            "first_name": (preferred_first_name or "").strip() or first_name,
            "legal_first_name": first_name,
            "last_name": last_name or "",
        },
        "clinic": dict(clinic),
        "appointment": None,
    }
    if appointment_starts_at is not None:
        if time_zone is None or appointment_starts_at.tzinfo is None:
            raise ValueError("an appointment time needs a time zone and a timezone-aware start")
        local = appointment_starts_at.astimezone(ZoneInfo(time_zone))
        context["appointment"] = {
            "starts_at": local,
            "date": f"{local:%A} {local.day} {local:%B}",
            "day": _day(local, now),
            "time": f"{local.hour % 12 or 12}:{local:%M} {'am' if local.hour < 12 else 'pm'}",
            "type": appointment_type or "",
            "practitioner": practitioner or "",
            "business": business or "",
        }
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def _day(local: datetime, now: datetime | None) -> str:
    """ "today", "tomorrow" or "on Monday 7 December": ``local``'s day seen from ``now``."""
    if now is not None:
        ahead = (local.date() - now.astimezone(local.tzinfo).date()).days
        if ahead in (0, 1):
            return ("today", "tomorrow")[ahead]
    return f"on {local:%A} {local.day} {local:%B}"


# through clinic_variables, as a clinic's own details are: the same names
SAMPLE_CLINIC = clinic_variables(
    SimpleNamespace(
        name="Sample Physio", email="hello@sample.example", reply_to=None, phone="03 9000 0000",
        website="https://sample.example", address="1 Sample St, Melbourne VIC 3000",
    ),
    "Sample Physio",
)  # fmt: skip


def sample_context(
    *, marketing: bool, channel: str = "email", clinic: Mapping[str, Any] | None = None,
    appointment: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A context with every variable set: what templates are checked against at load time, with
    the names a real one has (dispatch gives ``unsubscribe_url`` to marketing email only).
    ``appointment=False``: as a message about no appointment gets it (``appointment`` empty)."""
    context = build_context(
        clinic=clinic or SAMPLE_CLINIC,
        first_name="Alexandra",
        preferred_first_name="Alex",
        last_name="Sample",
        appointment_starts_at=datetime.fromisoformat("2026-03-03T22:30:00+00:00"),
        time_zone="Australia/Melbourne",
        appointment_type="Initial Consultation",
        practitioner="Dr Sam Example",
        business="Sample Physio Richmond",
        unsubscribe_url=(
            "https://relay.example/unsubscribe/SAMPLE-TOKEN"
            if marketing and channel == "email"
            else None
        ),
    )
    if not appointment:
        context["appointment"] = None
    return context


def render_to_file(
    templates: Templates,
    name: str,
    channel: str,
    context: Mapping[str, Any],
    dest_dir: Path,
    *,
    marketing: bool,
    to: str,
    sender: str,
) -> Path:
    """Render a message into files a person can open (.eml + .html, or .txt) and return the main one.

    For previews ("show me what this patient would get"); nothing is sent or recorded.
    """
    from tasks.providers.outbox import write_message_files

    rendered = templates.render(name, channel, context, marketing=marketing)
    stem = f"preview-{name}-{channel}"
    return write_message_files(dest_dir, stem, rendered, to=to, sender=sender, send_key=stem)
