"""The list query without HTTP: q[] operators, hidden rows, sorting, and the fast index path
agreeing with the general one."""

from __future__ import annotations

import orjson
import pytest

from sandbox.cliniko.spec import SPECS
from sandbox.cliniko.store import (
    QueryError,
    Table,
    _index_range,
    fmt_ts,
    parse_filter,
    parse_sort,
    query,
)

T0 = 1_772_442_000  # 2026-03-02T09:00:00Z


def appointment(i: int, *, updated: int, cancelled=None, archived=None, dna=False) -> dict:
    return {
        "id": str(1000 + i),
        "created_at": fmt_ts(T0 - 10_000 + i),
        "updated_at": fmt_ts(updated),
        "starts_at": fmt_ts(T0 + 3600 * i),
        "ends_at": fmt_ts(T0 + 3600 * i + 1800),
        "cancelled_at": fmt_ts(cancelled) if cancelled else None,
        "archived_at": fmt_ts(archived) if archived else "",
        "deleted_at": None,
        "did_not_arrive": dna,
        "patient": {"links": {"self": f"~B~/patients/{i % 3}"}},
    }


@pytest.fixture
def table() -> Table:
    t = Table(SPECS["individual_appointments"])
    t.load(
        [
            appointment(0, updated=T0),
            appointment(1, updated=T0 + 10),
            appointment(2, updated=T0 + 10, cancelled=T0 + 10),
            appointment(3, updated=T0 + 20, archived=T0 + 20),
            appointment(4, updated=T0 + 30, cancelled=T0 + 25, archived=T0 + 30, dna=False),
            appointment(5, updated=T0 + 40, dna=True),
        ]
    )
    return t


def ids(table: Table, *qs: str, sort: str | None = "updated_at,id", page=1, per_page=100) -> list:
    """The rows a query lists, as small numbers (id - 1000)."""
    spec = table.spec
    total, bodies = query(
        table, [parse_filter(spec, q) for q in qs], parse_sort(spec, sort), page, per_page
    )
    found = [int(orjson.loads(b)["id"]) - 1000 for b in bodies]
    assert total >= len(found)
    return found


ALL = ("archived_at:*", "cancelled_at:*")


def test_cancelled_and_archived_rows_are_hidden_unless_asked_for(table):
    assert ids(table) == [0, 1, 5]
    assert ids(table, "cancelled_at:*") == [0, 1, 2, 5]
    assert ids(table, "archived_at:*") == [0, 1, 3, 5]
    assert ids(table, *ALL) == [0, 1, 2, 3, 4, 5]


def test_a_non_star_filter_on_a_hidden_field_also_unhides_and_filters(table):
    assert ids(table, "archived_at:?", "cancelled_at:*") == [3, 4]
    assert ids(table, "cancelled_at:?") == [2]  # archived 4 stays hidden
    assert ids(table, "cancelled_at:!?", "archived_at:*") == [0, 1, 3, 5]


def test_datetime_comparisons_are_exclusive_or_inclusive_as_written(table):
    at = fmt_ts(T0 + 10)
    assert ids(table, f"updated_at:>={at}", *ALL) == [1, 2, 3, 4, 5]
    assert ids(table, f"updated_at:>{at}", *ALL) == [3, 4, 5]
    assert ids(table, f"updated_at:<{at}", *ALL) == [0]
    assert ids(table, f"updated_at:<={at}", *ALL) == [0, 1, 2]
    assert ids(table, f"starts_at:>{fmt_ts(T0 + 3600 * 4)}", *ALL) == [5]


def test_number_string_and_boolean_filters(table):
    assert ids(table, "patient_id:=1,2", *ALL) == [1, 2, 4, 5]
    assert ids(table, "patient_id:!=0", *ALL) == [1, 2, 4, 5]
    assert ids(table, "id:>1003", *ALL) == [4, 5]
    assert ids(table, "did_not_arrive:=true", *ALL) == [5]
    assert ids(table, "did_not_arrive:!=true") == [0, 1]


def test_string_date_and_array_operators_on_other_resources():
    patients = Table(SPECS["patients"])
    patients.load(
        [
            {"id": "1001", "created_at": fmt_ts(T0), "updated_at": fmt_ts(T0), "archived_at": None,
             "email": "Ann.Lee@example.com", "date_of_birth": "1980-05-02", "first_name": "Ann"},
            {"id": "1002", "created_at": fmt_ts(T0), "updated_at": fmt_ts(T0), "archived_at": None,
             "email": "", "date_of_birth": None, "first_name": "Bo"},
        ]
    )  # fmt: skip
    assert ids(patients, "email:~ann.lee", sort=None) == [1]
    assert ids(patients, "email:~~%@example.com", sort=None) == [1]
    assert ids(patients, "email:!?", sort=None) == [2]
    assert ids(patients, "date_of_birth:=****-05-**", sort=None) == [1]
    assert ids(patients, "date_of_birth:<1990-01-01", sort=None) == [1]
    classes = Table(SPECS["group_appointments"])
    classes.load(
        [
            {"id": "1007", "created_at": fmt_ts(T0), "updated_at": fmt_ts(T0),
             "starts_at": fmt_ts(T0), "archived_at": None, "patient_ids": ["41", "42"]},
        ]
    )  # fmt: skip
    assert ids(classes, "patient_ids:~42", sort=None) == [7]
    assert ids(classes, "patient_ids:~43", sort=None) == []


@pytest.mark.parametrize(
    "q",
    [
        "first_name:=Ann",  # not documented for appointments
        "cancelled_at",  # no operator
        "updated_at:=2026-03-02T09:00:00Z",  # no = on datetimes
        "updated_at:>2026-03-02T09:00:00+00:00",  # values must be UTC with Z
        "updated_at:>2026-03-02T09:00:00.5Z",
        "did_not_arrive:=yes",
    ],
)
def test_undocumented_fields_and_bad_values_are_refused(table, q):
    with pytest.raises(QueryError) as refused:
        parse_filter(table.spec, q)
    assert refused.value.status == 400


def test_an_undocumented_field_gets_the_apis_own_message(table):
    with pytest.raises(QueryError, match="This column is not searchable."):
        parse_filter(SPECS["businesses"], "archived_at:*")


def test_sort_is_by_fields_in_order_with_ties_broken_by_id_when_asked(table):
    assert ids(table, *ALL, sort="updated_at:desc,id") == [5, 4, 3, 1, 2, 0]
    assert ids(table, *ALL, sort="updated_at:desc,id:desc") == [5, 4, 3, 2, 1, 0]
    assert ids(table, *ALL, sort="updated_at,starts_at:desc") == [0, 2, 1, 3, 4, 5]
    assert ids(table, *ALL, sort=None) == [0, 1, 2, 3, 4, 5]  # created_at by default
    with pytest.raises(QueryError):
        parse_sort(table.spec, "patient_name")


def test_pages_slice_the_ordered_rows(table):
    assert ids(table, *ALL, per_page=4, page=1) == [0, 1, 2, 3]
    assert ids(table, *ALL, per_page=4, page=2) == [4, 5]
    assert ids(table, *ALL, per_page=4, page=3) == []
    assert ids(table, per_page=2, page=2) == [5]  # the index walk that skips hidden rows


def test_the_fast_index_path_agrees_with_the_general_path(shared_clinic):
    """Same answer whether the query is served by bisection or by scanning and sorting."""
    table = shared_clinic.tables["individual_appointments"]
    spec = table.spec
    since = fmt_ts(sorted(r.updated_at for r in table.rows.values())[len(table) // 2])
    fast = [parse_filter(spec, q) for q in (f"updated_at:>={since}", *ALL)]
    # The same constraint written so only the general path can serve it.
    slow = [*fast, parse_filter(spec, "id:>0")]
    total_order = [("updated_at", False), ("id", False)]
    for page in (1, 3):
        assert query(table, fast, total_order, page, 100) == query(
            table, slow, total_order, page, 100
        )


def burst(n: int = 250) -> Table:
    """``n`` rows sharing one updated_at second (a bulk edit), between two others."""
    t = Table(SPECS["individual_appointments"])
    t.load([appointment(0, updated=T0 - 5)] + [appointment(i, updated=T0) for i in range(1, n)])
    return t


@pytest.mark.parametrize("hidden", [ALL, ()], ids=["index slice", "index walk"])
@pytest.mark.parametrize("sort", ["updated_at,id", "id"])
def test_the_rest_of_one_second_by_id_is_served_from_the_index_as_by_a_scan(hidden, sort):
    """A client walking a bulk edit's second by id (``updated_at`` in that second, ``id:>N``,
    sorted on id alone as the sync asks, or after updated_at) gets what a scan gives, from the
    index: no decoding of the table per page."""
    table, spec = burst(), SPECS["individual_appointments"]
    within = [f"updated_at:>={fmt_ts(T0)}", f"updated_at:<{fmt_ts(T0 + 1)}", "id:>1100"]
    fast = [parse_filter(spec, q) for q in (*within, *hidden)]
    slow = [*fast, parse_filter(spec, "created_at:?")]  # only the general path serves this
    total_order = parse_sort(spec, sort)
    assert _index_range(table, fast, total_order) is not None
    assert _index_range(table, slow, total_order) is None
    for page in (1, 2):
        assert query(table, fast, total_order, page, 100) == query(
            table, slow, total_order, page, 100
        )
    assert query(table, fast, total_order, 1, 100)[0] == 149
    wider = [parse_filter(spec, q) for q in (f"updated_at:>={fmt_ts(T0 - 5)}", "id:>0", *hidden)]
    assert _index_range(table, wider, parse_sort(spec, "id")) is None  # not one second: a scan


@pytest.mark.parametrize("hidden", [ALL, ()], ids=["index slice", "index walk"])
def test_ties_are_ordered_arbitrarily_and_differently_per_request_unless_id_breaks_them(hidden):
    """Cliniko promises no order among ties: paging a same-second burst by offset under
    sort=updated_at alone reads some rows twice and misses others; with the id tie-break every
    row comes exactly once, in id order. Both index paths and the general path behave alike."""
    t = burst()
    for qs in ((*hidden,), (*hidden, "id:>0")):  # the second only the general path serves
        pages = [ids(t, *qs, sort="updated_at", page=p, per_page=50) for p in range(1, 6)]
        read = [i for page in pages for i in page]
        assert len(read) == 250 and len(set(read)) < 250
        assert ids(t, *qs, sort="updated_at") != ids(t, *qs, sort="updated_at")
        pages = [ids(t, *qs, sort="updated_at,id", page=p, per_page=50) for p in range(1, 6)]
        assert [i for page in pages for i in page] == list(range(250))
