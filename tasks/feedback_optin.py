"""A person's fresh opt-in, recorded by an operator (``relay patients opt-in``): the lift of what
stops marketing to one address, with the operator's evidence, through the feedback recorder's
history (``state.suppressions``, source ``operator``, reason ``opt_in``).

An opt-in is consent. It is not proof that an address can receive mail, nor a withdrawal of a
spam complaint, and some suppressions are not ours to lift at all. What is held now decides:

- **consent** (an unsubscribe through our link, Postmark's link or a CSV import; a reply asking
  to be taken off; a manual suppression): lifted, with the evidence.
- **deliverability** (``DELIVERABILITY``: a hard bounce, an invalid or undeliverable address, the
  soft-bounce limit, Postmark refusing the address without saying why): only with
  ``deliverable`` (the patient confirmed the address receives mail again, e.g. a typo fixed).
  Lifted without it, the next message bounces again, and bounces cost the sender's reputation.
- **a spam complaint**: only with ``despite_complaint`` (the patient asked, in writing, for our
  email again). Postmark's own complaint suppression cannot be lifted through its API: the
  command says so (tasks/providers/postmark_suppressions.py).
- **an SMS STOP** (``NEVER``): never. Twilio refuses every SMS to a number that replied STOP
  (error 21610) until the patient texts START, and that START lifts it here by itself.

All or nothing: if one suppression of the address cannot be lifted as asked, nothing is.

An opt-in records a lift in every scope it ends and always in ``marketing``: the state of a
scope is its newest row by ``occurred_at`` (``state.current_suppressions``), so an event from
before the opt-in that a later pull reads (Postmark's bounces and dumps are read from a day
before their cursor; an unsubscribe click still in the inbox) does not stop marketing again.

Nothing here logs an address; the evidence is stored as the operator typed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from tasks.errors import UserFacingError
from tasks.feedback import Book, Scope
from tasks.messages import ledger
from tasks.messages.addresses import address_problem
from tasks.warehouse import transaction

DELIVERABILITY = frozenset(
    {"hard_bounce", "invalid_address", "undeliverable", "soft_bounce_limit", "inactive_recipient"}
)
COMPLAINT = "spam_complaint"
NEVER = frozenset({"stop", "carrier_opt_out"})


class OptInRefused(UserFacingError):
    """The address cannot be opted in as asked; nothing was recorded."""


@dataclass(frozen=True)
class Held:
    """One current suppression of the address (no address: it is the one asked about)."""

    scope: str
    reason: str
    source: str
    occurred_at: datetime

    def describe(self) -> str:
        return f"{self.scope} ({self.reason}, from {self.source}, {self.occurred_at:%Y-%m-%d})"


def check_address(channel: ledger.Channel, address: str) -> str:
    """The address as recorded (normalised), or OptInRefused saying why it is not one."""
    if channel == "sms" and address_problem("sms", address.strip()):
        raise OptInRefused(
            "--channel sms needs the mobile number in E.164 (e.g. +61412345678); nothing recorded."
        )
    if channel == "email" and address_problem("email", address):
        raise OptInRefused("not a valid email address for --channel email; nothing recorded.")
    return ledger.normalise_address(channel, address)


def check_evidence(evidence: str) -> str:
    """The evidence on one line, or OptInRefused when there is none."""
    text = " ".join(evidence.split())
    if not text:
        raise OptInRefused("--evidence is required: what the patient said, and when.")
    return text


def held(con: duckdb.DuckDBPyConnection, channel: ledger.Channel, address: str) -> list[Held]:
    """What stops messages to the address now (the one reading: state.current_suppressions)."""
    rows = con.execute(
        "SELECT scope, reason, source, occurred_at FROM state.current_suppressions "
        "WHERE channel = ? AND address = ? ORDER BY scope, occurred_at",
        [channel, address],
    ).fetchall()
    return [Held(*row) for row in rows]


def refusal(
    channel: ledger.Channel, reasons: list[str], *, deliverable: bool, despite_complaint: bool
) -> str | None:
    """Why suppressions for these reasons cannot be lifted as asked, or None."""
    never = sorted(set(reasons) & NEVER)
    if never and channel == "sms":
        return (
            f"this number replied STOP ({', '.join(never)}): Twilio refuses every SMS to it until "
            "the patient texts START to the clinic's number, which relay then records by itself. "
            "Nothing recorded."
        )
    if never:
        return f"a {', '.join(never)} suppression is not lifted by hand. Nothing recorded."
    bounced = sorted(set(reasons) & DELIVERABILITY)
    if bounced and not deliverable:
        return (
            f"this address cannot receive messages ({', '.join(bounced)}): an opt-in does not fix "
            "that. If the patient confirmed it works again, add --deliverable. Nothing recorded."
        )
    if COMPLAINT in reasons and not despite_complaint:
        return (
            "this address marked our email as spam (spam_complaint). If the patient asked in "
            "writing for our email again, add --despite-complaint. Nothing recorded."
        )
    return None


def record(
    con: duckdb.DuckDBPyConnection,
    channel: ledger.Channel,
    address: str,
    *,
    evidence: str,
    by: str,
    now: datetime,
    deliverable: bool = False,
    despite_complaint: bool = False,
    provider_scopes: frozenset[Scope] = frozenset(),
) -> tuple[list[Held], bool]:
    """Record the opt-in (one transaction): a lift of every scope the address is suppressed in,
    of ``marketing``, and of the scopes whose suppression the provider just reactivated (so its
    older events, pulled later, count for nothing). Returns what it ended here and whether
    anything was recorded (nothing when nothing was suppressed, here or at the provider).
    OptInRefused, recording nothing, when something cannot be lifted."""
    address = check_address(channel, address)
    evidence = check_evidence(evidence)
    with transaction(con):
        now_held = held(con, channel, address)
        why = refusal(channel, [h.reason for h in now_held], deliverable=deliverable,
                      despite_complaint=despite_complaint)  # fmt: skip
        if why:
            raise OptInRefused(why)
        if not now_held and not provider_scopes:
            return [], False
        book = Book(con, channel, {address})
        also: tuple[Scope, ...] = ("marketing", *provider_scopes)
        book.lift(address, "opt_in", "operator", f"{by}: {evidence}", now, also=also)
        book.write(con)
    return now_held, True


@dataclass(frozen=True)
class Consent:
    """What Cliniko says of one patient with the address (from the last model build)."""

    patient_id: int
    accepted: bool | None  # accepted_email_marketing / accepted_sms_marketing; None: no answer
    archived: bool


def consent(
    con: duckdb.DuckDBPyConnection, channel: ledger.Channel, address: str
) -> list[Consent] | None:
    """Each patient holding the address and whether they accepted marketing on this channel in
    Cliniko (marts.patients, as of the last model build); None before the first build."""
    column, field = (
        ("email_normalised", "accepted_email_marketing")
        if channel == "email"
        else ("mobile_e164", "accepted_sms_marketing")
    )
    try:
        rows = con.execute(
            f"SELECT patient_id, {field}, is_archived FROM marts.patients WHERE {column} = ? "
            "ORDER BY patient_id",
            [ledger.normalise_address(channel, address)],
        ).fetchall()
    except duckdb.CatalogException:
        return None
    return [Consent(p, accepted, bool(archived)) for p, accepted, archived in rows]
