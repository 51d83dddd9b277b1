"""Requests at once: the idle sync asks for every path's first page together, and the key's
limiter still bounds what is on its way (real HTTP against the sandbox, answering slowly so
requests overlap as they would at Cliniko's round trip)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Pace, Retry
from tasks.cliniko.resources import RESOURCES
from tasks.warehouse import open_db

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PATHS = sum(len(r.paths) for r in RESOURCES)


@pytest.fixture(scope="module")
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=11, patients=20, start=START)


@pytest.fixture(scope="module")
def server(clinic):
    from sandbox.cliniko import Faults, SandboxServer

    # Every answer 50 ms late: requests sent at once are on their way together.
    with SandboxServer(clinic, faults=Faults(slow_rate=1.0, slow_seconds=0.05)) as running:
        yield running


class InFlight:
    """Counts the GETs of some clients on their way, and the most at one moment."""

    def __init__(self, *clients: ClinikoClient) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()
        for client in clients:
            client._http.get = self._counted(client._http.get)  # type: ignore[method-assign]

    def _counted(self, real):
        def get(*args, **kwargs):
            with self._lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return real(*args, **kwargs)
            finally:
                with self._lock:
                    self.now -= 1

        return get


def client_for(server, clinic, pace: Pace) -> ClinikoClient:
    return ClinikoClient(clinic.api_key, "tests@example.com", server.base_url, pace=pace,
                         retry=Retry(initial_seconds=0.01, max_seconds=0.2))  # fmt: skip


def test_a_keys_requests_on_their_way_never_outnumber_its_headroom(clinic, server):
    """Two clients of one key, eight threads asking at once: at most ``in_flight`` requests are
    on their way, so a server window sees at most the budget plus those: the allowance."""
    pace = Pace(200, 61.0)  # a limiter of its own (limiters are per key and pace, process-wide)
    clients = [client_for(server, clinic, pace) for _ in range(2)]
    seen = InFlight(*clients)

    def ask(client: ClinikoClient) -> None:
        for _ in range(3):
            client.get_page("/businesses", "businesses")

    threads = [threading.Thread(target=ask, args=(clients[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen.most == 2  # they did overlap, and never more than the key's headroom
    limiter = clients[0].limiter
    assert limiter is not None and limiter.in_flight == 200 - limiter.budget == 2
    assert sum(c.stats.requests for c in clients) == 24
    for client in clients:
        client.close()


def test_an_idle_sync_asks_for_its_first_pages_together_and_counts_each(clinic, server, tmp_path):
    db = tmp_path / "clinic.duckdb"
    pace = Pace(200, 62.0)
    with client_for(server, clinic, pace) as client, open_db(db) as con:
        extract.run_sync(con, client)
    clinic.advance(timedelta(hours=1))
    with client_for(server, clinic, pace) as client, open_db(db) as con:
        extract.run_sync(con, client)  # the hour's changes; the next run has none
        seen = InFlight(client)
        before = server.stats.requests
        counts = extract.run_sync(con, client)
    assert server.stats.requests - before == PATHS  # one request per path, as before
    assert seen.most == 2  # the key's headroom, used: two round trips at a time, not one
    for resource in RESOURCES:
        assert counts[resource.name].requests == len(resource.paths), resource.name
        assert counts[resource.name].new + counts[resource.name].updated == 0


def test_a_refused_key_stops_the_first_pages_it_has_not_asked_for_yet(clinic, server, tmp_path):
    """Asking at once must not turn a bad key into 13 refused requests: after the first refusal
    nothing more is asked, the run fails saying why and nothing is written."""
    from tasks.cliniko.client import BadApiKey

    bad_key = "sbx0000000000000000000000000000dead-au1"
    client = ClinikoClient(bad_key, "tests@example.com", server.base_url, pace=Pace(200, 63.0))
    before = server.stats.requests
    with client, open_db(tmp_path / "clinic.duckdb") as con:
        with pytest.raises(BadApiKey, match="401"):
            extract.run_sync(con, client)
        assert con.execute("SELECT count(*) FROM raw.patients").fetchone() == (0,)
    assert server.stats.requests - before <= client.concurrency == 2
