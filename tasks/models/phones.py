"""Reading a phone number as typed in Cliniko: the SMS number (E.164) when it is a valid mobile.
The one home of that rule: ``tasks.models.functions`` calls it from SQL (relay_mobile_e164) and
remembers its answers (state.phone_numbers, keyed by PHONE_PARSER); run as a program, it is the
helper process a build hands many new numbers to (functions.PhonePrefill). It imports
phonenumbers only, so a helper starts in a fraction of the time the whole SQL-functions module
(DuckDB, email-validator) took: a first build starts one per core.
"""

from __future__ import annotations

import functools
import json
import re
import sys

import phonenumbers

# Keep phonenumbers' compiled metadata patterns (its documented switch) instead of asking re's
# bounded cache for each of the ~20 patterns a number is matched against: the same answers,
# about a tenth less CPU for every number a build reads (100,000 on a first build).
phonenumbers.enable_pattern_cache()

_MOBILE_TYPES = {
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
}


# What splits a phone entry's text into the numbers typed in it: letters (a note, "(mum)",
# "Dad: ..."; phonenumbers reads letters as a vanity number's digits, so "0412 345 678 (mum)"
# was a number too long to be valid) and the separators people type between two numbers.
_NOT_NUMBER = re.compile(r"[A-Za-z/,;&]+")


@functools.lru_cache(maxsize=65536)
def mobile_e164(number: str | None, country: str | None) -> str | None:
    """A mobile number as typed in Cliniko -> E.164, or None when it is not a valid mobile.

    Numbers without a country prefix are read in ``country``; Cliniko often stores Australian
    mobiles as "61444444444" (country code without "+"), so that form is tried too, and
    "0061 444 444 444" (the "00" most countries dial abroad with; Australia's is 0011) as
    "+61...". An entry phonenumbers cannot read whole is read again in the parts a note or a
    separator leaves ("0412 345 678 (mum)", "Mum 0412 345 678, Dad 0413 222 333"): the first
    part that is a valid mobile.
    """
    if number is None:
        return None
    found = _mobile(number, country)
    if found is None:
        parts = [p for p in _NOT_NUMBER.split(number) if sum(c.isdigit() for c in p) >= 6]
        if parts != [number]:
            found = next(filter(None, (_mobile(p, country) for p in parts)), None)
    return found


def _mobile(text: str, country: str | None) -> str | None:
    stripped = text.strip(" \t()-.:")
    candidates = [text, "+" + stripped]
    if stripped.startswith("00"):
        candidates.append("+" + stripped[2:])
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, country)
        except phonenumbers.NumberParseException:
            continue
        # number_type() is UNKNOWN for every number is_valid_number() rejects (it runs the same
        # metadata match), so asking it alone gives the same answer at two thirds of the cost.
        if phonenumbers.number_type(parsed) in _MOBILE_TYPES:
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None


# phonenumbers' answers are remembered (state.phone_numbers) for this version of it and of the
# rule above only: a changed rule reads every number again (its suffix, changed with the rule).
PHONE_PARSER = f"{phonenumbers.__version__}+parts"


if __name__ == "__main__":  # the helper: {"country", "numbers"} in, their mobile_e164 out
    request = json.load(sys.stdin)
    json.dump([mobile_e164(n, request["country"]) for n in request["numbers"]], sys.stdout)
