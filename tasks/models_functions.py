"""SQL helpers the models may call: macros for Cliniko's payload quirks, Python UDFs for phones
and emails. Registered on every connection that builds or previews models.

Cliniko quirks (../shared/reference/cliniko-api.md): empty values arrive as "" or null, foreign
keys as {"links": {"self": ".../patients/82"}} (the id is the last path segment), 64-bit ids as
strings. Phone numbers are read with ``phonenumbers`` in the clinic's country; emails are checked
for syntax only with ``email-validator`` (no DNS: builds must not touch the network).
"""

from __future__ import annotations

import functools

import duckdb
import phonenumbers
from duckdb.sqltypes import BOOLEAN, VARCHAR
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

_PLAIN_EMAIL = r"^[A-Za-z0-9]+([._+-][A-Za-z0-9]+)*@([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)+[A-Za-z]{2,}$"
_SPECIAL_USE = ", ".join(f"'{d}'" for d in SPECIAL_USE_DOMAIN_NAMES)

# Staging reads most fields with a typed json_transform, which already turns "" into NULL for
# timestamps, booleans and numbers; these cover text, ->> reads and links.
MACROS = (
    # "" and whitespace-only mean "no value" in Cliniko payloads.
    "CREATE OR REPLACE TEMP MACRO cliniko_text(v) AS nullif(trim(v), '')",
    "CREATE OR REPLACE TEMP MACRO cliniko_timestamp(v) AS try_cast(nullif(trim(v), '') AS TIMESTAMPTZ)",
    # The id at the end of a link URL, ignoring a query string: ".../patients/82?x=1" -> 82.
    # (String splitting: a third of the cost of a regular expression over millions of links.)
    "CREATE OR REPLACE TEMP MACRO cliniko_link_id(url) AS "
    "try_cast(split_part(split_part(url, '?', 1), '/', -1) AS BIGINT)",
    # Email syntax: addresses of the plainest form (ASCII dot-atoms, hyphens inside labels, a
    # letters-only top-level domain that is not special-use, short enough that no length limit
    # applies) are valid for email-validator too, and this regular expression proves it at a
    # fraction of a Python call's cost; everything else is asked of email-validator. A full
    # build checks 100,000 addresses, so this is most of a build's Python time saved.
    "CREATE OR REPLACE TEMP MACRO relay_email_is_valid(email) AS CASE WHEN "
    f"regexp_full_match(email, '{_PLAIN_EMAIL}') AND length(email) <= 64 "
    f"AND lower(split_part(email, '.', -1)) NOT IN ({_SPECIAL_USE}) THEN true "
    "ELSE relay_email_validator(email) END",
)

_MOBILE_TYPES = {
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
}


@functools.lru_cache(maxsize=65536)
def mobile_e164(number: str | None, country: str | None) -> str | None:
    """A mobile number as typed in Cliniko -> E.164, or None when it is not a valid mobile.

    Numbers without a country prefix are read in ``country``; Cliniko often stores Australian
    mobiles as "61444444444" (country code without "+"), so that form is tried too.
    """
    if number is None:
        return None
    for candidate in (number, "+" + number.strip()):
        try:
            parsed = phonenumbers.parse(candidate, country)
        except phonenumbers.NumberParseException:
            continue
        # number_type() is UNKNOWN for every number is_valid_number() rejects (it runs the same
        # metadata match), so asking it alone gives the same answer at two thirds of the cost.
        if phonenumbers.number_type(parsed) in _MOBILE_TYPES:
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None


# Numbers read by relay_mobile_e164 since the runner last took them: (number, country) -> E.164.
# The runner stores them in state.phone_numbers with the build (see take_parsed_mobiles).
PHONE_PARSER = phonenumbers.__version__
_parsed_mobiles: dict[tuple[str, str | None], str | None] = {}


def _relay_mobile_e164(number: str | None, country: str | None) -> str | None:
    """The SQL function: mobile_e164, remembering what it read for the phone memo."""
    result = mobile_e164(number, country)
    if number is not None and country is not None:
        _parsed_mobiles[(number, country)] = result
    return result


def take_parsed_mobiles() -> list[tuple[str, str, str | None]]:
    """The numbers read since the last call, as (number, country, mobile_e164); forgets them."""
    items = [(n, c, e) for (n, c), e in _parsed_mobiles.items()]
    _parsed_mobiles.clear()
    return items


@functools.lru_cache(maxsize=65536)
def email_is_valid(email: str) -> bool:
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Make the macros and UDFs available on ``con`` (idempotent)."""
    con.execute("SET enable_progress_bar = false")
    registered = {
        row[0]
        for row in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE function_name IN "
            "('relay_mobile_e164', 'relay_email_validator')"
        ).fetchall()
    }
    if "relay_mobile_e164" not in registered:
        con.create_function(
            "relay_mobile_e164",
            _relay_mobile_e164,
            [VARCHAR, VARCHAR],
            VARCHAR,
            null_handling="special",
        )
    if "relay_email_validator" not in registered:
        con.create_function("relay_email_validator", email_is_valid, [VARCHAR], BOOLEAN)
    for macro in MACROS:
        con.execute(macro)
