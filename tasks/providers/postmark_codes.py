"""Postmark's answers that are about our settings, never the message: the whole request's error
or, on the batch endpoint (HTTP 200, one result per message), an item's ``ErrorCode``.

Every message of the run would get the same answer (the From and the streams come from the
PostmarkServer block), so none of them is failed: the run stops and the messages are planned
again (``ProviderUnavailable``), or, when other items of the batch were accepted, the refused
ones are tried again later. A From that is not a confirmed sender signature comes back per item
on the batch endpoint (ErrorCode 400, "not a Sender Signature on your account": postmark.js issue
#47), or as 300 "Invalid 'From' address" (Postmark's support article on 422 errors).
"""

from __future__ import annotations

SETTINGS_CODES = {10: "the server token was rejected", 11: "the server token lacks rights",
                  400: "the From address is not a confirmed sender signature",
                  401: "the From address's sender signature is not confirmed",
                  412: "the account is pending approval (only own-domain mail allowed)",
                  1235: "the message stream does not exist"}  # fmt: skip
INVALID_FROM = "the From address is not a valid address or not a confirmed sender signature"


def settings_refusal(code: int, message: str) -> str | None:
    """What is wrong with our settings when Postmark answers ``code`` with ``message``, or None
    when the answer is about the message itself (its recipient, its content)."""
    if code == 300 and "'From'" in message:
        return INVALID_FROM
    return SETTINGS_CODES.get(code)


def stopped(code: int, what: str) -> str:
    """The run's problem, for the operator (no recipient: the block's settings only)."""
    return f"Postmark refused the batch ({code}): {what}. Check the PostmarkServer block."
