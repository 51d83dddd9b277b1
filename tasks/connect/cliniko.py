"""Checking a Cliniko API key before it is saved: read-only GETs through the sync's own client.

1. ``GET /user``: the key works on its shard's host (``https://api.<shard>.cliniko.com/v1``, the
   shard being the key's suffix). A 401 is a wrong or revoked key, *or* the right key sent to the
   wrong shard (Cliniko answers both alike), so on a 401 the key is tried on the other shards'
   hosts (Cliniko's own, read-only): if one accepts it, the failure says which suffix to use.
2. ``GET /businesses``: at least one business; its ``time_zone_identifier`` and ``country_code``
   become the clinic's time zone and country.
3. One row (``per_page=1``) of every list the sync reads (``tasks.cliniko.resources``): a 403 or
   404 there is a missing permission of the key's user, named resource by resource.
4. Every appointment type (name, category), so the owner can choose trigger filters.

Then, before anything is saved, the clinic's database (if one exists) must be this account's
(``check_database``): a database synced from another Cliniko account would be read on from that
account's watermarks, so most of this account's rows would never be read.

Nothing read is kept beyond names, ids, time zones and countries; no patient field is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from tasks.cliniko.client import (
    BadApiKey,
    ClinikoClient,
    ClinikoError,
    ClinikoUnavailable,
    PermissionDenied,
    ResourceNotFound,
    placeholder_reason,
    shard_of,
    shard_url,
)
from tasks.cliniko.resources import RESOURCES
from tasks.connect import ConnectFailed
from tasks.warehouse import open_db

# The shards Cliniko documents: docs.api.cliniko.com lists au1-au4, ca1, uk1, uk2 and eu1 (the
# 2022 readme only au1-3, ca1, uk1, eu1); docs/reference.md.
SHARDS = ("au1", "au2", "au3", "au4", "ca1", "uk1", "uk2", "eu1")
SERVICE = "Cliniko"


@dataclass(frozen=True)
class Business:
    id: str
    name: str
    time_zone: str | None  # IANA (time_zone_identifier)
    country: str | None  # ISO 3166-1 alpha-2 (country_code)
    reply_to: str | None = None
    website: str | None = None
    address: str = ""


@dataclass(frozen=True)
class ClinikoFacts:
    shard: str
    user_id: str
    businesses: list[Business]
    appointment_types: list[tuple[str, str | None]] = field(default_factory=list)  # name, category

    @property
    def categories(self) -> list[str]:
        return sorted({c for _, c in self.appointment_types if c})


def verify_cliniko(
    api_key: str,
    contact_email: str,
    *,
    urls: Callable[[str], str] = shard_url,
    timeout: float = 15.0,
) -> ClinikoFacts:
    """Check the key and read what the first clinic.yaml needs; raise ``ConnectFailed``.

    ``urls`` maps a shard to its API base URL (the sandbox, a proxy: one URL for every shard)."""
    key = (api_key or "").strip()
    if not key:
        raise ConnectFailed(SERVICE, "bad_key", "the API key is empty. " + _WHERE_KEYS)
    check_contact_email(contact_email)
    shard = shard_of(key)
    with _client(key, contact_email, urls(shard), timeout) as client:
        try:
            user = client.get_object("/user")
        except BadApiKey:
            raise _bad_key(key, contact_email, shard, urls, timeout) from None
        except ClinikoUnavailable as exc:
            if shard in SHARDS or not key.endswith(f"-{shard}"):
                raise _unexpected(exc) from None
            raise ConnectFailed(  # a mistyped suffix: its host need not exist
                SERVICE,
                "unknown_shard",
                f"the key ends in -{shard}, which names none of Cliniko's shards "
                f"({', '.join(SHARDS)}), and {urls(shard)} did not answer. The suffix is "
                f"probably mistyped: {_WHERE_KEYS}",
            ) from None
        except ClinikoError as exc:
            raise _unexpected(exc) from None
        businesses = [_business(b) for b in _list(client, "/businesses", "businesses")]
        if not businesses:
            raise ConnectFailed(
                SERVICE,
                "no_business",
                "the key's user sees no business. Check in Cliniko (Settings → Businesses) that "
                "the user has access to at least one business.",
            )
        _check_permissions(client)
        types = [
            (str(t.get("name") or "").strip(), (t.get("category") or "").strip() or None)
            for t in _list(client, "/appointment_types", "appointment_types", pages=20)
        ]
    return ClinikoFacts(
        shard=shard,
        user_id=str(user.get("id", "")),
        businesses=businesses,
        appointment_types=sorted(t for t in types if t[0]),
    )


def check_contact_email(contact_email: str) -> None:
    """The client's one rule (``placeholder_reason``) without its sandbox exemption: connect is
    for a real clinic. Run before the blocks are built, so the refusal names connect's flag (the
    block's own names the block field and CLINIKO_CONTACT, which connect does not read)."""
    reason = placeholder_reason(contact_email)
    if reason is not None:
        raise ConnectFailed(
            SERVICE,
            "bad_contact",
            f"'{contact_email}' {reason}, so it is not a contact email Cliniko can use. Cliniko "
            "asks every integration to name a real address in its User-Agent and may block "
            "requests without one: give the address of whoever looks after this integration "
            "with --contact-email.",
        )


def check_database(database: Path, facts: ClinikoFacts, wait_seconds: float = 30) -> None:
    """Refuse a clinic database synced from another Cliniko account: none of the businesses it
    holds is one this key's user sees. The sync reads on from the database's watermarks, so it
    would read only the new account's rows changed since the old account's last sync, beside
    the old account's patients. A database never synced, or sharing a business (the same
    account: a new key, another user), is this clinic's. A run holding the database longer
    than ``wait_seconds`` is ``DatabaseBusy``."""
    if not database.exists():
        return
    try:
        with open_db(database, read_only=True, wait_seconds=wait_seconds) as con:
            held = {str(i) for (i,) in con.execute("SELECT id FROM raw.businesses").fetchall()}
    except duckdb.CatalogException:  # never synced: no raw tables yet
        return
    if not held or held & {b.id for b in facts.businesses}:
        return
    raise ConnectFailed(
        SERVICE,
        "other_account",
        f"the clinic's database {database} holds another Cliniko account's data: none of its "
        f"{len(held)} business(es) is among the {len(facts.businesses)} this key's user sees. "
        "A sync would read this account only from where that one's last sync stopped (most of "
        "its patients never) and keep the other account's patients beside them. Move that "
        "file aside (it is the other account's copy), or connect under another clinic name, "
        "then run connect again.",
    )


_WHERE_KEYS = (
    "In Cliniko: My Info (the user's own settings) → Manage API keys → Add an API key; copy the "
    "whole key, including its suffix such as -au2."
)


def _client(key: str, contact: str, base_url: str, timeout: float) -> ClinikoClient:
    return ClinikoClient(key, contact, base_url, pace=None, timeout=timeout)


def _bad_key(
    key: str, contact: str, shard: str, urls: Callable[[str], str], timeout: float
) -> ConnectFailed:
    """A 401: find out whether another shard knows the key (wrong shard) or none does (bad key)."""
    body = key.rsplit("-", 1)[0] if key.endswith(f"-{shard}") else key
    asked = urls(shard)
    for other in SHARDS:
        if other == shard or urls(other) == asked:
            continue
        try:
            with _client(f"{body}-{other}", contact, urls(other), timeout) as probe:
                probe.get_object("/user")
        except (ClinikoError, ValueError):
            continue
        return ConnectFailed(
            SERVICE,
            "wrong_shard",
            f"the key was refused on shard {shard} ({asked}) but works on shard {other}: the "
            f"account lives on {other}. Use the key with its suffix -{other} exactly as Cliniko "
            "shows it (a key without a suffix is sent to au1).",
        )
    suffix = "" if key.endswith(f"-{shard}") else " The key has no shard suffix, so au1 was asked."
    return ConnectFailed(
        SERVICE,
        "bad_key",
        f"Cliniko refused the API key (401) at {asked}.{suffix} The key is mistyped, revoked, or "
        f"its user was deactivated. {_WHERE_KEYS}",
    )


def _list(client: ClinikoClient, path: str, key: str, pages: int = 1) -> list[dict]:
    out: list[dict] = []
    params: list[tuple[str, str]] = [("per_page", "100")]
    for page in range(1, pages + 1):
        try:
            body = client.get_object(path, [*params, ("page", str(page))])
        except ClinikoError as exc:
            raise _refused(exc, path) from None
        rows = body.get(key)
        if not isinstance(rows, list):
            raise ConnectFailed(
                SERVICE,
                "unexpected",
                f"{path} answered without a '{key}' list: check the base URL.",
            )
        out += [r for r in rows if isinstance(r, dict)]
        if not (body.get("links") or {}).get("next"):
            break
    return out


def _check_permissions(client: ClinikoClient) -> None:
    missing: list[str] = []
    for resource in RESOURCES:
        for path in resource.paths:
            try:
                client.get_object(path, [("per_page", "1")])
            except (PermissionDenied, ResourceNotFound):
                missing.append(path.strip("/"))
            except ClinikoError as exc:
                raise _unexpected(exc) from None
    if missing:
        raise ConnectFailed(
            SERVICE,
            "missing_permission",
            f"the key's user may not read {', '.join(missing)} (Cliniko answered 403/404). "
            "Give that user a role that can see every patient and appointment (an "
            "administrator, or a dedicated user with the Reception role and all businesses), then "
            "run connect again.",
        )


def _refused(exc: ClinikoError, path: str) -> ConnectFailed:
    if isinstance(exc, (PermissionDenied, ResourceNotFound)):
        return ConnectFailed(
            SERVICE,
            "missing_permission",
            f"the key's user may not read {path.strip('/')} (Cliniko answered 403/404). Give "
            "that user a role that can (an administrator or reception role) and run connect again.",
        )
    return _unexpected(exc)


def _unexpected(exc: ClinikoError) -> ConnectFailed:
    problem = "unreachable" if isinstance(exc, ClinikoUnavailable) else "unexpected"
    return ConnectFailed(SERVICE, problem, str(exc))


def _business(row: dict) -> Business:
    place = ", ".join(
        str(p).strip() for p in (row.get("address_1"), row.get("city"), row.get("state"),
                                 row.get("post_code")) if p and str(p).strip()
    )  # fmt: skip
    return Business(
        id=str(row.get("id", "")),
        name=str(row.get("business_name") or row.get("label") or "").strip(),
        time_zone=row.get("time_zone_identifier") or None,
        country=(row.get("country_code") or None),
        reply_to=row.get("email_reply_to") or None,
        website=row.get("website_address") or None,
        address=place,
    )
