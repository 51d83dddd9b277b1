"""The Cliniko client's pure parts: which host a key goes to, and how it paces itself.

Everything that needs a server (429s, retries, auth errors) is shown over real HTTP against the
sandbox in tests/integration/test_sync*.py.
"""

import bisect
import random

import httpx
import pytest

from tasks.cliniko.client import (
    BadApiKey,
    BadContact,
    ClinikoClient,
    ClinikoError,
    ClinikoUnavailable,
    GarbagePage,
    Pace,
    RateLimiter,
    Retry,
    api_base_url,
    check_contact,
    limiter_for,
    placeholder_reason,
    shard_of,
)


@pytest.mark.parametrize(
    ("key", "shard"),
    [
        ("MS0xLTEyMzQ1Njc4OTAtYWJj-au2", "au2"),
        ("MS0xLTEyMzQ1Njc4OTAtYWJj-uk1", "uk1"),
        ("MS0xLTEyMzQ1Njc4OTAtYWJj-zz9", "zz9"),  # shards not in the docs' list are accepted
        ("MS0xLTEyMzQ1Njc4OTAtYWJj", "au1"),  # no suffix: Cliniko's default shard
        ("MS0xLTEy-notashard", "au1"),
    ],
)
def test_the_key_suffix_names_the_shard(key, shard):
    assert shard_of(key) == shard
    assert api_base_url(key) == f"https://api.{shard}.cliniko.com/v1"


def test_an_explicit_base_url_wins_over_the_shard():
    with ClinikoClient("k-au2", "ops@example.com", base_url="http://127.0.0.1:9/v1/") as client:
        assert client.base_url == "http://127.0.0.1:9/v1"
        assert client.shard == "au2"


def test_a_next_link_off_the_api_host_is_refused_before_any_request():
    with ClinikoClient("k-au1", "ops@example.com", base_url="http://127.0.0.1:9/v1") as client:
        with pytest.raises(ClinikoError, match="not the API host"):
            client.get_page("http://evil.example/v1/patients?page=2", "patients")
        assert client.stats.requests == 0


def no_connection(_request):
    raise httpx.ConnectError("[Errno -2] Name or service not known")


def test_a_host_that_cannot_be_reached_points_at_the_keys_shard_suffix():
    """A mistyped suffix (``-zz9``) names a host that does not exist: the error says which shard
    the key names, not only that Cliniko did not answer."""
    retry = Retry(attempts=2, initial_seconds=0.001, max_seconds=0.001)
    with ClinikoClient("MS0xLTEy-zz9", "ops@clinic.com.au", pace=None, retry=retry) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(no_connection))
        with pytest.raises(ClinikoUnavailable) as raised:
            client.get_page("/patients", "patients")
        with pytest.raises(ClinikoUnavailable) as checked:
            client.get_object("/user")
    for exc in (raised.value, checked.value):
        assert "api.zz9.cliniko.com" in str(exc)
        assert "suffix, which names shard 'zz9'" in str(exc)
        assert "MS0xLTEy" not in str(exc)  # never the key


def test_a_base_url_that_cannot_be_reached_is_named():
    retry = Retry(attempts=2, initial_seconds=0.001, max_seconds=0.001)
    with ClinikoClient("k-au1", "ops@clinic.com.au", "http://10.9.9.9/v1", None, retry) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(no_connection))
        with pytest.raises(ClinikoUnavailable, match=r"base URL \(http://10.9.9.9/v1\)"):
            client.get_page("/patients", "patients")


def undecodable(_request=None) -> httpx.Response:
    """A 200 whose gzip body cannot be decoded: a proxy or a middlebox mangled it."""
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b"\x1f\x8bnot gzip"))


EMPTY_PAGE = {"patients": [], "total_entries": 0, "links": {}}


def test_a_body_that_cannot_be_decoded_is_retried_like_a_garbage_page():
    answers = [undecodable(), httpx.Response(200, json=EMPTY_PAGE)]
    retry = Retry(attempts=3, initial_seconds=0.001, max_seconds=0.001)
    with ClinikoClient("k-au1", "ops@clinic.com.au", "http://10.9.9.9/v1", None, retry) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(lambda _r: answers.pop(0)))
        assert client.get_page("/patients", "patients").records == []
    assert answers == []


def test_a_body_that_never_decodes_fails_as_a_garbage_page_not_an_httpx_error():
    retry = Retry(attempts=2, initial_seconds=0.001, max_seconds=0.001)
    with ClinikoClient("k-au1", "ops@clinic.com.au", "http://10.9.9.9/v1", None, retry) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(undecodable))
        with pytest.raises(GarbagePage, match="unreadable page for /v1/patients"):
            client.get_page("/patients", "patients")
        with pytest.raises(GarbagePage, match="/user"):
            client.get_object("/user")


def test_a_refused_key_points_at_the_block_or_the_environment_it_came_from():
    def refuse(_request):
        return httpx.Response(401, json={"message": "Unauthorized"})

    with ClinikoClient("k-au2", "ops@clinic.com.au", "http://10.9.9.9/v1", None) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(refuse))
        with pytest.raises(BadApiKey) as refused:
            client.get_page("/patients", "patients")
    assert "ClinikoAccount block" in str(refused.value)
    assert "CLINIKO_API_KEY" in str(refused.value)


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _request_times(limiter, n, clock):
    times = []
    for _ in range(n):
        limiter.acquire()
        times.append(clock.now)
    return times


def _most_in_one_window(times, seconds):
    """The most requests any window of ``seconds`` holds, whatever its alignment (fixed windows
    aligned anywhere: a window start slid over every request time)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, start + seconds) - i for i, start in enumerate(times))


def _paced_reader(limiter, fake, n, *, stalls=0.0, seed=3):
    """A serial reader (one request at a time, like the sync's): returns (slot, arrival) times.
    Each request takes a short round trip, and with probability ``stalls`` a long one (a slow
    page, a commit holding the reader back) of up to 10 slots."""
    rng = random.Random(seed)
    slot_seconds = limiter.pace.per_seconds / limiter.pace.requests
    slots, arrivals = [], []
    for _ in range(n):
        limiter.acquire()
        slots.append(fake.now)
        long = rng.random() < stalls
        round_trip = rng.uniform(0, 10 * slot_seconds) if long else rng.uniform(0, slot_seconds / 2)
        arrivals.append(fake.now + round_trip * rng.random())  # reaches the server on the way
        fake.now += round_trip
    return slots, arrivals


@pytest.mark.parametrize("stalls", [0.0, 0.05])
def test_no_server_window_ever_sees_more_than_its_allowance(stalls):
    fake = FakeTime()
    pace = Pace(requests=200, per_seconds=60)
    limiter = RateLimiter(pace, clock=fake.clock, sleep=fake.sleep)
    slots, arrivals = _paced_reader(limiter, fake, 2000, stalls=stalls)
    assert _most_in_one_window(slots, pace.per_seconds) <= pace.requests - 2
    # The server counts arrivals: at most one request more, the one on its way as a window began.
    assert _most_in_one_window(arrivals, pace.per_seconds) <= pace.requests - 1


def test_the_pace_uses_all_but_one_percent_of_the_allowance():
    fake = FakeTime()
    limiter = RateLimiter(Pace(requests=200, per_seconds=60), clock=fake.clock, sleep=fake.sleep)
    times = _request_times(limiter, 1001, fake)
    per_minute = 1000 / (times[-1] - times[0]) * 60
    assert per_minute >= 0.985 * 200  # issue 16: the backfill's rate >= 97% of the allowed


def test_a_reader_that_falls_behind_catches_up_within_the_allowance():
    """Slow pages now and then (2% of requests, up to 10 slots long) cost only the time they
    take beyond what the burst makes up: the slots missed are used after, as far as the sliding
    window allows. (A bucket refilling at the allowed rate loses every slot it skipped.)"""
    fake = FakeTime()
    pace = Pace(requests=200, per_seconds=60)
    limiter = RateLimiter(pace, clock=fake.clock, sleep=fake.sleep)
    slots, _ = _paced_reader(limiter, fake, 4000, stalls=0.02)
    share = (len(slots) - 1) / (slots[-1] - slots[0]) / (pace.requests / pace.per_seconds)
    assert share >= 0.975  # the token bucket this replaced: 0.935


def test_an_idle_ticks_one_request_per_path_never_waits():
    """13 paths, 13 requests every few minutes: all at once (the bucket this replaced held 6 and
    made the other 7 wait 0.32 s each, about 2.2 s of an idle tick)."""
    fake = FakeTime()
    limiter = RateLimiter(Pace(requests=200, per_seconds=60), clock=fake.clock, sleep=fake.sleep)
    assert sum(limiter.acquire() for _ in range(13)) == 0.0
    fake.now += 300  # the next tick
    assert sum(limiter.acquire() for _ in range(13)) == 0.0


def test_a_small_allowance_still_keeps_one_request_spare():
    fake = FakeTime()
    limiter = RateLimiter(Pace(requests=4, per_seconds=0.5), clock=fake.clock, sleep=fake.sleep)
    slots, arrivals = _paced_reader(limiter, fake, 200, stalls=0.1)
    assert _most_in_one_window(slots, 0.5) <= 3
    assert _most_in_one_window(arrivals, 0.5) <= 4


def test_after_a_429_nobody_asks_before_the_window_resets():
    fake = FakeTime()
    limiter = RateLimiter(Pace(requests=200, per_seconds=60), clock=fake.clock, sleep=fake.sleep)
    limiter.hold_until(fake.now + 12.5)
    limiter.acquire()
    assert fake.now >= 1012.5


def test_every_client_of_a_key_shares_one_limiter():
    a = limiter_for("key-one-au1", Pace(200, 60))
    assert limiter_for("key-one-au1", Pace(200, 60)) is a
    assert limiter_for("key-two-au1", Pace(200, 60)) is not a


# --- The User-Agent contact: Cliniko needs a real address ------------------------------------


@pytest.mark.parametrize(
    "contact", ["it@acmephysio.com.au", "Front.Desk+cliniko@clinic.co.nz", "ops@clinic-relay.org"]
)
def test_a_real_looking_contact_goes_into_the_user_agent(contact):
    assert placeholder_reason(contact) is None
    with ClinikoClient("k-au2", contact) as client:
        assert client._http.headers["User-Agent"] == f"clinic-relay ({contact})"


@pytest.mark.parametrize(
    ("contact", "why"),
    [
        ("ops@localhost", "no public mail domain"),
        ("ops@example.com", "reserved for examples"),
        ("ops@mail.example.org", "reserved for examples"),
        ("ops@clinic.example", "reserved for examples"),
        ("me@relay.test", "reserved for examples"),
        ("admin@nas.local", "reserved for examples"),
        ("ops@localhost.localdomain", "reserved for examples"),  # a fresh host's default name
        ("ops@127.0.0.1", "an IP address"),  # ops@localhost by another name
        ("root@10.0.0.5", "an IP address"),
        ("", "empty"),
        ("ops", "not an email address"),
        ("Ops Team <ops@clinic.com>", "not an email address"),
        # an HTTP header is ASCII: it passed, and every request then died of UnicodeEncodeError
        ("jörg@praxis.de", "cannot carry"),
        ("it@praxis-müller.de", "cannot carry"),
    ],
)
def test_a_placeholder_contact_is_refused_before_any_request_saying_why_cliniko_needs_it(
    contact, why
):
    with pytest.raises(BadContact, match=why) as refused:
        ClinikoClient("k-au2", contact)
    message = str(refused.value)
    assert "User-Agent" in message and "block" in message.lower()
    assert "CLINIKO_CONTACT" in message and "contact_email" in message


def test_the_sandbox_on_this_machine_takes_any_contact():
    for base in ("http://127.0.0.1:8765/v1", "http://localhost:1/v1", "http://[::1]:2/v1"):
        check_contact("demo@localhost", base)
    with pytest.raises(BadContact):
        check_contact("demo@localhost", "https://proxy.clinic.com.au/v1")


@pytest.mark.parametrize(
    "base",
    ["https://127.proxy.clinic.com.au/v1", "http://127.0.0.1.nip.io/v1", "http://0.0.0.0/v1"],
)
def test_a_public_name_that_only_starts_like_loopback_is_not_the_sandbox(base):
    """The exemption is for this machine: 127.0.0.0/8, ::1 or localhost, by address, never a host
    name that starts with '127.' (any DNS name can), which took any contact."""
    with pytest.raises(BadContact):
        check_contact("demo@localhost", base)
    check_contact("demo@localhost", "http://127.0.0.2:9/v1")  # all of 127.0.0.0/8 is loopback


# --- One TLS context per process ----------------------------------------------------------------


def test_clients_share_one_tls_context_that_still_verifies_cliniko():
    """Loading the CA bundle cost 0.03-0.06 s of CPU per client, every tick: built once per
    process, and still httpx's default (the certificate and the host name are checked)."""
    import ssl

    a = ClinikoClient("MS0xLTEy-au1", "it@clinic.com.au")
    b = ClinikoClient("MS0xLTEz-au2", "it@clinic.com.au")
    contexts = [c._http._transport._pool._ssl_context for c in (a, b)]  # httpcore's pool
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
    assert contexts[0].get_ca_certs()  # certifi's roots, as httpx loads them
    a.close()
    b.close()


def test_a_429_is_waited_out_by_cliniko_s_clock_when_ours_is_off():
    """X-RateLimit-Reset is Cliniko's epoch time. With this machine's clock two minutes ahead
    the reset looked long past, so the client asked again at once, 429 after 429 (100 in a row,
    then it gave up): the answer's Date tells how far off the reset really is."""
    import time
    from email.utils import formatdate

    skew = 120.0  # Cliniko's clock is this far behind ours
    reset = int(time.time() - skew) + 2  # a window ending 1-2 s from now, by Cliniko's clock
    refused = []

    def cliniko(_request):
        theirs = time.time() - skew
        if theirs < reset:
            refused.append(theirs)
            headers = {"X-RateLimit-Reset": str(reset), "Date": formatdate(theirs, usegmt=True)}
            return httpx.Response(429, headers=headers, json={"message": "Too many requests."})
        return httpx.Response(200, json={"patients": [], "total_entries": 0, "links": {}})

    with ClinikoClient("key-au1", "ops@clinic.com.au", pace=None) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(cliniko))
        page = client.get_page("/patients", "patients")
    assert page.records == [] and len(refused) <= 2


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_names_both_places_a_key_comes_from(key):
    # python -m tasks.cliniko.sync reads CLINIKO_API_KEY: the block alone would send one looking
    # for a block that does not exist.
    with pytest.raises(BadApiKey, match=r"ClinikoAccount block \(or CLINIKO_API_KEY\)"):
        ClinikoClient(key, "it@acmephysio.com.au")


@pytest.mark.parametrize(
    "base",
    [
        "127.0.0.1:8765/v1",  # the sandbox's address without its scheme
        "localhost:8765/v1",
        "api.au2.cliniko.com/v1",
        "htp://127.0.0.1:8765/v1",  # a misspelt scheme
        "https:///v1",  # no host
        "http://127.0.0.1:99999/v1",  # no such port
    ],
)
def test_a_base_url_requests_cannot_use_is_named_before_any_request(base):
    """Without its scheme the sandbox's URL was not on this machine, so the run stopped on the
    demo's contact ('ops@localhost ... no public mail domain'); with a public contact, or a
    misspelt scheme, every page was retried for about a minute and the run ended 'Cliniko did
    not answer ... at  (last: UnsupportedProtocol)'. Nothing can be sent to such a URL: say so,
    naming the setting, before any request."""
    for contact in ("ops@localhost", "it@acmephysio.com.au"):
        with pytest.raises(ClinikoError) as refused:
            ClinikoClient("k-au1", contact, base_url=base, pace=None)
        message = str(refused.value)
        assert repr(base) in message and "base_url" in message and "CLINIKO_BASE_URL" in message
        assert "contact" not in message.lower()


def test_a_base_url_requests_cannot_use_is_named_by_the_block_and_the_environment(monkeypatch):
    from blocks.cliniko import ClinikoAccount
    from tasks.errors import UserFacingError

    monkeypatch.setenv("CLINIKO_API_KEY", "k-au1")
    monkeypatch.setenv("CLINIKO_CONTACT", "ops@localhost")
    monkeypatch.setenv("CLINIKO_BASE_URL", "127.0.0.1:8765/v1")
    with pytest.raises(UserFacingError, match="base_url '127.0.0.1:8765/v1' is not a URL"):
        ClinikoAccount.from_env()
    with pytest.raises(ValueError, match="base_url '127.0.0.1:8765/v1' is not a URL"):
        ClinikoAccount(api_key="k-au1", contact_email="ops@localhost", base_url="127.0.0.1:8765/v1")


def test_a_base_url_pasted_with_spaces_around_it_is_used_without_them():
    """'http://127.0.0.1:8765/v1 ' (a space pasted into CLINIKO_BASE_URL) asked for '/v1 /patients'
    and the run stopped on a 404 telling to give the key's user another role."""
    with ClinikoClient("k-au1", "ops@localhost", base_url=" http://127.0.0.1:9/v1/ \n") as client:
        assert client.base_url == "http://127.0.0.1:9/v1"
        assert client.url("/patients") == "http://127.0.0.1:9/v1/patients"
