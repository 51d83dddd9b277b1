"""The HTTP face of the sandbox: Cliniko's auth, paging, rate limit and faults, plus admin
endpoints under ``/_sandbox/``.

Order of checks, as a client meets them: a missing User-Agent is refused (403) before anything
else; then Basic auth (the API key as username, with or without its shard suffix, as Cliniko
allows; a key of another shard's account, or whose suffix names another shard, is as unknown as
a wrong key: 401); then the per-key fixed-window rate limit (429 with
``X-RateLimit-Reset`` = epoch seconds of the window's end, a decimal when windows are shorter than
a minute); then the key's permissions (403 denied, 404 not found); then injected faults; then the
answer. Refused requests do not count against the limit.

Choices where the real API is undocumented: ``per_page`` outside 1..100 or a ``page`` below 1 is a
400, as is a sort on a field the endpoint cannot filter on; unknown parameters are ignored, like
the real API does. Admin endpoints (``/_sandbox/stats``, ``/_sandbox/advance?seconds=N``,
``/_sandbox/faults``, ``/_sandbox/rate_limit``, ``/_sandbox/reset_stats``) answer loopback
clients only, without auth, and are not counted in the stats; settings no request could be
answered under (``controls.py`` says which) are a 400 naming the setting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import random
import time
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sandbox.cliniko.clinic import SandboxClinic, split_key
from sandbox.cliniko.controls import Faults, RateLimit, Stats
from sandbox.cliniko.spec import PARTITIONS, SPECS
from sandbox.cliniko.store import BASE_BYTES, QueryError, parse_filter, parse_sort, query

JSON = "application/json; charset=utf-8"
NO_USER_AGENT = "A User-Agent header is required: name your application and a contact email."
UNAUTHORIZED = "Unauthorized: unknown API key, or a key for another shard."
FORBIDDEN = "You do not have permission to access this resource."
NOT_FOUND = "Not found."
# The sandbox serves the API for reading; its clinic changes by its clock and in Python.
READ_ONLY = (
    "The sandbox serves Cliniko's API read-only (GET): change its clinic in Python "
    "(clinic.bulk_edit, clinic.cancel_attendance) or let its clock run (--speed, "
    "POST /_sandbox/advance)."
)
PATIENT_LISTS = ("medical_alerts", "invoices")


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type=JSON)


class Served(Protocol):
    """What the app reads and turns on the server it answers for (a ``SandboxServer``)."""

    clinic: SandboxClinic
    shard: str
    rate_limit: RateLimit | None
    faults: Faults
    fault_rng: random.Random
    stats: Stats

    def reset_stats(self) -> None: ...


class ClinikoApp:
    """ASGI app over one ``SandboxServer`` (its clinic, limits, faults and stats)."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window index, requests in it)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        if path.startswith("/_sandbox/"):
            response = await self._admin(request, path.removeprefix("/_sandbox/"))
            await response(scope, receive, send)
            return
        response, fault = self._answer(request, path)
        status = 0 if fault == "drop" else response.status_code
        self.server.stats.record(path, status)
        if fault == "slow":
            await asyncio.sleep(self.server.faults.slow_seconds)
        if fault == "drop":
            await _drop(response, receive, send, partial=self.server.fault_rng.random() < 0.5)
            return
        await response(scope, receive, send)

    # ---- the API --------------------------------------------------------------------------

    def _answer(self, request: Request, path: str) -> tuple[Response, str | None]:
        """The response to an API request, and the fault (slow, drop) still to act out."""
        if not request.headers.get("user-agent"):
            return _json(403, {"message": NO_USER_AGENT}), None
        key = _basic_username(request.headers.get("authorization", ""))
        access = None if key is None else self.server.clinic.key_access(key, self.server.shard)
        if access is None:
            challenge = {"WWW-Authenticate": 'Basic realm="Cliniko API"'}
            return _json(401, {"message": UNAUTHORIZED}, challenge), None
        limited = self._rate_limited(split_key(key)[0])  # per user: with or without the suffix
        if limited is not None:
            return limited, None
        if not path.startswith("/v1/"):
            return _json(404, {"message": NOT_FOUND}), None
        if request.method not in ("GET", "HEAD"):  # never answered as a read: nothing changes
            return _json(405, {"message": READ_ONLY}, {"Allow": "GET, HEAD"}), None
        route = path.removeprefix("/v1/").strip("/")
        resource = route.split("/", 1)[0]
        if resource in access.denied:
            return _json(403, {"message": FORBIDDEN}), None
        if resource in access.not_found:
            return _json(404, {"message": NOT_FOUND}), None
        fault = self._fault()
        rng = self.server.fault_rng
        if fault == "error":
            status = rng.choice((502, 503, 500))
            body = b"<html><body><h1>%d</h1>Upstream trouble.</body></html>" % status
            return Response(body, status, media_type="text/html"), None
        response = self._route(request, route)
        if fault == "malformed" and response.status_code == 200:
            page = response.body
            garbage = page[: len(page) // 2] if rng.random() < 0.5 else b"<html>Try again</html>"
            return Response(garbage, 200, media_type=JSON), None
        return response, fault

    def _route(self, request: Request, route: str) -> Response:
        clinic = self.server.clinic
        base = str(request.base_url).rstrip("/").encode() + b"/v1"
        if route == "user":
            with clinic.lock:
                return Response(
                    orjson.dumps(clinic.user).replace(BASE_BYTES, base), media_type=JSON
                )
        if route in PARTITIONS or route in SPECS:
            return self._list(request, route, base)
        parts = route.split("/")
        if len(parts) == 2 and parts[0] in SPECS:
            row_id = int(parts[1]) if parts[1].isdigit() else -1
            with clinic.lock:
                row = clinic.row(parts[0], row_id)
                if row is not None:
                    return Response(row.body.replace(BASE_BYTES, base), media_type=JSON)
        bookings = ("individual_appointments", "group_appointments")
        if len(parts) == 3 and parts[0] in bookings and parts[2] == "attendees":
            return self._list(
                request, route, base, booking=int(parts[1]) if parts[1].isdigit() else -1
            )
        # A patient's alerts and invoices (deprecated nested lists, still served).
        if len(parts) == 3 and parts[0] == "patients" and parts[2] in PATIENT_LISTS:
            return self._list(
                request,
                route,
                base,
                of_patient=(parts[2], int(parts[1]) if parts[1].isdigit() else -1),
            )
        if (
            len(parts) == 3
            and parts[0] == "patients"
            and parts[2] == "referral_source"
            and parts[1].isdigit()
        ):
            with clinic.lock:
                row = clinic.referral_source_of(int(parts[1]))
                if row is not None:
                    return Response(row.body.replace(BASE_BYTES, base), media_type=JSON)
        return _json(404, {"message": NOT_FOUND})

    def _list(
        self,
        request: Request,
        route: str,
        base: bytes,
        booking: int | None = None,
        of_patient: tuple[str, int] | None = None,
    ) -> Response:
        """A list page; ``booking`` lists the attendees of one appointment or class,
        ``of_patient`` (resource, patient id) one patient's medical alerts or invoices."""
        resource, field, value = PARTITIONS.get(route, (route, None, None))
        if booking is not None:
            resource = "attendees"
        if of_patient is not None:
            resource = of_patient[0]
        spec = SPECS[resource]
        params = request.query_params
        try:
            page = _int_param(params.get("page"), 1)
            per_page = _int_param(params.get("per_page"), 50)
            if page < 1 or not 1 <= per_page <= 100:
                raise QueryError(400, "page must be 1 or more and per_page between 1 and 100.")
            filters = [parse_filter(spec, q) for q in params.getlist("q[]")]
            if booking is not None:
                filters.append(parse_filter(spec, f"booking_id:={booking}"))
            if of_patient is not None:
                filters.append(parse_filter(spec, f"patient_id:={of_patient[1]}"))
            sort = parse_sort(spec, params.get("sort"))
        except QueryError as exc:
            return _json(exc.status, {"message": exc.message})
        clinic = self.server.clinic
        with clinic.lock:
            total, bodies = query(
                clinic.tables[resource],
                filters,
                sort,
                page,
                per_page,
                None if field is None else (field, value),
            )
        kept = [(k, v) for k, v in params.multi_items() if k != "page"]
        url = base.decode() + "/" + route + "?"

        def page_url(n: int) -> str:
            return url + urlencode([("page", str(n)), *kept])

        links = {"self": page_url(page)}
        if page * per_page < total:
            links["next"] = page_url(page + 1)
        if page > 1:
            links["previous"] = page_url(page - 1)
        body = b"".join(
            (
                b'{"',
                resource.encode(),
                b'":[',
                b",".join(bodies).replace(BASE_BYTES, base),
                b'],"total_entries":',
                str(total).encode(),
                b',"links":',
                orjson.dumps(links),
                b"}",
            )
        )
        return Response(body, media_type=JSON)

    def _rate_limited(self, key: str) -> Response | None:
        limit = self.server.rate_limit
        if limit is None:
            return None
        now = time.time()
        window = math.floor(now / limit.window_seconds)
        index, count = self._windows.get(key, (window, 0))
        if index != window:
            count = 0
        if count >= limit.per_window:
            reset = (window + 1) * limit.window_seconds
            shown = str(int(math.ceil(reset))) if limit.window_seconds >= 60 else f"{reset:.3f}"
            return _json(429, {"message": "Too many requests."}, {"X-RateLimit-Reset": shown})
        self._windows[key] = (window, count + 1)
        return None

    def _fault(self) -> str | None:
        faults, rng = self.server.faults, self.server.fault_rng
        if not (faults.error_rate or faults.slow_rate or faults.drop_rate or faults.malformed_rate):
            return None
        roll = rng.random()
        for kind, rate in (
            ("drop", faults.drop_rate),
            ("error", faults.error_rate),
            ("malformed", faults.malformed_rate),
            ("slow", faults.slow_rate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None

    # ---- admin ----------------------------------------------------------------------------

    async def _admin(self, request: Request, action: str) -> Response:
        if request.client is None or request.client.host not in ("127.0.0.1", "::1"):
            return _json(403, {"message": "Sandbox admin answers loopback clients only."})
        server = self.server
        if action == "stats":
            return _json(200, server.stats.as_dict())
        if action == "reset_stats":
            server.reset_stats()
            return _json(200, {"ok": True})
        if action == "advance":
            try:
                changes = server.clinic.advance(
                    timedelta(seconds=float(request.query_params.get("seconds", "60")))
                )
            except (ValueError, OverflowError) as exc:  # not a number, backwards, infinite
                return _json(400, {"message": f"Bad seconds: {exc}"})
            return _json(200, {"now": server.clinic.now.isoformat(), "changes": changes})
        if action in ("faults", "rate_limit") and request.method == "POST":
            try:
                settings = orjson.loads(await request.body() or b"null")
                if action == "faults":
                    server.faults = Faults(**(settings or {}))
                else:
                    server.rate_limit = None if settings is None else RateLimit(**settings)
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return _json(400, {"message": f"Bad {action} settings: {exc}"})
            return _json(200, {"ok": True})
        return _json(404, {"message": "Unknown sandbox admin action."})


def _int_param(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise QueryError(400, "page and per_page must be whole numbers.") from None


def _basic_username(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, _password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username or None


async def _drop(response: Response, receive, send, partial: bool) -> None:
    """Close the connection with no answer, or after part of the body (uvicorn's transport is
    reached through its receive callable; without it, fall back to a truncated answer)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if partial or transport is None:
        body = response.body
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (b"content-type", JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
    if transport is not None:
        transport.close()
        await asyncio.sleep(0)  # let uvicorn see the disconnect, so it does not answer 500
