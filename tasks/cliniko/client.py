"""The Cliniko API client: one page at a time, paced under the rate limit, retried when that helps.

API reference: https://docs.api.cliniko.com (facts we rely on: docs/reference.md). What is odd:
- The key names its shard (``...-au2``); the host is ``api.<shard>.cliniko.com``. A key sent to the
  wrong shard gets 401, exactly like a wrong key, so the error says which shard the key names.
- 200 requests/min per *user*, fixed window; over it, 429 with ``X-RateLimit-Reset`` (epoch seconds).
- ``links.next`` is an absolute URL; we follow it only on the API host (the key goes with it).
- Low roles get 403, or 404 on settings objects such as appointment types.

The client knows nothing about our tables: ``tasks.cliniko.sync`` decides what to ask for and where it
goes. Errors carry the resource path and host, never the key or anything from a record.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import orjson
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from tasks.cliniko.errors import (
    BadApiKey,
    BadBaseUrl,
    BadContact,
    ClinikoError,
    ClinikoUnavailable,
    GarbagePage,
    PermissionDenied,
    ResourceNotFound,
)
from tasks.cliniko.pacing import Pace, RateLimiter, limiter_for

# Homes elsewhere: the pacing (tasks.cliniko.pacing) and the errors (tasks.cliniko.errors).
__all__ = ["Pace", "RateLimiter", "limiter_for"]

DEFAULT_SHARD = "au1"
SHARD_PATTERN = re.compile(r"-([a-z]{2}\d{1,2})$")
PER_PAGE = 100  # Cliniko's maximum
UNPACED_CONCURRENCY = 4  # requests at once without a limiter (benchmarks' --no-rate-limit only)


class _Transient(Exception):
    """A failure worth another try (5xx, unreadable body). Internal: converted before it leaves."""

    def __init__(self, what: str, garbage: bool = False) -> None:
        super().__init__(what)
        self.garbage = garbage


# --- Shard and base URL -------------------------------------------------------------------------


def shard_of(api_key: str) -> str:
    """The shard a key names by its suffix (``...-uk2`` -> ``uk2``); Cliniko's default otherwise."""
    match = SHARD_PATTERN.search(api_key.strip())
    return match.group(1) if match else DEFAULT_SHARD


def shard_url(shard: str) -> str:
    """The API root of a shard (``au1`` -> ``https://api.au1.cliniko.com/v1``)."""
    return f"https://api.{shard}.cliniko.com/v1"


def api_base_url(api_key: str) -> str:
    return shard_url(shard_of(api_key))


def check_base_url(base_url: str) -> str:
    """A base URL set by hand (the sandbox, a proxy), refused when no request can go there: no
    http(s) scheme (``127.0.0.1:8765/v1``, ``htp://...``), no host, or a port out of range.
    Checked before the contact, whose sandbox exemption reads the host from it."""
    parts = urlsplit(base_url.strip())
    try:
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number from 0 to 65535
        usable = False
    if not usable:
        raise BadBaseUrl(
            f"The Cliniko base_url {base_url!r} is not a URL (write it whole, with http:// or "
            "https://, e.g. 'http://127.0.0.1:8765/v1' for the sandbox); nothing was sent. Fix "
            "base_url in the ClinikoAccount block, or the CLINIKO_BASE_URL variable."
        )
    return base_url


# --- The User-Agent contact ---------------------------------------------------------------------

# Domains that never reach a person: reserved for documentation and tests (RFC 2606, RFC 6761:
# example.com/.net/.org and the .example, .test, .invalid and .localhost names), local-only
# names (.local, .localdomain, .internal, .lan, .home.arpa), any name without a dot (no public
# mail host) and an IP address (ops@127.0.0.1 is ops@localhost by another name).
PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org")
PLACEHOLDER_SUFFIXES = (".example", ".test", ".invalid", ".localhost", ".local", ".localdomain",
                        ".internal", ".lan", ".home.arpa")  # fmt: skip
_EMAIL = re.compile(r"^[^@\s()<>]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)$")


def is_loopback(base_url: str | None) -> bool:
    """On this machine (the sandbox) by address or ``localhost``, not a '127.' prefix: any host."""
    host = (urlsplit(base_url or "").hostname or "").lower()
    with contextlib.suppress(ValueError):
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    return False


def placeholder_reason(contact: str) -> str | None:
    """Why ``contact`` cannot be the User-Agent's contact, or None when it can."""
    odd = "".join(sorted({c for c in (contact or "") if not c.isascii()}))
    if odd:  # httpx sends header values as ASCII: every request would die of UnicodeEncodeError
        return (
            f"has '{odd}', which the User-Agent header cannot carry (HTTP headers are plain "
            "ASCII): give an address in ASCII letters (a domain in its xn-- form)"
        )
    match = _EMAIL.match((contact or "").strip())
    if not match:
        return "is not an email address"
    domain = match.group(1).lower().rstrip(".")
    if "." not in domain:
        return f"ends in '@{domain}', which is no public mail domain"
    if all(label.isdigit() for label in domain.split(".")):
        return f"ends in '@{domain}', an IP address, not a public mail domain"
    if domain in PLACEHOLDER_DOMAINS or domain.endswith(
        tuple("." + d for d in PLACEHOLDER_DOMAINS) + PLACEHOLDER_SUFFIXES
    ):
        return f"uses '{domain}', a name reserved for examples and tests that never receives mail"
    return None


def check_contact(contact: str, base_url: str | None = None) -> str:
    """The contact for Cliniko's User-Agent, refused when it is a placeholder (the one rule).

    Cliniko asks every integration to send ``User-Agent: APP (EMAIL)`` and warns that requests
    without a name and a valid email "may be automatically blocked": the address is how Cliniko
    reaches the clinic's operator about its integration (a misbehaving sync, a change of API)
    before blocking the key. A placeholder passes every check of ours and then reaches nobody, so
    it is refused here, before any request, as is one no header can carry (not ASCII). A loopback
    base URL (the sandbox) is exempt from the placeholder rule: nobody there reads it, which is
    why the demo runs with ``demo@localhost``.
    """
    if base_url:
        check_base_url(base_url)
    reason = placeholder_reason(contact)
    if is_loopback(base_url) and (reason is None or (contact or "").isascii()):
        return contact or "sandbox@localhost"
    if reason is not None:
        shown = (contact or "").strip()
        what = f"The Cliniko contact '{shown}'" if shown else "The Cliniko contact is empty: it"
        raise BadContact(
            f"{what} {reason}. Cliniko asks every integration to name a contact email in its "
            "User-Agent and may block the requests of one without a valid address: it is how "
            "Cliniko reaches whoever runs this sync before blocking its key. Set contact_email in "
            "the ClinikoAccount block (or CLINIKO_CONTACT) to an address someone at the clinic "
            "reads, e.g. it@yourclinic.com.au."
        )
    return contact.strip()


# --- Pages --------------------------------------------------------------------------------------


@dataclass
class Page:
    records: list  # exactly the items Cliniko sent (normally dicts)
    total_entries: int | None
    next_url: str | None


@dataclass
class Retry:
    """How hard to try before giving up on one page."""

    attempts: int = 8
    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    max_rate_limited: int = 100  # 429 answers in a row for one request before giving up


@dataclass
class Stats:
    requests: int = 0
    rate_limited: int = 0
    retried: int = 0
    paced_seconds: float = 0.0  # waited for the limiter
    by_status: dict[int, int] = field(default_factory=dict)


class ClinikoClient:
    """GET list pages from one Cliniko account.

    ``get_page(path, params)`` asks for the first page of a list; ``get_page(page.next_url)``
    follows Cliniko's own next link (checked to be on the API host). ``key`` is the list's key in
    the response (``practitioners`` for ``/practitioners/inactive``).
    """

    def __init__(
        self,
        api_key: str,
        contact: str,
        base_url: str | None = None,
        pace: Pace | None = Pace(),
        retry: Retry | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not api_key or not api_key.strip():
            raise BadApiKey(
                "The Cliniko API key is empty. Set it in the ClinikoAccount block (or "
                "CLINIKO_API_KEY)."
            )
        contact = check_contact(contact, base_url)
        self.shard = shard_of(api_key)
        self.base_url = (base_url.strip() if base_url else api_base_url(api_key)).rstrip("/")
        self._host_from_key = not base_url  # the shard suffix chose the host: see _unreachable
        base = urlsplit(self.base_url)
        self._origin = (base.scheme, base.netloc)
        self.host = base.netloc
        self.limiter = limiter_for(api_key, pace) if pace else None
        # Kept apart from ``limiter``, which the fast lane swaps for its budget (tasks/lane.py).
        self._permits = self.limiter.permits if self.limiter else None
        self.concurrency = self.limiter.in_flight if self.limiter else UNPACED_CONCURRENCY
        self.retry = retry or Retry()
        self.stats = Stats()
        self._stats_lock = threading.Lock()
        self._mine = threading.local()  # this thread's requests and 429s: see ``thread_counts``
        self._http = httpx.Client(
            auth=(api_key.strip(), ""),
            headers={
                "Accept": "application/json",
                "User-Agent": f"clinic-relay ({contact})",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            verify=_tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
        )

    def __enter__(self) -> ClinikoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def get_page(
        self,
        path_or_url: str,
        key: str,
        params: Iterable[tuple[str, str]] = (),
    ) -> Page:
        """One list page; ``per_page`` is added to a path's first request (next links carry it)."""
        if path_or_url.startswith("/"):
            url = self.url(path_or_url)
            query = [("per_page", str(PER_PAGE)), *params]
        else:
            self._check_on_api_host(path_or_url)
            url, query = path_or_url, list(params)
        path = urlsplit(url).path
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential_jitter(
                initial=self.retry.initial_seconds, max=self.retry.max_seconds
            ),
            retry=retry_if_exception_type((_Transient, httpx.TransportError)),
            before_sleep=self._count_retry,
        )
        try:
            return retrying(self._get_once, url, query, key, path)
        except RetryError as exc:
            raise self._gave_up(exc.last_attempt.exception(), path) from None

    def get_object(self, path: str, params: Iterable[tuple[str, str]] = ()) -> dict:
        """One GET answered with a JSON object (``/user``, or a list page as sent), tried once:
        for interactive checks such as ``relay connect``. Refusals are worded as for pages."""
        try:
            response = self._paced_get(self.url(path), list(params))
        except httpx.DecodingError:
            raise GarbagePage(
                f"Cliniko answered {path} at {self.host} with a body that could not be decoded."
            ) from None
        except httpx.TransportError as exc:
            raise ClinikoUnavailable(
                f"Cliniko did not answer {path} at {self.host} ({type(exc).__name__}). "
                + self._no_answer_hint(exc)
            ) from None
        status = response.status_code
        if status == 200:
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                return body
            raise GarbagePage(f"Cliniko answered {path} at {self.host} with something not JSON.")
        if status == 429 or status >= 500:
            raise ClinikoUnavailable(
                f"Cliniko answered {status} for {path} at {self.host}: busy or unavailable; "
                "try again in a minute."
            )
        raise self._refusal(response, path)

    def _count_retry(self, _state: object) -> None:
        with self._stats_lock:
            self.stats.retried += 1

    def _paced_get(self, url: str, query: list[tuple[str, str]]) -> httpx.Response:
        """One GET in its paced slot, holding one of the key's in-flight permits until the
        answer (or the failure) is back. Thread-safe: ``Sync.open`` asks for pages at once."""
        permit = self._permits if self._permits is not None else contextlib.nullcontext()
        with permit:
            waited = self.limiter.acquire() if self.limiter else 0.0
            try:
                # httpx types params as list[tuple[str, PrimitiveData]]: list is invariant, so
                # its hint refuses the list of (str, str) it documents and accepts.
                response = self._http.get(url, params=query or None)  # type: ignore[arg-type]
            finally:
                with self._stats_lock:
                    self.stats.paced_seconds += waited
        with self._stats_lock:
            self.stats.requests += 1
            status = response.status_code
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if status == 429:
                self.stats.rate_limited += 1
        requests, limited = self.thread_counts()
        self._mine.counts = (requests + 1, limited + (status == 429))
        return response

    def thread_counts(self) -> tuple[int, int]:
        """(requests, 429 answers) this thread has made with this client: a caller counting the
        requests of one page while other threads ask for theirs (``Sync.open``) reads these."""
        return getattr(self._mine, "counts", (0, 0))

    def _get_once(self, url: str, query: list[tuple[str, str]], key: str, path: str) -> Page:
        for _ in range(self.retry.max_rate_limited):
            try:
                response = self._paced_get(url, query)
            except httpx.DecodingError:  # a 200 whose compressed body is corrupt: garbage
                raise _Transient("a body that could not be decoded", garbage=True) from None
            if response.status_code != 429:
                return self._read(response, key, path)
            self._wait_for_reset(response)
        raise ClinikoUnavailable(
            f"Cliniko kept answering 429 (rate limited) for {path} on {self.host} "
            f"{self.retry.max_rate_limited} times in a row. Another integration may be using this "
            "user's allowance; lower requests_per_minute in the ClinikoAccount block or wait."
        )

    def _wait_for_reset(self, response: httpx.Response) -> None:
        try:
            delay = float(response.headers["X-RateLimit-Reset"]) - _cliniko_now(response)
        except (KeyError, ValueError):
            delay = self.limiter.pace.per_seconds if self.limiter else 1.0
        # A skewed clock must neither spin nor stall the run: one window at most.
        ceiling = self.limiter.pace.per_seconds if self.limiter else 60.0
        delay = min(max(delay, 0.0), ceiling)
        if self.limiter:
            self.limiter.hold_until(time.monotonic() + delay)
        else:
            time.sleep(delay)

    def _read(self, response: httpx.Response, key: str, path: str) -> Page:
        status = response.status_code
        if status == 200:
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise _Transient("not JSON", garbage=True) from None
            if not isinstance(body, dict) or not isinstance(body.get(key), list):
                raise _Transient(f"no '{key}' list", garbage=True)
            links = body["links"] if isinstance(body.get("links"), dict) else {}
            total = body.get("total_entries")
            return Page(
                records=body[key],
                total_entries=total if isinstance(total, int) else None,
                next_url=links.get("next") or None,
            )
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        raise self._refusal(response, path)

    def _refusal(self, response: httpx.Response, path: str) -> ClinikoError:
        status = response.status_code
        said = _server_message(response)
        if status == 401:
            return BadApiKey(
                f"Cliniko rejected the API key (401) at {self.host}. The key names shard "
                f"'{self.shard}' (by its suffix; no suffix means au1) and this run asked "
                f"{self.base_url}. Check the key in the ClinikoAccount block (or CLINIKO_API_KEY): "
                "it may be mistyped or revoked, or its shard suffix may not match the account's "
                "region."
            )
        if status == 403:
            return PermissionDenied(
                f"Cliniko refused {path} (403) at {self.host}{said}. The key's user lacks "
                f"permission to read {path.strip('/')}: give that user a role that can (an "
                "administrator or reception role), or use a key of a user who has it."
            )
        if status == 404:
            return ResourceNotFound(
                f"Cliniko answered 404 for {path} at {self.host}{said}. Low roles get 404 on "
                "settings objects such as appointment types: give the key's user a role that can "
                f"read {path.strip('/')}, and check the base URL ({self.base_url})."
            )
        return ClinikoError(
            f"Cliniko answered {status} for {path} at {self.host}{said}; this is not a "
            "temporary error, so the run stops. Check the request against the API reference."
        )

    def _gave_up(self, last: BaseException | None, path: str) -> ClinikoError:
        tries = self.retry.attempts
        if isinstance(last, _Transient) and last.garbage:
            return GarbagePage(
                f"Cliniko sent an unreadable page for {path} ({last}) {tries} times in a row. "
                "Nothing from that page was written and the sync position did not move; the next "
                "run retries it. If it persists, check the base URL and Cliniko's status page."
            )
        what = str(last) if isinstance(last, _Transient) else type(last).__name__
        hint = f" {self._no_answer_hint(last)}" if isinstance(last, httpx.ConnectError) else ""
        return ClinikoUnavailable(
            f"Cliniko did not answer {path} at {self.host} after {tries} tries (last: {what}). "
            "Nothing from that page was written; the next run resumes where this one stopped."
            + hint
        )

    def _no_answer_hint(self, exc: BaseException | None) -> str:
        """What to check when Cliniko did not answer. No connection at all may mean no such host,
        and the key's suffix chooses the host: a mistyped or unknown shard looks exactly like a
        network outage, so say both."""
        if isinstance(exc, httpx.ConnectError) and self._host_from_key:
            return (
                f"The host comes from the API key's suffix, which names shard '{self.shard}' "
                "(no suffix means au1): check that it matches the account's region as in the "
                "key Cliniko gave (e.g. ...-au2, ...-uk1), and that this machine can reach "
                f"{self.host}."
            )
        return f"Check the network and the base URL ({self.base_url})."

    def _check_on_api_host(self, url: str) -> None:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise ClinikoError(
                f"Cliniko's next-page link points to {parts.scheme}://{parts.netloc}, not the "
                f"API host {self.host}; refusing to send the key there. Check the base URL."
            )


@functools.cache
def _tls_context(_cert_file: str | None, _cert_dir: str | None) -> ssl.SSLContext:
    """httpx's own default context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR, which key the
    cache), built once per process: loading the CA bundle cost 0.03-0.06 s of CPU per client,
    every tick. An SSLContext is safe to share between clients and threads."""
    return httpx.create_ssl_context()


CLOCK_SKEW_SECONDS = 2.0  # more than the Date header's truncation to the second and a round trip


def _cliniko_now(response: httpx.Response) -> float:
    """Now by Cliniko's clock, as X-RateLimit-Reset (its epoch time) is to be read against: ours,
    unless the answer's ``Date`` says they differ by more than ``CLOCK_SKEW_SECONDS`` (this
    machine's clock is off: a reset that looked long past had the client ask again at once, 429
    after 429). ``Date`` has whole seconds only, so within the margin ours is the finer one."""
    ours = time.time()
    try:
        theirs = parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return ours
    return theirs if abs(theirs - ours) > CLOCK_SKEW_SECONDS else ours


def _server_message(response: httpx.Response) -> str:
    """Cliniko's own short explanation (e.g. a missing User-Agent), when it gives one."""
    try:
        message = orjson.loads(response.content).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return f" ('{message[:160]}')" if isinstance(message, str) and message else ""
