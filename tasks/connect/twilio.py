"""Checking a Twilio account and its SMS sender before they are saved (the twilio client).

- ``GET /2010-04-01/Accounts/{Sid}.json``: the SID and auth token belong together (else 401,
  code 20003) and the account is active (not suspended or closed).
- A number (E.164): ``GET .../IncomingPhoneNumbers.json?PhoneNumber=...`` lists it on this account
  with SMS capability; a number the account does not own cannot be a sender (Twilio would refuse
  every message with 21606).
- A messaging service (``MG...``): ``GET https://messaging.twilio.com/v1/Services/{Sid}`` finds it
  on this account (else 404, code 20404), and its Sender Pool (``.../PhoneNumbers``,
  ``.../ShortCodes``, ``.../AlphaSenders``) has a sender: a new service has none, and Twilio
  sends nothing through it until one is added.
- An alphanumeric sender ID (1-11 letters, digits and spaces, at least one letter): checked for
  form only. Twilio has no API that says whether a country's registration of the ID is complete,
  alphanumeric IDs cannot be used in the US or Canada, and patients cannot reply to them (no
  STOP by SMS): docs/connect.md says what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from tasks.connect import ConnectFailed
from tasks.messages.addresses import E164
from tasks.providers.twilio import RedirectingHttpClient

SERVICE = "Twilio"
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
TEST_CREDENTIALS = 20008  # Twilio's Test credentials reach no resource connect reads
NO_ALPHANUMERIC = frozenset({"US", "CA"})  # countries where Twilio supports no alphanumeric IDs


@dataclass(frozen=True)
class TwilioFacts:
    account_name: str
    account_type: str  # Trial or Full
    sender_kind: str  # number, messaging_service or alphanumeric
    notes: list[str] = field(default_factory=list)  # worth knowing, not failures


def sender_kind(sender: str) -> str:
    """What a sender is: ``number``, ``messaging_service`` or ``alphanumeric``; raises if none."""
    sender = sender.strip()
    if E164.match(sender):
        return "number"
    if SERVICE_SID.match(sender):
        return "messaging_service"
    if ALPHANUMERIC.match(sender):
        return "alphanumeric"
    raise ConnectFailed(
        SERVICE,
        "bad_sender",
        f"'{sender}' is not a sender: give a number in E.164 form (+61400000000), a messaging "
        "service SID (MG followed by 32 hex digits), or an alphanumeric sender ID (1 to 11 "
        "letters, digits or spaces, with at least one letter).",
    )


def account_sid_problem(account_sid: str | None) -> str | None:
    """Why ``account_sid`` is no account SID, in plain words; None when it is one."""
    if ACCOUNT_SID.match((account_sid or "").strip()):
        return None
    return (
        "the account SID must be AC followed by 32 hex digits (Twilio Console → Account "
        "Info). An API key SID (SK...) is not an account SID."
    )


def verify_twilio(
    account_sid: str,
    auth_token: str,
    sender: str,
    *,
    country: str | None = None,
    base_url: str | None = None,
    timeout: float = 15.0,
) -> TwilioFacts:
    """Check the account and the sender; ``country`` is the clinic's (alphanumeric IDs)."""
    sid = (account_sid or "").strip()
    problem = account_sid_problem(sid)
    if problem:
        raise ConnectFailed(SERVICE, "bad_credentials", problem)
    kind = sender_kind(sender or "")
    sender = sender.strip()
    country_code = (country or "").upper()
    if kind == "alphanumeric" and country_code in NO_ALPHANUMERIC:
        raise ConnectFailed(
            SERVICE,
            "bad_sender",
            f"alphanumeric sender IDs cannot send to {country_code} numbers: use a Twilio "
            "number or a messaging service instead.",
        )
    http = RedirectingHttpClient(base_url, timeout=timeout) if base_url else None
    if http is None:
        from twilio.http.http_client import TwilioHttpClient

        http = TwilioHttpClient(timeout=timeout)
    client = Client(sid, (auth_token or "").strip() or "-", http_client=http)
    try:
        account = client.api.v2010.accounts(sid).fetch()
        notes: list[str] = []
        if account.status != "active":
            raise ConnectFailed(
                SERVICE,
                "account_inactive",
                f"the account is {account.status}; Twilio sends nothing from a {account.status} "
                "account. Reactivate it in the Twilio Console (Billing) first.",
            )
        if account.type == "Trial":
            notes.append(
                "This is a Trial account: it sends only to numbers verified in the Console and "
                "prefixes every message. Upgrade it before switching a trigger on."
            )
        if kind == "number":
            _check_number(client, sid, sender)
        elif kind == "messaging_service":
            _check_service(client, sender)
        else:
            notes.append(
                f"'{sender}' is an alphanumeric sender ID: check in the Twilio Console that it "
                "is registered for your country, and note patients cannot reply STOP to it "
                "(marketing SMS carry their opt-out some other way)."
            )
    except TwilioRestException as exc:
        raise _refused(exc, sender) from None
    except TwilioException as exc:
        raise ConnectFailed(SERVICE, "unreachable", f"Twilio did not answer: {exc}") from None
    return TwilioFacts(
        account_name=str(account.friendly_name or ""),
        account_type=str(account.type or ""),
        sender_kind=kind,
        notes=notes,
    )


def _check_number(client: Client, sid: str, number: str) -> None:
    owned = [
        n
        for n in client.api.v2010.accounts(sid).incoming_phone_numbers.list(
            phone_number=number, limit=20
        )
        if n.phone_number == number
    ]
    if not owned:
        raise ConnectFailed(
            SERVICE,
            "sender_not_owned",
            f"the number {number} is not one of this account's phone numbers (Phone Numbers → "
            "Manage → Active numbers), so Twilio would refuse to send from it. Buy or port the "
            "number into this account, or give one it owns.",
        )
    capabilities = owned[0].capabilities or {}
    if not capabilities.get("sms", capabilities.get("SMS", False)):
        raise ConnectFailed(
            SERVICE,
            "sender_not_owned",
            f"the number {number} belongs to this account but cannot send SMS (voice only). "
            "Give a number with SMS capability.",
        )


def _check_service(client: Client, service_sid: str) -> None:
    service = client.messaging.v1.services(service_sid).fetch()
    pool = client.messaging.v1.services(service_sid)
    if not (
        pool.phone_numbers.list(limit=1)
        or pool.short_codes.list(limit=1)
        or pool.alpha_senders.list(limit=1)
    ):
        raise ConnectFailed(
            SERVICE,
            "service_without_senders",
            f"the messaging service {service_sid} ('{service.friendly_name}') has no sender in "
            "its Sender Pool, so Twilio has nothing to send its messages from. Add your SMS "
            "number (or alphanumeric sender ID) in the Console under Messaging → Services → "
            "Sender Pool, then connect again.",
        )


def _refused(exc: TwilioRestException, sender: str) -> ConnectFailed:
    if exc.code == TEST_CREDENTIALS:
        return ConnectFailed(
            SERVICE,
            "test_credentials",
            "these are the account's Test credentials (403, code 20008): Twilio lets them read "
            "nothing and send no real SMS. Give the Live Account SID and Auth Token (Twilio "
            "Console → Account Info; the Test credentials are the pair below the Live one "
            "under API keys & tokens).",
        )
    if exc.status == 401 or exc.code == 20003:
        return ConnectFailed(
            SERVICE,
            "bad_credentials",
            "Twilio refused the account SID and auth token (401, code 20003): the token is "
            "mistyped, was rotated, or belongs to another account (a subaccount has its own), "
            "or the account is suspended or closed. Copy both from the Twilio Console → "
            "Account Info.",
        )
    if exc.status == 404 and "/Services/" in (exc.uri or ""):
        return ConnectFailed(
            SERVICE,
            "service_not_found",
            f"the messaging service {sender} was not found on this account (404, code "
            f"{exc.code}). Check Messaging → Services in the Console of this account (not a "
            "subaccount) and copy its SID (MG...).",
        )
    return ConnectFailed(
        SERVICE, "unexpected", f"Twilio answered {exc.status} (code {exc.code}) for {exc.uri}."
    )
