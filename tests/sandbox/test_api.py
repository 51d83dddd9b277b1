"""The sandbox over real HTTP, as a Cliniko client meets it: auth and shards, paging and links,
filters and hidden rows, by-id reads, the rate limit, injected faults, and the admin endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sandbox.cliniko import Faults, RateLimit, SandboxServer
from sandbox.cliniko.store import link_id

pytestmark = pytest.mark.integration

UA = {"User-Agent": "clinic-relay tests (tests@example.com)"}
FEED = [("sort", "updated_at,id"), ("q[]", "updated_at:>=2000-01-01T00:00:00Z")]
EVERYTHING = {
    "patients": [("q[]", "archived_at:*")],
    "individual_appointments": [("q[]", "archived_at:*"), ("q[]", "cancelled_at:*")],
    "group_appointments": [("q[]", "archived_at:*")],
    "appointment_types": [("q[]", "archived_at:*")],
    "attendees": [("q[]", "archived_at:*"), ("q[]", "cancelled_at:*")],
}


@pytest.fixture(scope="module")
def server(shared_clinic):
    with SandboxServer(shared_clinic, rate_limit=None) as running:
        yield running


@pytest.fixture
def api(server, shared_clinic):
    with httpx.Client(
        base_url=server.base_url + "/", auth=(shared_clinic.api_key, ""), headers=UA
    ) as client:
        yield client


def page_all(client: httpx.Client, path: str, params=()) -> list[dict]:
    """Follow links.next from the first page, as a client does: sorted to the end in ``id``,
    since rows tied on the default sort (``created_at``, to the second) come in an order that may
    change between pages' requests, so a tie across a page's edge was read twice or not at all."""
    resource = "attendees" if path.endswith("/attendees") else path.split("/")[0]
    params = [
        *params,
        *([] if any(k == "sort" for k, _ in params) else [("sort", "created_at,id")]),
    ]
    rows, response = [], client.get(path, params=[("per_page", 100), *params])
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body[resource]
        if "next" not in body["links"]:
            assert len(rows) == body["total_entries"]
            return rows
        response = client.get(body["links"]["next"])


# ---- auth -----------------------------------------------------------------------------------


def test_an_unknown_key_is_401(server):
    response = httpx.get(server.base_url + "/patients", auth=("sbx-not-a-key-au1", ""), headers=UA)
    assert response.status_code == 401


def test_no_credentials_is_401(server):
    assert httpx.get(server.base_url + "/patients", headers=UA).status_code == 401


def test_a_valid_key_for_another_shard_is_401(server, shared_clinic):
    body = shared_clinic.api_key.rsplit("-", 1)[0]
    response = httpx.get(server.base_url + "/patients", auth=(f"{body}-uk2", ""), headers=UA)
    assert response.status_code == 401
    other = SandboxServer(shared_clinic, rate_limit=None, shard="au2")
    with other:
        refused = httpx.get(
            other.base_url + "/patients", auth=(shared_clinic.api_key, ""), headers=UA
        )
    assert refused.status_code == 401


def test_a_key_sent_without_its_shard_suffix_works_on_its_own_shard_only(make_clinic):
    """Cliniko: "the key may be sent with or without the shard suffix"; without it, it is still
    its account's key, so it works on that shard's server and no other (a uk1 clinic here)."""
    clinic = make_clinic(shard="uk1")
    body = clinic.api_key.rsplit("-", 1)[0]
    with SandboxServer(clinic, rate_limit=None, shard="uk1") as home:
        for key in (clinic.api_key, body):
            answer = httpx.get(home.base_url + "/patients", auth=(key, ""), headers=UA)
            assert answer.status_code == 200
    with SandboxServer(clinic, rate_limit=None, shard="au1") as elsewhere:
        answer = httpx.get(elsewhere.base_url + "/patients", auth=(body, ""), headers=UA)
        assert answer.status_code == 401


def test_a_request_without_user_agent_is_403_and_says_why(server, shared_clinic):
    response = httpx.get(
        server.base_url + "/patients", auth=(shared_clinic.api_key, ""), headers={"User-Agent": ""}
    )
    assert response.status_code == 403
    assert "User-Agent" in response.json()["message"]


def test_restricted_keys_get_403_or_404_on_their_resources(server, make_clinic):
    clinic = make_clinic(seed=2, patients=30)
    key = clinic.add_key(
        "sbxrestricted-au1", denied=("patients",), not_found=("appointment_types",)
    )
    with SandboxServer(clinic, rate_limit=None) as running:
        client = httpx.Client(base_url=running.base_url + "/", auth=(key, ""), headers=UA)
        assert client.get("patients").status_code == 403
        assert client.get("appointment_types").status_code == 404
        assert client.get("businesses").status_code == 200


# ---- paging, links, filters -----------------------------------------------------------------


def test_pages_link_to_each_other_keeping_filters_and_sort(api, server):
    params = [("per_page", 10), *FEED, ("q[]", "archived_at:*")]
    first = api.get("patients", params=params).json()
    assert "previous" not in first["links"]
    assert len(first["patients"]) == 10 and first["total_entries"] > 10
    second_url = first["links"]["next"]
    assert second_url.startswith(server.base_url + "/patients?")
    second = httpx.URL(second_url)
    assert second.params["page"] == "2" and second.params["sort"] == "updated_at,id"
    assert second.params.get_list("q[]") == ["updated_at:>=2000-01-01T00:00:00Z", "archived_at:*"]
    body = api.get(second_url).json()
    assert httpx.URL(body["links"]["previous"]).params["page"] == "1"
    assert not {p["id"] for p in body["patients"]} & {p["id"] for p in first["patients"]}
    last_page = -(-first["total_entries"] // 10)
    last = api.get("patients", params=[*params, ("page", last_page)]).json()
    assert "next" not in last["links"] and last["patients"]
    beyond = api.get("patients", params=[*params, ("page", last_page + 1)]).json()
    assert beyond["patients"] == [] and beyond["total_entries"] == first["total_entries"]


def test_per_page_defaults_to_50_and_must_be_1_to_100(api):
    assert len(api.get("attendees").json()["attendees"]) == 50
    assert len(api.get("attendees", params={"per_page": 100}).json()["attendees"]) == 100
    for bad in (0, 101, "ten"):
        assert api.get("attendees", params={"per_page": bad}).status_code == 400
    assert api.get("attendees", params={"page": 0}).status_code == 400


def test_the_change_feed_is_ordered_by_updated_at_then_id(api):
    rows = page_all(api, "individual_appointments", [*FEED, *EVERYTHING["individual_appointments"]])
    keys = [(r["updated_at"], int(r["id"])) for r in rows]
    assert keys == sorted(keys)


def test_every_operator_over_http(api, shared_clinic):
    everything = page_all(api, "individual_appointments", EVERYTHING["individual_appointments"])
    middle = sorted(r["updated_at"] for r in everything)[len(everything) // 2]

    def count(*qs: str) -> int:
        params = [
            ("per_page", 1),
            *EVERYTHING["individual_appointments"],
            *(("q[]", q) for q in qs),
        ]
        response = api.get("individual_appointments", params=params)
        assert response.status_code == 200, response.text
        return response.json()["total_entries"]

    def expect(pred) -> int:
        return sum(1 for r in everything if pred(r))

    assert count(f"updated_at:>{middle}") == expect(lambda r: r["updated_at"] > middle)
    assert count(f"updated_at:>={middle}") == expect(lambda r: r["updated_at"] >= middle)
    assert count(f"updated_at:<{middle}") == expect(lambda r: r["updated_at"] < middle)
    assert count(f"updated_at:<={middle}") == expect(lambda r: r["updated_at"] <= middle)
    assert count("cancelled_at:?") == expect(lambda r: r["cancelled_at"])
    assert count("cancelled_at:!?") == expect(lambda r: not r["cancelled_at"])
    assert count("archived_at:*") == len(everything)
    assert 0 < count("cancelled_at:?") < len(everything)
    response = api.get("individual_appointments", params={"q[]": "patient_name:=Ann"})
    assert response.status_code == 400
    assert response.json() == {"message": "This column is not searchable."}


def test_hidden_rows_come_back_only_when_asked_for(api):
    visible = page_all(api, "patients")
    everyone = page_all(api, "patients", EVERYTHING["patients"])
    assert not any(p["archived_at"] for p in visible)
    assert {p["id"] for p in visible} < {p["id"] for p in everyone}
    plain = page_all(api, "individual_appointments")
    assert not any(a["cancelled_at"] or a["archived_at"] for a in plain)
    with_cancelled = page_all(api, "individual_appointments", [("q[]", "cancelled_at:*")])
    assert any(a["cancelled_at"] for a in with_cancelled)
    assert not any(a["archived_at"] for a in with_cancelled)


def test_attendees_hide_cancelled_and_archived_attendances_unless_asked_for(api):
    plain = page_all(api, "attendees")
    assert not any(a["cancelled_at"] or a["archived_at"] for a in plain)
    everything = page_all(api, "attendees", EVERYTHING["attendees"])
    assert any(a["cancelled_at"] for a in everything)
    assert {a["id"] for a in plain} < {a["id"] for a in everything}
    cancelled = page_all(api, "attendees", [("q[]", "cancelled_at:?")])
    assert cancelled and all(a["cancelled_at"] for a in cancelled)
    assert not any(a["archived_at"] for a in cancelled)  # archived ones still need archived_at


def test_inactive_practitioners_have_their_own_path(api):
    active = page_all(api, "practitioners")
    inactive = page_all(api, "practitioners/inactive")
    assert active and inactive
    assert all(p["active"] for p in active) and not any(p["active"] for p in inactive)
    assert not {p["id"] for p in active} & {p["id"] for p in inactive}


def test_records_are_readable_by_id_hidden_ones_included(api, server):
    archived = next(
        p for p in page_all(api, "patients", EVERYTHING["patients"]) if p["archived_at"]
    )
    response = api.get(f"patients/{archived['id']}")
    assert response.status_code == 200 and response.json() == archived
    assert response.json()["links"]["self"] == f"{server.base_url}/patients/{archived['id']}"
    inactive = page_all(api, "practitioners/inactive")[0]
    assert api.get(f"practitioners/{inactive['id']}").json() == inactive
    assert api.get("patients/123").status_code == 404
    assert api.get("patients/not-a-number").status_code == 404
    assert api.get("user").json()["role"] == "administrator"


def test_an_appointments_attendees_link_lists_its_attendances(api):
    classes = page_all(api, "group_appointments", EVERYTHING["group_appointments"])
    busy = max(classes, key=lambda c: len(c["patient_ids"]))
    attendees = page_all(api, busy["attendees"]["links"]["self"].split("/v1/")[1])
    assert {link_id(a["booking"]) for a in attendees} == {int(busy["id"])}
    listed = {str(link_id(a["patient"])) for a in attendees if not a["cancelled_at"]}
    assert listed == set(busy["patient_ids"]) and len(listed) > 1
    appointment = page_all(api, "individual_appointments")[0]
    mine = page_all(api, appointment["attendees"]["links"]["self"].split("/v1/")[1])
    assert [link_id(a["patient"]) for a in mine] == [link_id(appointment["patient"])]


def test_a_write_is_refused_as_read_only_not_answered_as_a_read(api):
    """The sandbox serves Cliniko's API for reading. A write (the documented POST
    /medical_alerts/{id}/archive that removes an alert, a DELETE, a POST creating a record) was
    answered as a GET: 200 with the record or the list, nothing changed, or 404 for an alert that
    exists. It is refused, saying how the sandbox's clinic is changed, and nothing changes."""
    alert = page_all(api, "medical_alerts")[0]
    for method, path in (
        ("POST", f"medical_alerts/{alert['id']}/archive"),
        ("DELETE", f"medical_alerts/{alert['id']}"),
        ("PATCH", f"medical_alerts/{alert['id']}"),
        ("POST", "medical_alerts"),
        ("PUT", "patients"),
    ):
        response = api.request(method, path, json={"name": "Insurance patient"})
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == "GET, HEAD"
        assert "read-only" in response.json()["message"]
        assert "bulk_edit" in response.json()["message"]
    assert api.get(f"medical_alerts/{alert['id']}").json() == alert
    assert api.head("medical_alerts").status_code == 200


def test_snapshot_is_what_paging_everything_returns(api, server, shared_clinic):
    for resource in ("patients", "individual_appointments", "attendees", "practitioners"):
        served = page_all(api, resource, EVERYTHING.get(resource, ()))
        if resource == "practitioners":
            served += page_all(api, "practitioners/inactive")
        assert {int(r["id"]): r for r in served} == shared_clinic.snapshot(
            resource, server.base_url
        )


def test_the_same_seed_serves_the_same_pages(make_clinic):
    pages = []
    for _ in range(2):
        clinic = make_clinic(seed=21, patients=60)
        with SandboxServer(clinic, rate_limit=None) as running:
            client = httpx.Client(auth=(clinic.api_key, ""), headers=UA)
            response = client.get(running.base_url + "/individual_appointments", params=FEED)
            pages.append(
                [(r["id"], r["updated_at"]) for r in response.json()["individual_appointments"]]
            )
    assert pages[0] == pages[1] and pages[0]


# ---- changes seen through the API ------------------------------------------------------------


def test_merged_and_hard_deleted_records_as_a_sync_sees_them(make_clinic):
    clinic = make_clinic(seed=4, patients=200)
    with SandboxServer(clinic, rate_limit=None) as running:
        client = httpx.Client(
            base_url=running.base_url + "/", auth=(clinic.api_key, ""), headers=UA
        )
        since = clinic.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        clinic.advance(timedelta(hours=6))
        feed = [("sort", "updated_at,id"), ("q[]", f"updated_at:>{since}")]
        patients = page_all(client, "patients", [*feed, *EVERYTHING["patients"]])
        merged = [p for p in patients if p.get("merged_at")]
        assert merged and all(p["archived_at"] for p in merged)
        assert not any(p.get("merged_at") for p in page_all(client, "patients", feed))
        merged_ids = {int(p["id"]) for p in merged}
        appointments = page_all(
            client, "individual_appointments", EVERYTHING["individual_appointments"]
        )
        assert not merged_ids & {link_id(a["patient"]) for a in appointments}
        gone = clinic.hard_deleted("individual_appointments")
        assert gone and not gone & {int(a["id"]) for a in appointments}
        assert client.get(f"individual_appointments/{min(gone)}").status_code == 404


def test_the_clinic_can_change_while_it_is_being_served(make_clinic):
    """advance() in one thread while the server pages the change feed in its own."""
    clinic = make_clinic(seed=14, patients=150)
    stop, changes = threading.Event(), []

    def keep_changing() -> None:
        while not stop.wait(0.01):
            changes.append(clinic.advance(timedelta(minutes=2)))

    with SandboxServer(clinic, rate_limit=None) as running:
        client = httpx.Client(
            base_url=running.base_url + "/", auth=(clinic.api_key, ""), headers=UA
        )
        changer = threading.Thread(target=keep_changing)
        changer.start()
        try:
            for _ in range(2):
                rows = page_all_tolerant(client, "individual_appointments")
                assert rows
        finally:
            stop.set()
            changer.join()
    assert changes
    assert set(running.stats.by_status) == {200}


def page_all_tolerant(client: httpx.Client, resource: str) -> list[dict]:
    """Page the change feed while rows move (no total_entries check: it changes under us)."""
    params = [("per_page", 100), *FEED, *EVERYTHING[resource]]
    rows, response = [], client.get(resource, params=params)
    while True:
        assert response.status_code == 200
        body = response.json()
        rows += body[resource]
        if "next" not in body["links"]:
            return rows
        response = client.get(body["links"]["next"])


# ---- rate limit and faults -------------------------------------------------------------------


def test_over_the_limit_is_429_until_the_window_resets(shared_clinic):
    limit = RateLimit(per_window=5, window_seconds=2.0)
    with SandboxServer(shared_clinic, rate_limit=limit) as running:
        client = httpx.Client(auth=(shared_clinic.api_key, ""), headers=UA)
        statuses = []
        while 429 not in statuses and len(statuses) < 100:
            response = client.get(running.base_url + "/businesses")
            statuses.append(response.status_code)
        assert statuses[-6:] == [200] * 5 + [429]  # the 5 allowed are in the refused one's window
        header = response.headers["X-RateLimit-Reset"]
        assert "." in header  # windows shorter than a minute reset on fractions of a second
        reset = float(header)
        assert reset % 2.0 == 0
        while time.time() < reset:
            time.sleep(0.05)
        assert client.get(running.base_url + "/businesses").status_code == 200
        assert running.stats.rate_limited == 1
        assert [s for _, _, s in running.stats.log].count(429) == 1


def test_a_window_of_a_minute_or_more_resets_on_a_whole_epoch_second(shared_clinic):
    limit = RateLimit(per_window=1, window_seconds=3600)
    with SandboxServer(shared_clinic, rate_limit=limit) as running:
        client = httpx.Client(auth=(shared_clinic.api_key, ""), headers=UA)
        client.get(running.base_url + "/businesses")
        refused = client.get(running.base_url + "/businesses")
    assert refused.status_code == 429
    reset = refused.headers["X-RateLimit-Reset"]
    assert reset.isdigit() and int(reset) % 3600 == 0 and int(reset) > time.time()


def test_limits_are_per_key(make_clinic):
    clinic = make_clinic(seed=2, patients=20)
    other = clinic.add_key("sbxsecond-au1")
    with SandboxServer(clinic, rate_limit=RateLimit(per_window=2, window_seconds=3600)) as running:
        url = running.base_url + "/businesses"
        for _ in range(2):
            assert httpx.get(url, auth=(clinic.api_key, ""), headers=UA).status_code == 200
        assert httpx.get(url, auth=(clinic.api_key, ""), headers=UA).status_code == 429
        assert httpx.get(url, auth=(other, ""), headers=UA).status_code == 200


@pytest.fixture
def faulty(shared_clinic):
    with SandboxServer(shared_clinic, rate_limit=None) as running:
        yield running, httpx.Client(auth=(shared_clinic.api_key, ""), headers=UA, timeout=5)


def test_error_faults_answer_5xx(faulty):
    running, client = faulty
    running.faults = Faults(error_rate=1.0, seed=1)
    statuses = {client.get(running.base_url + "/patients").status_code for _ in range(12)}
    assert statuses <= {500, 502, 503} and len(statuses) >= 2
    running.faults = Faults()
    assert client.get(running.base_url + "/patients").status_code == 200


def test_dropped_connections_end_without_a_full_answer(faulty):
    running, client = faulty
    running.faults = Faults(drop_rate=1.0, seed=2)
    for _ in range(6):
        with pytest.raises(httpx.TransportError):
            client.get(running.base_url + "/patients")
    assert running.stats.by_status.get(0) == 6


def test_malformed_faults_answer_200_with_a_body_that_is_not_the_page(faulty):
    running, client = faulty
    running.faults = Faults(malformed_rate=1.0, seed=3)
    for _ in range(6):
        response = client.get(running.base_url + "/patients")
        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()


def test_slow_faults_answer_late_but_correctly(faulty):
    running, client = faulty
    running.faults = Faults(slow_rate=1.0, slow_seconds=0.5, seed=4)
    with pytest.raises(httpx.ReadTimeout):
        client.get(running.base_url + "/businesses", timeout=0.05)
    response = client.get(running.base_url + "/businesses", timeout=5)
    assert response.status_code == 200 and response.json()["businesses"]


def test_fault_rates_are_shares_of_requests(faulty):
    running, client = faulty
    running.faults = Faults(error_rate=0.3, seed=5)
    statuses = [client.get(running.base_url + "/businesses").status_code for _ in range(60)]
    assert 5 <= sum(s >= 500 for s in statuses) <= 35


# ---- admin endpoints --------------------------------------------------------------------------


def test_admin_endpoints_advance_report_and_reconfigure(make_clinic):
    clinic = make_clinic(seed=2, patients=100)
    with SandboxServer(clinic, rate_limit=None) as running:
        admin = httpx.Client(base_url=running.admin_url + "/")
        api = httpx.Client(auth=(clinic.api_key, ""), headers=UA)
        before = clinic.now
        answer = admin.post("advance", params={"seconds": 3600}).json()
        assert clinic.now == before + timedelta(hours=1)
        assert datetime.fromisoformat(answer["now"]) == clinic.now.astimezone(UTC)
        assert answer["changes"]["bookings"] > 0
        assert admin.post("advance", params={"seconds": -5}).status_code == 400
        assert admin.post("advance", params={"seconds": "soon"}).status_code == 400
        api.get(running.base_url + "/patients")
        api.get(running.base_url + "/patients", params={"page": 2})
        stats = admin.get("stats").json()
        assert stats["requests"] == 2 and stats["by_path"] == {"/v1/patients": 2}
        assert stats["by_status"] == {"200": 2} and len(stats["log"]) == 2
        assert admin.post("faults", json={"error_rate": 1.0}).status_code == 200
        assert api.get(running.base_url + "/patients").status_code >= 500
        admin.post("faults", json={})
        assert (
            admin.post("rate_limit", json={"per_window": 1, "window_seconds": 3600}).status_code
            == 200
        )
        api.get(running.base_url + "/patients")
        assert api.get(running.base_url + "/patients").status_code == 429
        admin.post("rate_limit", json=None)
        assert api.get(running.base_url + "/patients").status_code == 200
        admin.post("reset_stats")
        assert admin.get("stats").json()["requests"] == 0


@pytest.mark.parametrize(
    ("action", "settings"),
    [
        ("faults", {"error_rate": "0.1"}),  # a string: every request after it was a 500
        ("faults", {"drop_rate": -0.5}),
        ("faults", {"slow_rate": 1.0, "slow_seconds": -1}),
        ("faults", {"malformed_rate": 2}),
        ("rate_limit", {"per_window": 10, "window_seconds": 0}),  # every request a 500
        ("rate_limit", {"per_window": -1}),  # every request a 429
        ("rate_limit", {"per_window": 0}),  # the same; null is no limit
        ("rate_limit", {"per_window": 2.5}),
    ],
)
def test_admin_refuses_settings_that_would_break_every_answer(faulty, action, settings):
    """A setting no request can be answered under was taken ('ok') and every API request after
    it was a 500 (a traceback in the sandbox's log) or a 429: the admin says what is wrong,
    400, and the sandbox keeps answering as before."""
    running, client = faulty
    admin = httpx.Client(base_url=running.admin_url + "/")
    answer = admin.post(action, json=settings)
    assert answer.status_code == 400, answer.text
    assert list(settings)[-1] in answer.json()["message"]  # the setting at fault
    assert client.get(running.base_url + "/businesses").status_code == 200


@pytest.mark.parametrize("seconds", ["inf", "nan", "1e400"])
def test_admin_advance_refuses_a_clock_that_cannot_move_there(make_clinic, seconds):
    clinic = make_clinic(seed=2, patients=20)
    with SandboxServer(clinic, rate_limit=None) as running:
        before = clinic.now
        answer = httpx.post(running.admin_url + "/advance", params={"seconds": seconds})
        assert answer.status_code == 400 and "seconds" in answer.json()["message"].lower()
        assert clinic.now == before


def test_auto_advance_moves_the_clock_with_real_time(make_clinic):
    clinic = make_clinic(seed=2, patients=50)
    start = clinic.now
    with SandboxServer(clinic, rate_limit=None, auto_advance_speed=600):
        while clinic.now == start:
            time.sleep(0.05)
    assert clinic.now > start


def test_python_dash_m_serves_a_clinic_in_its_own_process_and_says_where():
    command = [sys.executable, "-m", "sandbox.cliniko", "--port", "0", "--patients", "40"]
    command += ["--rate-limit", "3", "--window-seconds", "3600", "--start", "2026-03-02T09:00:00Z"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        client = httpx.Client(auth=(ready["api_key"], ""), headers=UA)
        statuses = [client.get(ready["base_url"] + "/businesses").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        stats = httpx.get(ready["admin_url"] + "/stats").json()
        assert stats["by_path"] == {"/v1/businesses": 4} and stats["rate_limited"] == 1
        assert ready["rows"]["patients"] >= 40
    finally:
        process.terminate()
        process.wait(timeout=10)


RELAY = Path(sys.executable).parent / "relay"


@pytest.mark.skipif(not RELAY.exists(), reason="the relay command is installed by make install")
@pytest.mark.parametrize(
    "command", [[str(RELAY), "sandbox"], [sys.executable, "-m", "sandbox.cliniko"]]
)
def test_served_from_the_command_line_it_limits_like_cliniko_unless_told_not_to(command):
    """``relay sandbox`` and ``python -m sandbox.cliniko`` without ``--rate-limit`` answer 429
    past Cliniko's 200 requests a minute per key, as the real API does (they served without
    any limit: a client that never paced itself met no 429); ``--rate-limit 0`` turns it off."""
    for limit, expect_429 in (([], True), (["--rate-limit", "0"], False)):
        process = subprocess.Popen(
            [*command, "--port", "0", "--patients", "20", *limit],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            base = key = None
            while base is None or key is None:
                line = process.stdout.readline()
                assert line, "the sandbox stopped before saying where it serves"
                if line.startswith("{"):
                    ready = json.loads(line)
                    base, key = ready["base_url"], ready["api_key"]
                elif line.startswith("Cliniko sandbox:"):
                    base = line.split(":", 1)[1].strip()
                elif line.startswith("API key:"):
                    key = line.split(":", 1)[1].strip()
            statuses = []
            with httpx.Client(auth=(key, ""), headers=UA) as client:
                # 200 a fixed minute: two windows' worth and one more reach a 429 at any alignment
                while 429 not in statuses and len(statuses) < 401:
                    response = client.get(base + "/businesses")
                    statuses.append(response.status_code)
            if expect_429:
                assert statuses[-1] == 429 and 200 <= statuses.count(200) <= 400
                assert float(response.headers["X-RateLimit-Reset"]) > time.time()
            else:
                assert statuses == [200] * 401
        finally:
            process.terminate()
            process.wait(timeout=20)
