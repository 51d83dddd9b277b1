"""The Twilio sandbox's read-only account settings (``AccountSettings``, mixed into
``sandbox.twilio.TwilioSandbox``): what `relay connect` checks before it saves credentials, served
as Twilio serves them, and Twilio's JSON error body (``error``)."""

from __future__ import annotations

import base64
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from sandbox.server import guard


def error(code: int, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
         "status": status},
        status_code=status,
    )  # fmt: skip


class AccountSettings:
    """The account (``account_status``, ``account_type``), its numbers (``numbers``) and its
    messaging services (``services``, ``service_senders``), set by tests on the sandbox.
    ``test_credentials``: the account's Test credentials (SID, token), which Twilio lets create
    Messages, Calls and IncomingPhoneNumbers only: every read served here answers them 403,
    code 20008 (https://www.twilio.com/docs/iam/test-credentials)."""

    account_sid: str
    auth_token: str
    account_status: str
    account_type: str
    numbers: dict[str, bool]
    services: dict[str, str]
    service_senders: dict[str, list[str]]
    test_credentials: tuple[str, str] | None = None

    def _test_refusal(self, request: Request) -> JSONResponse | None:
        if self.test_credentials is None:
            return None
        sid, token = self.test_credentials
        expected = base64.b64encode(f"{sid}:{token}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return None
        return error(20008, "Resource not accessible with Test Account Credentials", 403)

    # -- Read-only account settings (what `relay connect` checks before saving credentials) -----
    # https://www.twilio.com/docs/iam/api/account (fetch), .../phone-numbers/api/incomingphonenumber-
    # resource (read, PhoneNumber filter) and .../messaging/api/service-resource (fetch, on
    # messaging.twilio.com/v1; the redirecting client sends it here). Credentials as for Messages:
    # 401/20003; an unknown service is 404/20404.

    async def _account(self, request: Request):
        if (refused := self._test_refusal(request)) is not None:
            return refused
        _, early = await self._guard(request)
        if early is not None:
            return early
        sid, stamp = self.account_sid, "Mon, 01 Jan 2024 00:00:00 +0000"
        base = f"/2010-04-01/Accounts/{sid}"
        return JSONResponse(
            {"sid": sid, "owner_account_sid": sid, "friendly_name": "Sandbox clinic",
             "status": self.account_status, "type": self.account_type,
             "auth_token": self.auth_token, "date_created": stamp, "date_updated": stamp,
             "uri": f"{base}.json",
             "subresource_uris": {"messages": f"{base}/Messages.json",
                                  "incoming_phone_numbers": f"{base}/IncomingPhoneNumbers.json"}}
        )  # fmt: skip

    async def _numbers(self, request: Request):
        if (refused := self._test_refusal(request)) is not None:
            return refused
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        size = min(int(q.get("PageSize", 50)), 1000)
        wanted = (q.get("PhoneNumber") or "").replace("*", "")  # partial match, '*' any digit
        found = [n for n in sorted(self.numbers) if wanted in n]
        path = request.url.path
        base = f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers"
        return JSONResponse(
            {"incoming_phone_numbers": [
                {"sid": "PN" + uuid.uuid5(uuid.NAMESPACE_URL, n).hex, "account_sid": self.account_sid,
                 "phone_number": n, "friendly_name": n, "status": "in-use",
                 "capabilities": {"voice": True, "sms": self.numbers[n], "mms": False, "fax": False},
                 "uri": f"{base}/PN{uuid.uuid5(uuid.NAMESPACE_URL, n).hex}.json"}
                for n in found[:size]],
             "page": 0, "page_size": size, "start": 0, "end": max(len(found[:size]) - 1, 0),
             "first_page_uri": f"{path}?PageSize={size}&Page=0", "next_page_uri": None,
             "previous_page_uri": None, "uri": f"{path}?PageSize={size}&Page=0"}
        )  # fmt: skip

    async def _messaging_guard(self, request: Request):
        """messaging.twilio.com's paths carry no account SID: the credentials alone decide."""
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        authorised = request.headers.get("Authorization") == f"Basic {expected}"
        return await guard(
            request, self.requests, self.faults, authorised=authorised,
            rate_limited=error(20429, "Too Many Requests", 429), unauthorised=error(20003, "Authenticate", 401),
        )  # fmt: skip

    async def _service(self, request: Request):
        if (refused := self._test_refusal(request)) is not None:
            return refused
        _, early = await self._messaging_guard(request)
        if early is not None:
            return early
        sid = request.path_params["service"]
        if sid not in self.services:
            return error(20404, f"The requested resource /Services/{sid} was not found", 404)
        return JSONResponse(
            {"sid": sid, "account_sid": self.account_sid, "friendly_name": self.services[sid],
             "date_created": "2024-01-01T00:00:00Z", "date_updated": "2024-01-01T00:00:00Z",
             "inbound_request_url": None, "use_inbound_webhook_on_number": True,
             "sticky_sender": True, "mms_converter": True, "smart_encoding": True,
             "area_code_geomatch": True, "validity_period": 14400, "usecase": "notifications",
             "url": f"https://messaging.twilio.com/v1/Services/{sid}",
             "links": {"phone_numbers": f"https://messaging.twilio.com/v1/Services/{sid}/PhoneNumbers",
                       "alpha_senders": f"https://messaging.twilio.com/v1/Services/{sid}/AlphaSenders"}}
        )  # fmt: skip

    async def _service_senders(self, request: Request):
        """A service's Sender Pool, one kind a list (``PhoneNumbers``, ``ShortCodes``,
        ``AlphaSenders``), paged as messaging.twilio.com's v1 lists are (``meta.key``)."""
        if (refused := self._test_refusal(request)) is not None:
            return refused
        _, early = await self._messaging_guard(request)
        if early is not None:
            return early
        sid, kind = request.path_params["service"], request.path_params["kind"]
        keys = {"PhoneNumbers": "phone_numbers", "ShortCodes": "short_codes",
                "AlphaSenders": "alpha_senders"}  # fmt: skip
        if sid not in self.services or kind not in keys:
            return error(20404, f"The requested resource /Services/{sid}/{kind} was not found", 404)
        pool = self.service_senders.get(sid, [])
        senders = {
            "PhoneNumbers": [s for s in pool if s.startswith("+")],
            "ShortCodes": [s for s in pool if s.isdigit()],
            "AlphaSenders": [s for s in pool if not s.startswith("+") and not s.isdigit()],
        }[kind]
        size = min(int(request.query_params.get("PageSize", 50)), 1000)
        url = f"https://messaging.twilio.com/v1/Services/{sid}/{kind}"
        prefix, field = {"PhoneNumbers": ("PN", "phone_number"), "ShortCodes": ("SC", "short_code"),
                         "AlphaSenders": ("AI", "alpha_sender")}[kind]  # fmt: skip
        records = [
            {"sid": prefix + uuid.uuid5(uuid.NAMESPACE_URL, s).hex, "account_sid": self.account_sid,
             "service_sid": sid, field: s, "capabilities": ["SMS"],
             "date_created": "2024-01-01T00:00:00Z", "date_updated": "2024-01-01T00:00:00Z",
             "url": f"{url}/{prefix}{uuid.uuid5(uuid.NAMESPACE_URL, s).hex}"}
            for s in senders[:size]
        ]  # fmt: skip
        return JSONResponse(
            {keys[kind]: records,
             "meta": {"page": 0, "page_size": size, "first_page_url": f"{url}?PageSize={size}&Page=0",
                      "previous_page_url": None, "url": f"{url}?PageSize={size}&Page=0",
                      "next_page_url": None, "key": keys[kind]}}
        )  # fmt: skip
