"""The Cliniko client's pure parts: which host a key goes to, and how it paces itself.

Everything that needs a server (429s, retries, auth errors) is shown over real HTTP against the
sandbox in tests/integration/test_sync*.py.
"""

import pytest

from tasks.cliniko.client import (
    BadContact,
    ClinikoClient,
    ClinikoError,
    Pace,
    RateLimiter,
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


def test_no_server_window_ever_sees_more_than_its_allowance():
    fake = FakeTime()
    pace = Pace(requests=200, per_seconds=60)
    limiter = RateLimiter(pace, clock=fake.clock, sleep=fake.sleep)
    times = _request_times(limiter, 1000, fake)
    # Fixed windows aligned anywhere: slide a window start over every request time.
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + pace.per_seconds)
        assert in_window <= pace.requests


def test_the_pace_uses_most_of_the_allowance():
    fake = FakeTime()
    limiter = RateLimiter(Pace(requests=200, per_seconds=60), clock=fake.clock, sleep=fake.sleep)
    times = _request_times(limiter, 1001, fake)
    per_minute = 1000 / (times[-1] - times[0]) * 60
    assert per_minute >= 0.9 * 200


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
        ("", "empty"),
        ("ops", "not an email address"),
        ("Ops Team <ops@clinic.com>", "not an email address"),
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
