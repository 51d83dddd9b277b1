"""``relay test-send TRIGGER --to ADDRESS``: a trigger's message, rendered for a real patient the way
``relay render`` renders it, sent through the clinic's own provider for that channel and purpose
to a staff address only, marked [TEST].

Never to the patient (their address is never used, and an address of any patient of the clinic
is refused unless ``--allow-patient-address`` says it is a staff member's own), never in the
ledger (state.messages holds the patients' messages: a test is not one, so no frequency cap,
suppression or report counts it). Each test send is logged in state.test_sends: when, the
trigger, the patient id, the channel, a digest of the address and what the provider said.
"""

from __future__ import annotations

import dataclasses
import html
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import typer

PICK_DAYS = 14  # how far ahead to look for the first patient the trigger would go to


@dataclass(frozen=True)
class SentTest:
    patient_id: int
    used: str  # which appointment, in words
    provider: str
    outcome: str  # sent | failed | retry | unknown
    reason: str | None


def _first_patient(con, trigger, now: datetime) -> int:
    from tasks.errors import UserFacingError
    from tasks.triggers.preview import preview

    _, rows = preview(con, trigger, now, PICK_DAYS)
    chosen = next((r for r in rows if r.decision == "send"), rows[0] if rows else None)
    if chosen is None:
        raise UserFacingError(
            f"Trigger '{trigger.name}' would send to nobody in the next {PICK_DAYS} days; pass "
            "--patient ID (relay patients find NAME gives ids)."
        )
    return chosen.patient_id


def _patients_with(con, channel: str, address: str) -> int:
    column = "lower(trim(email))" if channel == "email" else "mobile_e164"
    return con.execute(
        f"SELECT count(*) FROM marts.patients WHERE {column} = ?", [address]
    ).fetchone()[0]


def _marked(content: Any, trigger: str, patient_id: int) -> Any:
    """The message as a test: [TEST] in the subject (or at the head of the SMS) and a line
    saying whose message it is and that the patient got nothing."""
    from tasks.providers.common import RenderedEmail, RenderedSms

    note = f"Test of '{trigger}' rendered for patient {patient_id}; the patient was sent nothing."
    if isinstance(content, RenderedSms):
        return dataclasses.replace(content, text=f"[TEST] {content.text}")
    assert isinstance(content, RenderedEmail)
    banner = (f'<p style="background:#fff3cd;padding:8px;border:1px solid #f0c36d">'
              f"<strong>[TEST]</strong> {html.escape(note)}</p>")  # fmt: skip
    body = content.html
    at = body.lower().find("<body")
    at = body.find(">", at) + 1 if at >= 0 else 0
    return dataclasses.replace(
        content,
        subject=f"[TEST] {content.subject}",
        html=body[:at] + banner + body[at:],
        text=f"[TEST] {note}\n\n{content.text}",
        headers={**content.headers, "X-Relay-Test": "yes"},
    )


def _asking(call):
    """A provider call; its refusal of the clinic's settings (ProviderUnavailable: a rejected
    token, a From with no confirmed sender signature, a sender Twilio refuses) in plain words."""
    from tasks.errors import UserFacingError
    from tasks.providers.common import ProviderUnavailable

    try:
        return call()
    except ProviderUnavailable as exc:
        raise UserFacingError(f"nothing was sent: {exc}") from None


def send_test(
    config: Any,
    trigger_name: str,
    to: str,
    providers: dict[str, Any],
    *,
    patient_id: int | None = None,
    allow_patient_address: bool = False,
    now: datetime | None = None,
) -> SentTest:
    """Render and send one test; the providers are the clinic's (``blocks.resolve``)."""
    from tasks.errors import UserFacingError
    from tasks.feedback import digest
    from tasks.messages.addresses import address_problem
    from tasks.messages.ledger import normalise_address
    from tasks.messages.templates import Templates
    from tasks.models import runner as models
    from tasks.models.phones import mobile_e164
    from tasks.providers.common import OutgoingMessage
    from tasks.triggers.preview import context_for_patient, trigger_named
    from tasks.warehouse import open_db

    now = now or datetime.now(UTC)
    trigger = trigger_named(config, trigger_name)
    channel, marketing = trigger.channel, trigger.purpose == "marketing"
    to = normalise_address(channel, to)
    if channel == "sms":  # as staff type it ("0412 345 678"), read in the clinic's country
        to = mobile_e164(to, config.country) or to
    if address_problem(channel, to):
        wanted = "an email address" if channel == "email" else "a mobile number (+61...)"
        raise UserFacingError(f"--to: trigger '{trigger.name}' sends {channel}; give {wanted}.")
    with open_db(config.database_path, wait_seconds=30, create=False) as con:
        models.require_good_build(con)
        patient_id = patient_id if patient_id is not None else _first_patient(con, trigger, now)
        address, context, used = context_for_patient(con, config, trigger, patient_id, now)
        if address and normalise_address(channel, address) == to:
            raise UserFacingError(
                f"--to is patient {patient_id}'s own address: a test send never goes to the "
                "patient. Give a staff address."
            )
        if _patients_with(con, channel, to) and not allow_patient_address:
            raise UserFacingError(
                f"--to belongs to a patient of clinic '{config.clinic}'. A test send goes to "
                "staff only; if this is a staff member's own address, pass "
                "--allow-patient-address."
            )
        provider, managed = providers[channel], None
        if marketing and channel == "email":
            managed = _asking(provider.managed_unsubscribe)
            # Postmark's own link, else ours with a token that unsubscribes nobody
            context["unsubscribe_url"] = managed or (
                config.providers.unsubscribe_url.rstrip("/") + "/TEST"
            )
        content = Templates(config.folder).render(
            trigger.template, channel, context, marketing=marketing,
            one_click_headers=not (marketing and channel == "email" and managed),
        )  # fmt: skip
        message = OutgoingMessage(
            message_id=0, send_key=f"test:{trigger.name}:{patient_id}:{uuid.uuid4().hex[:12]}",
            channel=channel, purpose=trigger.purpose, tag="test-send", to=to,
            content=_marked(content, trigger.name, patient_id),
        )  # fmt: skip
        (outcome,) = _asking(lambda: provider.send([message]))
        con.execute(
            "INSERT INTO state.test_sends VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [now, trigger.name, patient_id, channel, digest(channel, to), provider.name,
             outcome.kind, outcome.provider_message_id],
        )  # fmt: skip
    return SentTest(patient_id, used, provider.name, outcome.kind, outcome.reason)


def test_send_command(
    trigger_name: str = typer.Argument(..., metavar="TRIGGER", help="A trigger in clinic.yaml."),
    to: str = typer.Option(
        ..., "--to", help="The staff email (email trigger) or mobile (SMS; local or +61...)."
    ),
    patient: int = typer.Option(
        None, "--patient", help="Whose message (default: the first the trigger would go to)."
    ),
    allow_patient_address: bool = typer.Option(
        False,
        "--allow-patient-address",
        help="--to is also a patient's address (a staff member who is a patient).",
    ),
    clinic: str = typer.Option("demo", help="Clinic name (clinics/<name>/clinic.yaml)."),
) -> None:
    """Send a trigger's message, rendered for a real patient, to a staff address only, marked
    [TEST], through the clinic's provider. The patient gets nothing; the ledger is untouched."""
    from blocks.resolve import providers_for
    from tasks.config import load_clinic

    config = load_clinic(clinic)
    providers = providers_for(config)
    try:
        result = send_test(
            config, trigger_name, to, providers, patient_id=patient,
            allow_patient_address=allow_patient_address,
        )  # fmt: skip
    finally:
        for p in providers.values():
            p.close()
    line = (f"Test of {trigger_name} for patient {result.patient_id} ({result.used}) "
            f"via {result.provider}: {result.outcome}")  # fmt: skip
    if result.outcome != "sent":
        typer.secho(f"{line} ({result.reason})", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(line)
