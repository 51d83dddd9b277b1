"""A Twilio Messaging stand-in: create, list and fetch Messages under ``/2010-04-01/Accounts/{sid}``.

The real client reaches it through a redirecting http client (tasks/providers/twilio.py).
Recipients trigger errors like Twilio's test-credential magic numbers: ``+15005550004`` replied
STOP (21610), ``+15005550001`` is invalid (21211), ``+15005550009`` is not a mobile (21614), and so
does anything in the sets you pass; a To that is not E.164 is 21211. ``faults`` injects 5xx, 429
(code 20429), slowness and "timeout after receipt". ``accepted`` records every message created.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.server import Faults, ThreadedServer, after, before

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "sandbox-twilio-token"
STOPPED = frozenset({"+15005550004"})
INVALID = frozenset({"+15005550001"})
LANDLINE = frozenset({"+15005550009"})
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
BASE = "/2010-04-01/Accounts/{sid}"


def _error(code: int, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
         "status": status},
        status_code=status,
    )  # fmt: skip


class TwilioSandbox:
    def __init__(
        self,
        *,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        stopped: set[str] | frozenset[str] = STOPPED,
        invalid: set[str] | frozenset[str] = INVALID,
        landline: set[str] | frozenset[str] = LANDLINE,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.stopped, self.invalid, self.landline = set(stopped), set(invalid), set(landline)
        self.faults = Faults()
        self.accepted: list[dict] = []
        self.rejected: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route(BASE + "/Messages.json", self._create, methods=["POST"]),
                Route(BASE + "/Messages.json", self._list, methods=["GET"]),
                Route(BASE + "/Messages/{msid}.json", self._fetch, methods=["GET"]),
            ]
        )

    def body_counts(self) -> Counter:
        """How many times each (To, Body) arrived: a repeated pair is a double send."""
        return Counter((m["to"], m["body"]) for m in self.accepted)

    def serve(self) -> ThreadedServer:
        return ThreadedServer(self.app)

    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (
            request.headers.get("Authorization") == f"Basic {expected}"
            and request.path_params.get("sid") == self.account_sid
        )

    async def _guard(self, request: Request):
        self.requests.append((request.method, request.url.path))
        fault = self.faults.take(request.url.path)
        early = await before(fault, _error(20429, "Too Many Requests", 429))
        if early is None and not self._authorised(request):
            early = _error(20003, "Authenticate", 401)
        return fault, early

    async def _create(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        if not (sender or service):
            return _error(21603, "A 'From' phone number is required.")
        if not body:
            return _error(21602, "Message body is required.")
        for numbers, code, what in (
            (self.stopped, 21610, "Attempt to send to unsubscribed recipient"),
            (self.landline, 21614, f"'To' number {to} is not a valid mobile number"),
            (self.invalid, 21211, f"The 'To' number {to} is not a valid phone number."),
        ):
            if to in numbers or (code == 21211 and not E164.match(to)):
                with self._lock:
                    self.rejected.append({"to": to, "code": code})
                return _error(code, what)
        now = datetime.now(UTC)
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": self.account_sid,
            "to": to,
            "from": str(sender) if sender else "+61400000000",
            "messaging_service_sid": str(service) if service else None,
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": format_datetime(now, usegmt=True),
            "date_updated": format_datetime(now, usegmt=True),
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "price": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/SM.json",
            "_created": now,
        }
        message["uri"] = message["uri"].replace("SM.json", f"{message['sid']}.json")
        with self._lock:
            self.accepted.append(message)
        await after(fault)
        return JSONResponse(_public(message), status_code=201)

    async def _list(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        size = min(int(q.get("PageSize", 50)), 1000)
        page = int(q.get("Page", 0))
        with self._lock:
            found = [
                m
                for m in reversed(self.accepted)
                if (not q.get("To") or m["to"] == q["To"])
                and (not q.get("From") or m["from"] == q["From"])
            ]
        chunk = found[page * size : (page + 1) * size]
        path = request.url.path
        more = (page + 1) * size < len(found)
        filters = "".join(f"&{k}={v}" for k, v in q.items() if k in ("To", "From"))
        return JSONResponse(
            {
                "messages": [_public(m) for m in chunk],
                "page": page,
                "page_size": size,
                "first_page_uri": f"{path}?PageSize={size}&Page=0{filters}",
                "next_page_uri": f"{path}?PageSize={size}&Page={page + 1}{filters}"
                if more
                else None,
                "previous_page_uri": None,
                "uri": f"{path}?PageSize={size}&Page={page}{filters}",
                "start": page * size,
                "end": page * size + len(chunk),
            }
        )

    async def _fetch(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        for m in self.accepted:
            if m["sid"] == request.path_params["msid"]:
                return JSONResponse(_public(m))
        return _error(20404, "The requested resource was not found", 404)


def _public(message: dict) -> dict:
    return {k: v for k, v in message.items() if not k.startswith("_")}
