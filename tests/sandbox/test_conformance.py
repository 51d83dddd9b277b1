"""The sandbox and the sync held to the current Cliniko reference, table by table.

tests/fixtures/cliniko-reference.json is the reference's per-resource field and filter tables,
copied once into the repo (its ``source`` says from where). Checked here, for every resource:
- the sandbox accepts exactly the documented ``q[]`` fields, each with its type's operators, and
  hides exactly the documented kinds of rows;
- every list the sandbox serves answers with exactly the documented shape: the list envelope,
  and on every row every documented field and nothing else, ids as strings, links as links;
- every payload field the staging SQL reads is a documented field of that resource;
- the sync asks for every hidden kind of row, with filters and a sort the API accepts.
A field or filter added on one side only fails here, so the sandbox cannot drift into our own
reading of the API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from sandbox.cliniko import SandboxServer
from sandbox.cliniko.spec import PARTITIONS, SPECS
from sandbox.cliniko.store import _ALLOWED, parse_filter, parse_sort
from tasks.cliniko import fields as parsed_fields
from tasks.cliniko.resources import RESOURCES
from tasks.cliniko.sync import list_params

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "tests/fixtures/cliniko-reference.json").read_text())
DOCUMENTED = REFERENCE["resources"]
UA = {"User-Agent": "clinic-relay tests (tests@example.com)"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CHECKED: dict[str, dict[str, int]] = {}  # resource -> what was checked (printed at the end)


def checked(resource: str, what: str, n: int) -> None:
    CHECKED.setdefault(resource, {})[what] = n


@pytest.fixture(scope="module")
def api(shared_clinic):
    with SandboxServer(shared_clinic, rate_limit=None) as running:
        with httpx.Client(
            base_url=running.base_url + "/", auth=(shared_clinic.api_key, ""), headers=UA
        ) as client:
            yield client
    if CHECKED:
        print("\nconformance checks per resource (fields, filters, staging fields, rows):")
        for name, counts in sorted(CHECKED.items()):
            print(f"  {name:<24} " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def page_all(
    client: httpx.Client, path: str, params=(), key: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Every row of a list, following links.next, and every page body."""
    resource = key or path.split("/")[0]
    rows, bodies = [], []
    response = client.get(path, params=[("per_page", 100), *params])
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        bodies.append(body)
        rows += body[resource]
        if "next" not in body["links"]:
            return rows, bodies
        response = client.get(body["links"]["next"])


def asking_everything(name: str) -> list[tuple[str, str]]:
    return [("q[]", f"{field}:*") for field in DOCUMENTED[name]["hidden"]]


def paths_of(name: str) -> list[str]:
    return [p for p, (resource, _f, _v) in PARTITIONS.items() if resource == name] or [name]


def test_the_reference_covers_every_resource_we_sync_and_the_sandbox_serves():
    assert {r.name for r in RESOURCES} == set(DOCUMENTED) == set(SPECS)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_sandbox_accepts_exactly_the_documented_filters_and_operators(name):
    documented = DOCUMENTED[name]
    spec = SPECS[name]
    assert spec.filters == documented["filters"]
    assert set(spec.hidden) == set(documented["hidden"])
    for field, kind in documented["filters"].items():
        allowed = set(REFERENCE["operators"][kind])
        assert _ALLOWED[kind] == allowed, kind
        for op in ("?", "!?", "*", "=", "~", ">"):
            value = {"?": "", "!?": "", "*": ""}.get(op, "2026-03-02T09:00:00Z")
            if kind != "datetime" and op not in ("?", "!?", "*"):
                continue  # values of other kinds are checked by test_query
            if op in allowed:
                parse_filter(spec, f"{field}:{op}{value}")
            else:
                with pytest.raises(Exception, match="operator"):
                    parse_filter(spec, f"{field}:{op}{value}")
    checked(name, "filters", len(documented["filters"]))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_sandbox_list_answers_with_exactly_the_documented_shape(api, name):
    documented = DOCUMENTED[name]
    fields = documented["fields"]
    rows = []
    for path in paths_of(name):
        served, bodies = page_all(api, path, asking_everything(name))
        for body in bodies:
            assert set(body) == {name, "total_entries", "links"}
            assert set(body["links"]) <= {"self", "next", "previous"}
            assert body["total_entries"] == len(served)
        rows += served
    assert rows, f"the sandbox serves no {name}"
    for row in rows:
        assert set(row) == set(fields), (name, set(row) ^ set(fields))
        for field, kind in fields.items():
            value = row[field]
            if kind == "id":
                assert isinstance(value, str) and value.isdigit(), (name, field, value)
            elif kind == "ids":
                assert value is None or all(isinstance(v, str) and v.isdigit() for v in value)
            elif kind == "link":
                assert value is None or isinstance(value["links"]["self"], str), (name, field)
            elif kind == "datetime":
                assert value in (None, "") or TIMESTAMP.match(value), (name, field, value)
        assert not row.get("deleted_at"), "deleted rows never appear in lists"
    checked(name, "fields", len(fields))
    checked(name, "rows", len(rows))


@pytest.mark.parametrize("name", sorted(n for n in DOCUMENTED if DOCUMENTED[n]["hidden"]))
def test_plain_lists_hide_what_the_reference_says_and_star_brings_it_back(api, name):
    hidden = DOCUMENTED[name]["hidden"]
    plain, _ = page_all(api, name)
    everything, _ = page_all(api, name, asking_everything(name))
    assert not any(row.get(field) for row in plain for field in hidden)
    for field in hidden:
        assert any(row.get(field) for row in everything), f"no {field} {name} to hide"
        widened, _ = page_all(api, name, [("q[]", f"{field}:*")])
        assert any(row.get(field) for row in widened)
        others = [f for f in hidden if f != field]
        assert not any(row.get(f) for row in widened for f in others)


def test_practitioners_are_active_on_one_path_and_inactive_on_the_other(api):
    active, _ = page_all(api, "practitioners")
    inactive, _ = page_all(api, "practitioners/inactive")
    assert active and inactive
    assert all(p["active"] is True for p in active)
    assert all(p["active"] is False for p in inactive)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_undocumented_filters_datetime_equals_and_bad_per_page_are_refused(api, name):
    documented = DOCUMENTED[name]
    outside = next(f for f in sorted(documented["fields"]) if f not in documented["filters"])
    for q in (f"{outside}:=1", "not_a_field:*"):
        response = api.get(name, params={"q[]": q})
        assert response.status_code == 400, (name, q)
        assert response.json() == {"message": "This column is not searchable."}
    response = api.get(name, params={"q[]": "updated_at:=2026-03-02T09:00:00Z"})
    assert response.status_code == 400 and response.json()["message"]
    for op in ("?", "!?"):
        assert api.get(name, params={"q[]": f"created_at:{op}"}).status_code == 200
    low, high = REFERENCE["per_page"]
    for per_page in (low - 1, high + 1):
        response = api.get(name, params={"per_page": per_page})
        assert response.status_code == 400 and response.json()["message"]
    assert api.get(name, params={"per_page": high}).status_code == 200


def staging_files(name: str) -> list[Path]:
    """The staging models that read raw.<name> (sql/staging/<name>.sql, and any other parsing the
    same payloads: staging.patient_custom_field_values, staging.medical_alert_history)."""
    return [
        path
        for path in sorted((ROOT / "sql/staging").glob("*.sql"))
        if re.search(rf"\braw\.{name}\b", re.sub(r"--[^\n]*", "", path.read_text()))
    ]


def staging_fields(name: str) -> set[str]:
    """The payload fields the staging models reading raw.<name> read (json_transform keys,
    payload->>'x' and the top-level field of each '$.x...' path of a
    json_extract_string(payload, [paths])), and those the sync parsed into the raw row's
    ``fields`` column for it (tasks/cliniko/fields.py: the path each of its members comes from)."""
    sql = "\n".join(path.read_text() for path in staging_files(name))
    read = set(re.findall(r"payload\s*->>?\s*'([a-z_0-9]+)'", sql))
    code = re.sub(r"--[^\n]*", "", sql)
    members = set(re.findall(r"\bfields\.([a-z_0-9]+)", code))
    declared = {f.name: f.payload_field for f in parsed_fields.PARSED.get(name, ())}
    assert members <= set(declared), f"{name}: fields.{members - set(declared)} not parsed"
    read |= {declared[m] for m in members}
    for paths in re.findall(r"json_extract_string\(\s*payload\s*,\s*\[(.*?)\]\s*\)", sql, re.S):
        read |= set(re.findall(r"'\$\.([a-z_0-9]+)", paths))
    for shape in re.findall(r"json_transform\(\s*payload\s*,\s*'(\{.*?\})'\s*\)", sql, re.S):
        read |= set(json.loads(shape))
    return read


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_field_the_staging_sql_reads_is_documented_for_its_resource(name):
    if not staging_files(name):
        pytest.skip(f"no staging model reads raw.{name} yet (its raw table is synced)")
    read = staging_fields(name)
    assert read, f"found no payload field in the staging models reading raw.{name}"
    assert read <= set(DOCUMENTED[name]["fields"]), read - set(DOCUMENTED[name]["fields"])
    checked(name, "staging", len(read))


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
def test_the_sync_asks_for_every_hidden_kind_with_a_query_the_api_accepts(resource):
    assert set(resource.include_hidden) == set(DOCUMENTED[resource.name]["hidden"])
    spec = SPECS[resource.name]
    for cursor in (None, "2026-03-02T09:00:00Z"):
        from datetime import datetime

        moment = None if cursor is None else datetime.fromisoformat(cursor)
        walks = [list_params(resource, moment)]  # and the walk through one second, by id:
        walks += [list_params(resource, moment, 42)] if moment else []
        for params in walks:
            sort = [k for k, v in params if k == "sort"]
            assert len(sort) == 1
            keys = parse_sort(spec, dict(params)["sort"])
            assert keys[-1] == ("id", False), "the sync's order must be total"
            for key, value in params:
                if key == "q[]":
                    parse_filter(spec, value)
    assert {p.strip("/") for p in resource.paths} == set(paths_of(resource.name))


def test_invoices_come_in_every_documented_status_with_its_description(api):
    invoices, _ = page_all(api, "invoices")
    statuses = {(i["status"], i["status_description"]) for i in invoices}
    assert statuses == {(10, "Open"), (20, "Paid"), (30, "Closed"), (40, "Open (credit)")}
    for i in invoices:
        assert isinstance(i["number"], int) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", i["issue_date"])
        for amount in ("total_amount", "net_amount", "tax_amount", "discounted_amount"):
            assert isinstance(i[amount], str) and float(i[amount]) >= 0, (amount, i[amount])
        assert bool(i["closed_at"]) == (i["status"] in (20, 30)), i
    assert len({i["number"] for i in invoices}) == len(invoices), "invoice numbers are unique"
    # Raised for a visit (appointment and practitioner links) or for a sale (neither).
    assert any(i["appointment"] for i in invoices) and any(not i["appointment"] for i in invoices)
    checked("invoices", "statuses", len(statuses))


INVOICE_FILTERS = {
    "status:=20": lambda i: i["status"] == 20,
    "status:=10,40": lambda i: i["status"] in (10, 40),
    "number:>=5": lambda i: i["number"] >= 5,
    "issue_date:>=2025-01-01": lambda i: i["issue_date"] >= "2025-01-01",
}


@pytest.mark.parametrize("q", sorted(INVOICE_FILTERS))
def test_invoices_filter_on_their_documented_plain_fields(api, q):
    invoices, _ = page_all(api, "invoices")
    kept, _ = page_all(api, "invoices", [("q[]", q)])
    expected = {i["id"] for i in invoices if INVOICE_FILTERS[q](i)}
    assert kept and {i["id"] for i in kept} == expected


def test_a_patients_alerts_and_invoices_are_also_listed_under_the_patient(api):
    alerts, _ = page_all(api, "medical_alerts", asking_everything("medical_alerts"))
    patient = alerts[0]["patient"]["links"]["self"].rsplit("/", 1)[1]
    for name in ("medical_alerts", "invoices"):
        everything, _ = page_all(api, name, asking_everything(name))
        own = {r["id"] for r in everything if r["patient"]["links"]["self"].endswith(f"/{patient}")}
        nested, _ = page_all(api, f"patients/{patient}/{name}", asking_everything(name), key=name)
        assert {r["id"] for r in nested} == own
        assert own or name == "invoices", "the patient has the alert it was picked for"


def test_patients_custom_fields_have_the_documented_shape(api):
    patients, _ = page_all(api, "patients", asking_everything("patients"))
    filled = [p["custom_fields"] for p in patients if p["custom_fields"]]
    assert filled and len(filled) < len(patients), "some patients have custom fields, not all"
    types = set()
    for custom in filled:
        for section in custom["sections"]:
            assert set(section) == {"name", "token", "fields"}
            for field in section["fields"]:
                types.add(field["type"])
                assert {"name", "type", "token"} <= set(field)
                if field["type"] == "text":
                    assert set(field) <= {"name", "type", "token", "value"}
                else:
                    assert all(set(o) <= {"name", "token", "selected"} for o in field["options"])
                    selected = [o for o in field["options"] if o.get("selected")]
                    if field["type"] == "radiobuttons":
                        assert len(selected) <= 1
    assert types == {"text", "radiobuttons", "checkboxes"}
    several = [
        f for c in filled for s in c["sections"] for f in s["fields"]
        if f["type"] == "checkboxes" and sum(bool(o.get("selected")) for o in f["options"]) > 1
    ]  # fmt: skip
    assert several, "some patients tick several check boxes"
