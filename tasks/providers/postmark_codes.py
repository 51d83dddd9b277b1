"""Postmark's answers that are about our settings, never the message: the whole request's error
or, on the batch endpoint (HTTP 200, one result per message), an item's ``ErrorCode``.

Every message of the run would get the same answer (the From and the streams come from the
PostmarkServer block), so none of them is failed: the run stops and the messages are planned
again (``ProviderUnavailable``), or, when other items of the batch were accepted, the refused
ones are tried again later and the run says sending stopped all the same (``Outcome.stop``). A From that is not a confirmed sender signature comes back per item
on the batch endpoint (ErrorCode 400, "not a Sender Signature on your account": postmark.js issue
#47), or as 300 "Invalid 'From' address" (Postmark's support article on 422 errors).
"""

from __future__ import annotations

from tasks.providers.common import Outcome, Suppress

SETTINGS_CODES = {10: "the server token was rejected", 11: "the server token lacks rights",
                  400: "the From address is not a confirmed sender signature",
                  401: "the From address's sender signature is not confirmed",
                  405: "the account is not allowed to send (out of credits?)",
                  412: "the account is pending approval (only own-domain mail allowed)",
                  413: "the account may not send (suspended?)",
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


def item_outcome(item: dict, inactive: Suppress | None = None) -> Outcome:
    """One item of a batch reply. ``inactive``: for a 406, what the stream's suppression dump
    says of the address (``_inactive_reason``)."""
    code = int(item.get("ErrorCode", -1))
    if code == 0:
        return Outcome("sent", provider_message_id=item["MessageID"])
    refused = settings_refusal(code, str(item.get("Message", "")))
    if refused:  # other items went; this one is tried again (no one fixes it by failing it),
        why = stopped(code, refused)  # and the run says sending stopped (dispatch: ``stop``)
        return Outcome("retry", error_code=str(code), reason="postmark: " + why, stop=why)
    if code == 406:
        # Postmark holds a suppression of the address on this message's stream. The 406 does not
        # say why (hard bounce, complaint, unsubscribe or manual): the stream's dump does.
        assert inactive is not None, "a 406 is classified with what its stream's dump says"
        return Outcome(
            "failed",
            error_code="406",
            reason=f"postmark: inactive recipient ({inactive.reason})",
            suppress=inactive,
        )
    if code == 300:
        about_recipient = "'To'" in str(item.get("Message", ""))
        return Outcome(
            "failed",
            error_code="300",
            reason="postmark: invalid " + ("recipient address" if about_recipient else "request"),
            suppress=Suppress("all", "invalid_address") if about_recipient else None,
        )
    if code == 429:
        return Outcome("retry", error_code="429", reason="postmark: rate limited")
    return Outcome("failed", error_code=str(code), reason=f"postmark: error {code}")


def server_error(status: int) -> Outcome:
    """A 5xx to a send: 503 (a planned outage, nothing processed) is retried; any other (500:
    "in most cases the message is lost", not always) is left for reconciliation by send key."""
    if status == 503:
        return Outcome("retry", error_code="503", reason="postmark: busy")
    why = f"postmark: server error {status}, it may have gone (Postmark's activity says)"
    return Outcome("doubt", error_code=str(status), reason=why)
