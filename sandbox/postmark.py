"""A Postmark stand-in: the parts of the server API clinic-relay uses, served at ``/`` (postmarker
joins endpoint paths to the root, so a path prefix would be dropped).

- ``POST /email`` and ``POST /email/batch`` (per-item ``ErrorCode``; HTTP 200 even when items fail)
- ``GET /messages/outbound`` with ``count``/``offset``/``recipient``/``tag``/``metadata_<key>``
  filters, and ``/messages/outbound/{id}/details``
- ``GET /bounces`` (and ``/bounces/``), ``GET /message-streams/{stream}/suppressions/dump``

Recipients trigger errors, like Twilio's magic numbers: anything in ``inactive`` gets 406 (and is
listed as a hard bounce and a suppression), anything in ``invalid`` or without an ``@`` gets 300.
``faults`` injects 5xx, 429, slowness and "timeout after receipt". ``accepted`` records every
message accepted, so tests can assert each send key arrived at most once.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.server import Faults, ThreadedServer, after, before

INACTIVE = frozenset({"inactive@postmark-sandbox.test"})
INVALID = frozenset({"invalid@postmark-sandbox.test"})


def _error(code: int, message: str, status: int = 422) -> JSONResponse:
    return JSONResponse({"ErrorCode": code, "Message": message}, status_code=status)


class PostmarkSandbox:
    def __init__(
        self,
        *,
        server_token: str = "sandbox-postmark-token",
        inactive: set[str] | frozenset[str] = INACTIVE,
        invalid: set[str] | frozenset[str] = INVALID,
    ) -> None:
        self.server_token = server_token
        self.inactive = {a.lower() for a in inactive}
        self.invalid = {a.lower() for a in invalid}
        self.faults = Faults()
        self.accepted: list[dict] = []  # every message accepted, in order
        self.rejected: list[dict] = []  # {"To", "ErrorCode", "send_key"} for each refused item
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/email", self._email, methods=["POST"]),
                Route("/email/batch", self._batch, methods=["POST"]),
                Route("/messages/outbound", self._search, methods=["GET"]),
                Route("/messages/outbound/{id}/details", self._details, methods=["GET"]),
                Route("/bounces", self._bounces, methods=["GET"]),
                Route("/bounces/", self._bounces, methods=["GET"]),
                Route(
                    "/message-streams/{stream}/suppressions/dump",
                    self._suppressions,
                    methods=["GET"],
                ),
            ]
        )

    # -- inspection for tests -------------------------------------------------------------

    def send_key_counts(self) -> Counter:
        return Counter((m.get("Metadata") or {}).get("send_key") for m in self.accepted)

    def serve(self) -> ThreadedServer:
        return ThreadedServer(self.app)

    # -- the API ----------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("X-Postmark-Server-Token") == self.server_token

    def _accept(self, item: dict) -> dict:
        """Postmark's verdict on one message: the per-item result of /email/batch."""
        to = str(item.get("To") or "").strip().lower()
        send_key = (item.get("Metadata") or {}).get("send_key")
        now = datetime.now(UTC)
        if not to or "@" not in to or to in self.invalid:
            code, message = 300, f"Invalid 'To' address: '{to}'."
        elif not (item.get("HtmlBody") or item.get("TextBody")):
            code, message = 300, "Provide either email TextBody or HtmlBody or both."
        elif any(len(str(v)) > 80 for v in (item.get("Metadata") or {}).values()):
            code, message = 300, "Metadata values are limited to 80 characters."
        elif to in self.inactive:
            code = 406
            message = (
                "You tried to send to recipient(s) that have been marked as inactive. Found "
                f"inactive addresses: {to}. Inactive recipients are ones that have generated a "
                "hard bounce, a spam complaint, or a manual suppression."
            )
        else:
            message_id = str(uuid.uuid4())
            with self._lock:
                self.accepted.append({**item, "MessageID": message_id, "ReceivedAt": now})
            return {
                "To": item.get("To"),
                "SubmittedAt": now.isoformat(),
                "MessageID": message_id,
                "ErrorCode": 0,
                "Message": "OK",
            }
        with self._lock:
            self.rejected.append({"To": to, "ErrorCode": code, "send_key": send_key})
        return {"ErrorCode": code, "Message": message}

    async def _guard(self, request: Request):
        self.requests.append((request.method, request.url.path))
        fault = self.faults.take(request.url.path)
        early = await before(fault, _error(429, "Rate limit exceeded.", 429))
        if early is None and not self._authorised(request):
            early = _error(10, "Bad or missing Server API token.", 401)
        return fault, early

    async def _email(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        result = self._accept(json.loads(await request.body()))
        await after(fault)
        if result["ErrorCode"]:
            return _error(result["ErrorCode"], result["Message"])
        return JSONResponse(result)

    async def _batch(self, request: Request):
        fault, early = await self._guard(request)
        if early is not None:
            return early
        items = json.loads(await request.body())
        if not isinstance(items, list) or len(items) > 500:
            return _error(300, "A batch is a JSON array of at most 500 messages.")
        results = [self._accept(item) for item in items]
        await after(fault)
        return JSONResponse(results)

    def _summary(self, m: dict) -> dict:
        return {
            "MessageID": m["MessageID"],
            "To": [{"Email": m["To"], "Name": None}],
            "Recipients": [m["To"]],
            "From": m.get("From"),
            "Subject": m.get("Subject"),
            "Tag": m.get("Tag"),
            "Metadata": m.get("Metadata") or {},
            "MessageStream": m.get("MessageStream") or "outbound",
            "Status": "Sent",
            "ReceivedAt": m["ReceivedAt"].isoformat(),
        }

    async def _search(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        count, offset = int(q.get("count", 100)), int(q.get("offset", 0))
        if not 1 <= count <= 500:
            return _error(300, "count must be between 1 and 500.")
        wanted_meta = {k[len("metadata_") :]: v for k, v in q.items() if k.startswith("metadata_")}
        with self._lock:
            found = [
                m
                for m in reversed(self.accepted)
                if (not q.get("recipient") or m["To"].lower() == q["recipient"].lower())
                and (not q.get("tag") or m.get("Tag") == q["tag"])
                and all((m.get("Metadata") or {}).get(k) == v for k, v in wanted_meta.items())
            ]
        page = [self._summary(m) for m in found[offset : offset + count]]
        return JSONResponse({"TotalCount": len(found), "Messages": page})

    async def _details(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        for m in self.accepted:
            if m["MessageID"] == request.path_params["id"]:
                return JSONResponse(
                    {
                        **self._summary(m),
                        "TextBody": m.get("TextBody"),
                        "HtmlBody": m.get("HtmlBody"),
                    }
                )
        return _error(701, "This message was not found.")

    async def _bounces(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        q = request.query_params
        count, offset = int(q.get("count", 100)), int(q.get("offset", 0))
        bounces = [
            {
                "ID": 1000 + i,
                "Type": "HardBounce",
                "TypeCode": 1,
                "Email": email,
                "Inactive": True,
                "CanActivate": True,
                "BouncedAt": "2026-01-01T00:00:00Z",
                "MessageStream": "outbound",
            }
            for i, email in enumerate(sorted(self.inactive))
            if not q.get("emailFilter") or q["emailFilter"].lower() in email
        ]
        return JSONResponse(
            {"TotalCount": len(bounces), "Bounces": bounces[offset : offset + count]}
        )

    async def _suppressions(self, request: Request):
        _, early = await self._guard(request)
        if early is not None:
            return early
        return JSONResponse(
            {
                "Suppressions": [
                    {
                        "EmailAddress": email,
                        "SuppressionReason": "HardBounce",
                        "Origin": "Recipient",
                        "CreatedAt": "2026-01-01T00:00:00Z",
                    }
                    for email in sorted(self.inactive)
                ]
            }
        )
