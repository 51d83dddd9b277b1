"""The phone memo (state.phone_numbers): staging.patients reads each mobile with phonenumbers
once; later builds, full ones too, look it up. It must always give phonenumbers' answer: for the
clinic's country and phonenumbers version only, and nothing from a build that failed."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.models import functions as models_functions
from tasks.models import runner as models
from tasks.warehouse import memory_db

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SQL_DIR = Path(models.SQL_DIR)
NUMBERS = [
    "0412 345 678",  # AU mobile, national form
    "61412345679",  # AU mobile without the "+"
    "+61 412 345 670",
    "03 9999 1234",  # landline: not a mobile
    "12345",
    "+64 21 123 4567",  # NZ mobile, international form
    "021 123 4567",  # NZ mobile, national form: a mobile only when read in NZ
    "0412 345 678",  # the same number on a second patient
    "  ",
    None,
]
# What staging.patients said before the memo: phonenumbers, uncached.
PHONENUMBERS = models_functions.mobile_e164.__wrapped__


@pytest.fixture
def con():
    c = memory_db()
    for pid, number in enumerate(NUMBERS, start=1):
        phones = [] if number is None else [{"phone_type": "Mobile", "number": number}]
        payload = {"id": str(pid), "first_name": "P", "patient_phone_numbers": phones}
        c.execute(
            "INSERT INTO raw.patients VALUES (?, NULL, ?, ?, NULL)", [pid, json.dumps(payload), NOW]
        )
    yield c
    c.close()


@pytest.fixture
def parses(monkeypatch):
    """Every number relay_mobile_e164 parses (memo misses), in order."""
    seen: list[tuple[str | None, str | None]] = []

    def counting(number, country):
        seen.append((number, country))
        return PHONENUMBERS(number, country)

    monkeypatch.setattr(models_functions, "mobile_e164", counting)
    return seen


def build(con, country="AU", **kw):
    return models.build(con, models.ListSettings(country=country), now=NOW, **kw)


def staged(con) -> dict[int, tuple[str | None, str | None]]:
    rows = con.execute("SELECT patient_id, mobile_number, mobile_e164 FROM staging.patients")
    return {pid: (number, e164) for pid, number, e164 in rows.fetchall()}


def memo(con) -> dict[str, tuple[str, str, str | None]]:
    rows = con.execute("SELECT number, country, parser, mobile_e164 FROM state.phone_numbers")
    return {n: (c, p, e) for n, c, p, e in rows.fetchall()}


def expected(number: str | None, country: str) -> str | None:
    return PHONENUMBERS(number, country)


@pytest.mark.parametrize("country", ["AU", "NZ"])
def test_every_mobile_is_phonenumbers_answer_and_is_remembered(con, parses, country):
    build(con, country)
    rows = staged(con)
    assert len(rows) == len(NUMBERS)
    for number, e164 in rows.values():
        assert e164 == expected(number, country), number
    numbers = {n for n, _ in rows.values() if n is not None}
    assert memo(con) == {
        n: (country, models_functions.PHONE_PARSER, expected(n, country)) for n in numbers
    }
    assert {n for n, _ in parses if n is not None} == numbers
    assert rows[1] == ("0412 345 678", "+61412345678" if country == "AU" else None)


def test_a_full_rebuild_looks_numbers_up_instead_of_parsing_them(con, parses):
    build(con)
    first = staged(con)
    parses.clear()
    build(con, full_refresh=True)
    assert [n for n, _ in parses if n is not None] == []
    assert staged(con) == first
    new = {
        "id": "99",
        "patient_phone_numbers": [{"phone_type": "Mobile", "number": "0499 000 111"}],
    }
    con.execute(
        "INSERT INTO raw.patients VALUES (99, NULL, ?, ?, NULL)",
        [json.dumps(new), NOW.replace(hour=10)],
    )
    build(con, full_refresh=True)
    assert [p for p in parses if p[0] is not None] == [("0499 000 111", "AU")]
    assert staged(con)[99] == ("0499 000 111", "+61499000111")


def test_a_country_change_reads_every_number_again(con, parses):
    build(con, "AU")
    parses.clear()
    build(con, "NZ")
    assert {c for c, _, _ in memo(con).values()} == {"NZ"}
    assert {n for n, _ in parses if n is not None} == set(memo(con))
    for number, e164 in staged(con).values():
        assert e164 == expected(number, "NZ"), number
    assert staged(con)[7] == ("021 123 4567", "+64211234567")


def test_a_new_phonenumbers_version_reads_every_number_again(con, parses, monkeypatch):
    build(con)
    parses.clear()
    monkeypatch.setattr(models_functions, "PHONE_PARSER", "next-version")
    build(con, full_refresh=True)
    assert {n for n, _ in parses if n is not None} == set(memo(con)) != set()
    assert {p for _, p, _ in memo(con).values()} == {"next-version"}


def test_a_failed_build_remembers_no_number(con, parses, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    broken = sql_dir / "tests" / "zz_broken.sql"  # blames no model: the build rolls back
    broken.write_text("select id from raw.patients")
    with pytest.raises(models.BuildFailed):
        models.build(con, models.ListSettings(), sql_dir=sql_dir, now=NOW)
    assert memo(con) == {}
    broken.unlink()
    parses.clear()
    models.build(con, models.ListSettings(), sql_dir=sql_dir, now=NOW)
    assert {n for n, _ in parses if n is not None} == set(memo(con)) != set()
    for number, e164 in staged(con).values():
        assert e164 == expected(number, "AU"), number


@pytest.mark.parametrize("country", ["AU", "NZ"])
def test_many_new_numbers_are_read_by_a_helper_process_with_the_same_answers(
    con, parses, monkeypatch, country
):
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 1)
    build(con, country)
    assert [n for n, _ in parses if n is not None] == []  # the helper read them all
    rows = staged(con)
    for number, e164 in rows.values():
        assert e164 == expected(number, country), number
    numbers = {n for n, _ in rows.values() if n is not None}
    assert memo(con) == {
        n: (country, models_functions.PHONE_PARSER, expected(n, country)) for n in numbers
    }


def test_the_numbers_are_shared_out_to_a_helper_per_core_and_all_stored(con, monkeypatch):
    """One helper was the first build's longest wait (staging.patients waited for it with a core
    to spare): each core reads a share; every share's answers reach the memo, in its order."""
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 2)
    monkeypatch.setattr(models_functions.os, "cpu_count", lambda: 3)
    started: list[list[str]] = []
    helper = models_functions._Helper

    class Counted(helper):
        def __init__(self, numbers, country):
            started.append(numbers)
            super().__init__(numbers, country)

    monkeypatch.setattr(models_functions, "_Helper", Counted)
    numbers = [f"0412 000 {i:03}" for i in range(7)] + ["12345", "03 9999 1234"]
    prefill = models_functions.PhonePrefill(numbers, "AU")
    assert len(started) == 3 and sorted(sum(started, [])) == sorted(numbers)
    assert prefill.store(con) == len(numbers)
    assert memo(con) == {
        n: ("AU", models_functions.PHONE_PARSER, PHONENUMBERS(n, "AU")) for n in numbers
    }
    few = models_functions.PhonePrefill(numbers[:3], "AU")  # one share per PREFILL_MIN_NUMBERS
    assert len(started) == 4 and few.store(con) == 3


def test_a_helper_that_cannot_run_leaves_the_numbers_to_the_model(con, parses, monkeypatch):
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 1)
    monkeypatch.setattr(models_functions.sys, "executable", "/nonexistent/python")
    build(con)
    rows = staged(con)
    assert {n for n, _ in parses if n is not None} == {n for n, _ in rows.values() if n} != set()
    for number, e164 in rows.values():
        assert e164 == expected(number, "AU"), number


def test_a_failed_build_stores_nothing_the_helper_read(con, monkeypatch, tmp_path):
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 1)
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    broken = sql_dir / "tests" / "zz_broken.sql"  # blames no model: the build rolls back
    broken.write_text("select id from raw.patients")
    with pytest.raises(models.BuildFailed):
        models.build(con, models.ListSettings(), sql_dir=sql_dir, now=NOW)
    assert memo(con) == {}


# Patients with several phone entries: (entries, the SMS number in AU).
ENTRIES = {
    101: ([("Mobile", "0412 000 101"), ("Home", "03 9000 0101")], "+61412000101"),
    102: ([("Mobile", "12345"), ("Home", "03 9000 0102"), ("Work", "0412 000 102")],
          "+61412000102"),
    103: ([("Home", "0412 000 103")], "+61412000103"),
    104: ([("Mobile", "03 9000 0104"), ("Mobile", "0412 000 104")], "+61412000104"),
}  # fmt: skip


@pytest.fixture
def entries_con():
    c = memory_db()
    for pid, (entries, _) in ENTRIES.items():
        phones = [{"phone_type": kind, "number": number} for kind, number in entries]
        payload = {"id": str(pid), "first_name": "P", "patient_phone_numbers": phones}
        c.execute(
            "INSERT INTO raw.patients VALUES (?, NULL, ?, ?, NULL)", [pid, json.dumps(payload), NOW]
        )
    yield c
    c.close()


def test_other_entries_are_read_only_when_no_mobile_typed_entry_is_a_mobile(entries_con, parses):
    build(entries_con)
    assert {pid: e164 for pid, (_, e164) in staged(entries_con).items()} == {
        pid: e164 for pid, (_, e164) in ENTRIES.items()
    }
    # A landline beside a valid Mobile entry is never parsed; everything parsed is remembered,
    # so a full rebuild parses nothing and gives the same answers.
    numbers = [n for n, _ in parses if n is not None]
    parsed = set(numbers)
    assert len(numbers) == len(parsed)  # each number parsed once
    assert "03 9000 0101" not in parsed
    assert {"12345", "03 9000 0102", "0412 000 102", "0412 000 103"} <= parsed
    assert set(memo(entries_con)) == parsed
    first = staged(entries_con)
    parses.clear()
    build(entries_con, full_refresh=True)
    assert [n for n, _ in parses if n is not None] == [] and staged(entries_con) == first


def test_the_helper_reads_first_mobile_entries_and_the_entries_of_patients_without_one(
    entries_con, parses, monkeypatch
):
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 1)
    build(entries_con)
    # Left to the model: the other entries of a patient whose first Mobile entry is invalid.
    assert sorted(n for n, _ in parses if n is not None) == [
        "03 9000 0102", "0412 000 102", "0412 000 104"
    ]  # fmt: skip
    assert {pid: e164 for pid, (_, e164) in staged(entries_con).items()} == {
        pid: e164 for pid, (_, e164) in ENTRIES.items()
    }


def test_the_sql_helpers_register_again_on_a_second_connection_to_the_same_database():
    """The fast lane builds on its own cursor of a database a build registered the UDFs on:
    DuckDB then says they already exist (in the catalog both share), which is not an error."""
    import duckdb

    from tasks.models import functions

    first = duckdb.connect()
    functions.register(first)
    functions.register(first)  # the same connection again
    second = first.cursor()
    functions.register(second)
    assert second.execute("SELECT relay_mobile_e164('0412 345 678', 'AU')").fetchone() == (
        "+61412345678",
    )


def test_an_incremental_build_reads_ahead_only_the_numbers_of_patients_written_since(
    con, monkeypatch
):
    """On an incremental build the head start asks for the unread numbers of the patients
    staging.patients reads (raw_changes), and only those. (That it finds them by the ids the
    build listed rather than by synced_at is a cost, measured in bench models, not asserted.)"""
    build(con)
    asked: list[list[str]] = []

    class Helper:  # what the head start would give a helper process; it reads nothing
        def __init__(self, numbers, country):
            asked.append(sorted(numbers))
            self.numbers = numbers

        def result(self):
            return None

        def cancel(self):
            pass

    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", 1)
    monkeypatch.setattr(models_functions, "_Helper", Helper)
    later = NOW + timedelta(minutes=1)
    for pid, number in ((20, "0412 000 001"), (21, "0412 000 002"), (1, "0412 000 003")):
        phones = [{"phone_type": "Mobile", "number": number}]
        payload = {"id": str(pid), "patient_phone_numbers": phones}
        con.execute(
            "INSERT OR REPLACE INTO raw.patients VALUES (?, NULL, ?, ?, NULL)",
            [pid, json.dumps(payload), later],
        )
    models.build(con, models.ListSettings(country="AU"), now=NOW + timedelta(minutes=5))
    assert sorted(sum(asked, [])) == ["0412 000 001", "0412 000 002", "0412 000 003"]
    assert {pid: e164 for pid, (_, e164) in staged(con).items() if pid in (1, 20, 21)} == {
        1: "+61412000003",
        20: "+61412000001",
        21: "+61412000002",
    }


@pytest.mark.parametrize("threshold, looked", [(7, False), (6, True)])
def test_a_few_listed_patients_are_not_searched_for_numbers_ahead(
    con, monkeypatch, threshold, looked
):
    """Three patients written since the last build, listed by id: at two numbers each, fewer
    than the head start's threshold of 7 cannot fill a helper, so their JSON is not read ahead
    (the model reads their numbers, with the same answers); at 6 they might, and it is."""
    build(con)
    searched: list[str] = []
    real = models_functions._UNREAD_MOBILES

    class Spy(str):
        def replace(self, old, new, *args):
            searched.append(new)
            return real.replace(old, new, *args)

    monkeypatch.setattr(models_functions, "_UNREAD_MOBILES", Spy(real))
    monkeypatch.setattr(models_functions, "PREFILL_MIN_NUMBERS", threshold)
    later = NOW + timedelta(minutes=1)
    for pid, number in ((20, "0412 000 001"), (21, "0412 000 002"), (1, "0412 000 003")):
        payload = {
            "id": str(pid),
            "patient_phone_numbers": [{"phone_type": "Mobile", "number": number}],
        }
        con.execute(
            "INSERT OR REPLACE INTO raw.patients VALUES (?, NULL, ?, ?, NULL)",
            [pid, json.dumps(payload), later],
        )
    models.build(con, models.ListSettings(country="AU"), now=NOW + timedelta(minutes=5))
    assert searched == (["raw_changes('raw.patients')"] if looked else [])
    assert {pid: e164 for pid, (_, e164) in staged(con).items() if pid in (1, 20, 21)} == {
        1: "+61412000003",
        20: "+61412000001",
        21: "+61412000002",
    }


# (number as typed in Cliniko, the clinic's country, the SMS number)
TYPED = {
    "a note after the number": ("0412 345 678 (mum)", "AU", "+61412345678"),
    "a word after the number": ("0412-345-678 Dad", "AU", "+61412345678"),
    "a word before the number": ("Mum 0412 345 678", "AU", "+61412345678"),
    "two numbers, the first a mobile": ("0412 345 678 / 0413 222 333", "AU", "+61412345678"),
    "two numbers, the first a landline": (
        "Mum: 03 9999 1234, Dad: 0413 222 333", "AU", "+61413222333"),
    "00 and the country code": ("0061 412 345 678", "AU", "+61412345678"),
    "0011, Australia's international prefix": ("0011 61 412 345 678", "AU", "+61412345678"),
    "00 and the country code, another country's mobile": (
        "0064 21 123 4567", "AU", "+64211234567"),
    "the country code without +": ("61412345679", "AU", "+61412345679"),
    "an extension": ("04 1234 5678 ext 2", "AU", "+61412345678"),
    "a landline with a note": ("03 9999 1234 (work)", "AU", None),
    "a note only": ("mum", "AU", None),
    "too short": ("12345", "AU", None),
}  # fmt: skip


@pytest.mark.parametrize("number, country, e164", TYPED.values(), ids=TYPED)
def test_a_mobile_is_read_as_people_type_it(number, country, e164):
    # phonenumbers reads letters as a vanity number's digits: "(mum)" made the number too long
    assert PHONENUMBERS(number, country) == e164
