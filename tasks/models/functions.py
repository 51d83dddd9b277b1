"""SQL helpers the models may call: macros for Cliniko's payload quirks and for an incremental
model's source rows, Python UDFs for phones and emails. Registered on every connection that
builds or previews models.

Cliniko quirks (docs/reference.md, Cliniko): empty values arrive as "" or null, foreign
keys as {"links": {"self": ".../patients/82"}} (the id is the last path segment), 64-bit ids as
strings. Phone numbers are read with ``phonenumbers`` in the clinic's country; emails are checked
for syntax only with ``email-validator`` (no DNS: builds must not touch the network).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

import duckdb
from duckdb.func import FunctionNullHandling
from duckdb.sqltypes import BOOLEAN, VARCHAR
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from tasks.cliniko import fields as parsed_fields
from tasks.cliniko.resources import RESOURCES
from tasks.messages.addresses import address_problem
from tasks.models.phones import PHONE_PARSER, mobile_e164
from tasks.paths import PROJECT_ROOT
from tasks.warehouse import one

_PLAIN_EMAIL = r"^[A-Za-z0-9]+([._+-][A-Za-z0-9]+)*@([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)+[A-Za-z]{2,}$"
_SPECIAL_USE = ", ".join(f"'{d}'" for d in SPECIAL_USE_DOMAIN_NAMES)

# Staging reads most fields with a typed json_transform, which already turns "" into NULL for
# timestamps, booleans and numbers; these cover text, ->> reads and links.
MACROS = (
    # "" and whitespace-only mean "no value" in Cliniko payloads.
    "CREATE OR REPLACE TEMP MACRO cliniko_text(v) AS nullif(trim(v), '')",
    "CREATE OR REPLACE TEMP MACRO cliniko_timestamp(v) AS try_cast(nullif(trim(v), '') AS TIMESTAMPTZ)",
    # The id at the end of a link URL, ignoring a query string: ".../patients/82?x=1" -> 82.
    # (String splitting: a third of the cost of a regular expression over millions of links.)
    "CREATE OR REPLACE TEMP MACRO cliniko_link_id(url) AS "
    "try_cast(split_part(split_part(url, '?', 1), '/', -1) AS BIGINT)",
    # Email syntax: addresses of the plainest form (ASCII dot-atoms, hyphens inside labels, a
    # letters-only top-level domain that is not special-use, short enough that no length limit
    # applies) are valid for email-validator too, and this regular expression proves it at a
    # fraction of a Python call's cost; everything else is asked of email-validator. A full
    # build checks 100,000 addresses, so this is most of a build's Python time saved.
    "CREATE OR REPLACE TEMP MACRO relay_email_is_valid(email) AS CASE WHEN "
    f"regexp_full_match(email, '{_PLAIN_EMAIL}') AND length(email) <= 64 "
    f"AND lower(split_part(email, '.', -1)) NOT IN ({_SPECIAL_USE}) THEN true "
    "ELSE relay_email_validator(email) END",
    # The ids of the rows of a raw table the sync wrote since changes_since, when the build
    # listed them (note_changed_ids: a few, at most CHANGED_IDS_MAX); NULL otherwise.
    "CREATE OR REPLACE TEMP MACRO relay_changed_ids(raw_table) AS CASE "
    "WHEN getvariable('changes_since') IS NOT NULL "
    "AND getvariable('relay_changed_ids').since = getvariable('changes_since') "
    "THEN getvariable('relay_changed_ids').ids[raw_table] END",
    # An incremental staging model's source: the rows of a raw table the sync wrote since the
    # last good build (getvariable('changes_since'); every row when it is NULL, a full build):
    # rows stored since, and rows marked removed since. When the build listed their ids, the
    # rows with those ids (a filter on the id column: the sync updates rows in place, and a
    # filter on its updated synced_at made DuckDB read the JSON of every vector holding a
    # change, 14 ms for 150 patients); otherwise two selections, each filtering one column, so
    # DuckDB skips unchanged storage without reading the JSON (one OR over both columns reads
    # it all). Each condition is a constant once the variables are bound, so only one branch
    # reads the table. Used as `select * from raw_changes('raw.patients')`. Its columns: id,
    # payload, synced_at, removed_at, and `fields` where the sync parses them when it writes
    # the row (tasks/cliniko/fields.py).
    "CREATE OR REPLACE TEMP MACRO raw_changes(raw_table) AS TABLE "
    "SELECT * EXCLUDE (updated_at) FROM query_table(raw_table) "
    "WHERE getvariable('changes_since') IS NULL "
    "UNION ALL "
    "SELECT * EXCLUDE (updated_at) FROM query_table(raw_table) "
    "WHERE relay_changed_ids(raw_table) IS NOT NULL "
    "AND list_contains(relay_changed_ids(raw_table), id) "
    "UNION ALL "
    "SELECT * EXCLUDE (updated_at) FROM query_table(raw_table) "
    "WHERE relay_changed_ids(raw_table) IS NULL AND synced_at > getvariable('changes_since') "
    "UNION ALL "
    "SELECT * EXCLUDE (updated_at) FROM query_table(raw_table) "
    "WHERE relay_changed_ids(raw_table) IS NULL AND removed_at > getvariable('changes_since') "
    "AND synced_at <= getvariable('changes_since')",
    # The patients an incremental model's merge took rows away from in this build: a row whose
    # patient_id its new version changed (tables.merge), for a model with a patient_id column
    # keyed by something else. An appointment moved from patient A to B names A, whose visits
    # and numbering must be computed again though nothing of A's changed.
    # Used as `select patient_id from replaced_patients('marts.appointments')`; no rows on a
    # full build (which computes everyone).
    # (The table is a default parameter so that it is looked up when the macro is used: a build
    # makes it when it starts, ModelBuild.start, and drops it at its end.)
    "CREATE OR REPLACE TEMP MACRO replaced_patients(model, replaced := 'relay_replaced') AS "
    "TABLE SELECT patient_id FROM query_table(replaced) WHERE relation = model",
    # The values of one column of the rows an incremental model's merge replaced in this
    # build, as they were (the rows taken out) and as they are (the rows put in), as text: a
    # patient who moved from one address to another names both. A merge keeps only the
    # columns some model asks for (keep_changed_values); no rows on a full build (which computes
    # everything). Used as `select value from changed_values('marts.patient_rows',
    # 'email_normalised')`. (The table is a default parameter, as for replaced_patients.)
    "CREATE OR REPLACE TEMP MACRO changed_values(model, col, changed := 'relay_changed') AS "
    "TABLE SELECT value FROM query_table(changed) WHERE relation = model AND name = col",
)


# changed_values('<model>', '<column>') in a model's SQL
_CHANGED_VALUES = re.compile(r"\bchanged_values\(\s*'([\w.]+)'\s*,\s*'(\w+)'\s*\)", re.I)


def changed_values_read(sqls: Iterable[str]) -> dict[str, set[str]]:
    """Each model whose changed_values the models' SQL ``sqls`` reads -> the columns it
    reads (a merge keeps those: keep_changed_values)."""
    out: dict[str, set[str]] = {}
    for sql in sqls:
        for relation, column in _CHANGED_VALUES.findall(sql):
            out.setdefault(relation.lower(), set()).add(column)
    return out


def keep_changed_values(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    asked: dict[str, set[str]],
    old: str,
    new: str,
) -> None:
    """For changed_values: the values (as text) of ``relation``'s columns another model asks
    for (``asked``: relation -> columns) in the rows ``old`` (a merge's, read before its
    DELETE) and ``new`` (what it puts in). Only those columns: reading whole rows of
    marts.patient_rows cost ~20 ms, a column ~2 ms. (BuildMemo makes and drops the table.)"""
    columns = sorted(asked.get(relation, ()))
    if not columns:
        return
    values = ", ".join(f'"{c}"::VARCHAR AS v{i}' for i, c in enumerate(columns))
    slots = ", ".join(f"v{i}" for i in range(len(columns)))
    con.execute(
        f"INSERT INTO relay_changed SELECT ?, unnest(?), unnest([{slots}]) "
        f"FROM (SELECT {values} FROM {old} UNION ALL SELECT {values} FROM {new})",
        [relation, columns],
    )


# At most this many changed rows of a raw table are listed by id for raw_changes (DuckDB's own
# index_scan_max_count): a sync that wrote more is read by the two filtered selections.
CHANGED_IDS_MAX = 2048


def note_changed_ids(con: duckdb.DuckDBPyConnection, since: datetime | None) -> None:
    """List, for raw_changes, the ids of the rows of each raw table the sync wrote (stored or
    marked removed) after ``since`` (the build's changes_since; None: a full build, nothing
    listed). The list carries ``since``: raw_changes uses it only while changes_since is that
    value, so a model built in full (changes_since NULL) or a connection that never listed
    anything reads as before. Tables whose payloads the sync parses as it writes them
    (tasks/cliniko/fields.py) are not listed: staging reads their parsed fields, which cost
    the same to read either way (measured), and the largest (appointments) costs the most to
    list. Cheap: one filter on three narrow columns a table, never the JSON."""
    if since is None:
        con.execute("SET VARIABLE relay_changed_ids = NULL")
        return
    union = " UNION ALL ".join(
        f"SELECT '{r.table}' AS t, id FROM {r.table} WHERE synced_at > $since OR removed_at > $since"
        for r in RESOURCES
        if r.name not in parsed_fields.PARSED
    )
    con.execute(
        "SET VARIABLE relay_changed_ids = (SELECT {'since': $since::TIMESTAMPTZ, "
        "'ids': coalesce(map(list(t), list(ids)), MAP {})} "
        f"FROM (SELECT t, list(id) AS ids FROM ({union}) GROUP BY t "
        f"HAVING count(*) <= {CHANGED_IDS_MAX}))",
        {"since": since},
    )


# Numbers read by relay_mobile_e164 since a build last took them: (number, country) -> E.164.
# A build stores them in state.phone_numbers when it commits (BuildMemo.keep).
_parsed_mobiles: dict[tuple[str, str], str | None] = {}


def _relay_mobile_e164(number: str | None, country: str | None) -> str | None:
    """The SQL function: mobile_e164, remembering what it read for the phone memo."""
    result = mobile_e164(number, country)
    if number is not None and country is not None:
        _parsed_mobiles[(number, country)] = result
    return result


def take_parsed_mobiles() -> list[tuple[str, str, str | None]]:
    """The numbers read since the last call, as (number, country, mobile_e164); forgets them."""
    items = [(n, c, e) for (n, c), e in _parsed_mobiles.items()]
    _parsed_mobiles.clear()
    return items


def remember_mobiles(
    con: duckdb.DuckDBPyConnection, country: str, numbers: list[str], results: list[str | None]
) -> None:
    """Store phonenumbers' answers (``results[i]`` for ``numbers[i]``) in state.phone_numbers."""
    con.execute(
        "INSERT OR IGNORE INTO state.phone_numbers "
        "SELECT unnest($numbers), $country, $parser, unnest($results::VARCHAR[])",
        {"numbers": numbers, "country": country, "parser": PHONE_PARSER, "results": results},
    )


# A build with at least this many mobile numbers not in state.phone_numbers reads them before
# the models run, on every core (a Python function called by DuckDB runs one call at a time):
# a helper process for each such share of them, one per core at most.
PREFILL_MIN_NUMBERS = 5000

# The numbers staging.patients reads, from the patients it reads ({source}: all of them, or on
# an incremental build those the sync wrote since, as raw_changes finds them) and not yet in
# the memo: each patient's first Mobile-typed entry, and every entry of a patient without one
# or whose first is known (in the memo) not to be a valid mobile. (Which those are needs the
# answers: a build starting without them parses the rest itself, few; read_new_mobiles asks
# again once it has them.) Reading them here is only a head start: staging.patients still
# decides which number is a patient's, and parses any it does not find in the memo, so if this
# query and the model ever disagree the cost is a slower build, never a different answer (a
# memo row is phonenumbers' answer for that number, whoever asked).
_UNREAD_MOBILES = """
WITH phones AS MATERIALIZED (
    SELECT entries, cliniko_text(list_filter(entries,
        lambda n: lower(trim(n.phone_type)) = 'mobile')[1].number) AS first_mobile
    FROM (
        SELECT json_transform(payload, '{"patient_phone_numbers":
            [{"phone_type": "VARCHAR", "number": "VARCHAR"}]}').patient_phone_numbers AS entries
        FROM {source}
    )
)
SELECT DISTINCT number FROM (
    SELECT first_mobile AS number FROM phones
    UNION ALL
    SELECT cliniko_text(unnest(entries).number) FROM phones
    WHERE first_mobile IS NULL OR first_mobile IN (
        SELECT number FROM state.phone_numbers WHERE country = $country AND mobile_e164 IS NULL
    )
)
WHERE number IS NOT NULL
    AND number NOT IN (SELECT number FROM state.phone_numbers WHERE country = $country)
"""


def read_new_mobiles(
    con: duckdb.DuckDBPyConnection, country: str, source: str, params: dict | None = None
) -> int:
    """Read the numbers of ``source``'s patients (raw.patients, or a query of its rows in
    parentheses, with ``params``) that the memo lacks, here, and remember them; how many.
    ``con`` has the macros (``register_macros``).

    The sync calls it as it writes patients (tasks/cliniko/writer.py), about 90 µs a new
    patient while it waits on Cliniko's rate limit, so a build finds the numbers read: a first
    build after a backfill read 100,000 of them, about 3.5 s of CPU and the other core's
    time, with the models waiting for the last. The same numbers a build would read
    (``_UNREAD_MOBILES``), the same answers (``mobile_e164``): asked again when a number it
    read was no mobile, for the other entries of the patients whose first Mobile entry it was."""
    query, read = _UNREAD_MOBILES.replace("{source}", source), 0
    for _ in range(2):
        found = con.execute(query, {"country": country, **(params or {})}).fetchall()
        numbers = [r[0] for r in found]
        answers = [mobile_e164(n, country) for n in numbers]
        if numbers:
            remember_mobiles(con, country, numbers, answers)
        read += len(numbers)
        if None not in answers:
            break
    return read


class PhonePrefill:
    """Mobile numbers no build has read yet, read by another process while the build goes on.

    The sync reads the numbers of the patients it writes (``read_new_mobiles``), so this is for
    the numbers it did not: all of them after the clinic's country or phonenumbers' version
    changed (the memo forgets them), or rows written some other way. A build's largest
    single-threaded step was staging.patients calling phonenumbers for every new number
    (100,000 on a first build before the sync read them): one core busy, the other idle.
    ``start`` lists the numbers and shares them out to helper processes, one per core (at
    most one per PREFILL_MIN_NUMBERS numbers); ``store`` (called before the first model that
    reads state.phone_numbers) waits for them and writes the answers to the memo, so the
    numbers are read on every core while DuckDB builds the models before (a single helper was
    the build's longest wait: staging.patients waited seconds for it, on a machine with a core
    to spare).
    Too few numbers (an ordinary tick) start nothing: the model's function reads those. If a
    helper fails, its share is not stored and the function reads those numbers too: never a
    different answer, only a slower build.
    """

    def __init__(self, numbers: list[str], country: str):
        self.numbers, self.country = numbers, country
        shares = max(1, min(os.cpu_count() or 1, len(numbers) // PREFILL_MIN_NUMBERS))
        size = max(1, -(-len(numbers) // shares))  # ceiling: every number in a share
        self._helpers = [
            _Helper(numbers[i : i + size], country) for i in range(0, len(numbers), size)
        ]

    @classmethod
    def start(
        cls, con: duckdb.DuckDBPyConnection, country: str, since: datetime | None
    ) -> PhonePrefill:
        # An incremental build reads the patients raw_changes gives staging.patients (the
        # build has set changes_since to ``since``): by the ids the build listed, when it did.
        # A filter on synced_at read the JSON of every vector holding a change (~20 ms for the
        # 150 patients of a 5-minute change, every build, to find the few numbers not read).
        source = "raw.patients" if since is None else "raw_changes('raw.patients')"
        if since is not None:
            # The build listed the patients the sync wrote (at most CHANGED_IDS_MAX): at two
            # numbers a patient (most give one: their first Mobile entry; one without a Mobile
            # entry gives every entry), too few for a helper. Not looked for (~13 ms of JSON
            # every 5-minute build); the model reads any it needs itself, as it does below the
            # threshold: the same answers, at worst a slower build.
            listed = one(con, "SELECT len(relay_changed_ids('raw.patients'))")[0]
            if listed is not None and listed * 2 < PREFILL_MIN_NUMBERS:
                return cls([], country)
        numbers = [
            r[0]
            for r in con.execute(
                _UNREAD_MOBILES.replace("{source}", source), {"country": country}
            ).fetchall()
        ]
        return cls(numbers if len(numbers) >= PREFILL_MIN_NUMBERS else [], country)

    def store(self, con: duckdb.DuckDBPyConnection) -> int:
        """Wait for the helpers and write what they read; returns how many numbers (0 if
        none)."""
        helpers, self._helpers = self._helpers, []
        numbers: list[str] = []
        results: list[str | None] = []
        for helper in helpers:
            read = helper.result()
            if read:
                numbers += helper.numbers
                results += read
        if results:
            remember_mobiles(con, self.country, numbers, results)
        return len(results)

    def cancel(self) -> None:
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            helper.cancel()


class _Helper:
    """mobile_e164 of each number in another Python process (``python -m
    tasks.models.phones``, which imports phonenumbers only), fed and read through pipes, so
    numbers never reach a log."""

    def __init__(self, numbers: list[str], country: str):
        self.numbers = numbers
        self._out: list[str | None] | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(numbers, country), daemon=True)
        self._thread.start()

    def _run(self, numbers: list[str], country: str) -> None:
        try:
            with self._lock:
                if self._cancelled:
                    return
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "tasks.models.phones"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=PROJECT_ROOT,
                )
            stdout, _ = self._proc.communicate(json.dumps({"country": country, "numbers": numbers}))
            out = json.loads(stdout) if self._proc.returncode == 0 else None
            if isinstance(out, list) and len(out) == len(numbers):
                self._out = out
        except (OSError, ValueError):
            self._out = None

    def result(self) -> list[str | None] | None:
        self._thread.join()
        return self._out

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._proc and self._proc.poll() is None:
                self._proc.kill()
        self._thread.join()


class BuildMemo:
    """What the functions remember from build to build (the phone memo, state.phone_numbers),
    as one build sees it, what it tells raw_changes (the ids of the raw rows written since) and
    the table changed_values reads (relay_changed: made at the start, dropped at the commit).
    The runner calls it at fixed points without knowing what it keeps:
    ``start`` inside the build's transaction, ``before_model`` before each model, ``keep`` just
    before the commit, ``drop`` when the build is rolled back."""

    def __init__(self, country: str):
        self.country = country
        self._prefill = PhonePrefill([], country)

    def start(self, con: duckdb.DuckDBPyConnection, changes_since: datetime | None) -> None:
        """Forget numbers read outside a build; start reading the new ones (``changes_since``:
        patients the sync wrote since, all when None) on the other core when there are many;
        list the raw rows written since for raw_changes (``note_changed_ids``)."""
        take_parsed_mobiles()
        note_changed_ids(con, changes_since)
        con.execute(  # changed_values: this build's merges (keep_changed_values)
            "CREATE OR REPLACE TEMP TABLE relay_changed (relation TEXT, name TEXT, value TEXT)"
        )
        # The phone memo keeps numbers read in this country by this phonenumbers version only.
        con.execute(
            "DELETE FROM state.phone_numbers WHERE country <> ? OR parser <> ?",
            [self.country, PHONE_PARSER],
        )
        self._prefill = PhonePrefill.start(con, self.country, changes_since)

    def before_model(self, con: duckdb.DuckDBPyConnection, reads: tuple[str, ...]) -> None:
        """The helper's numbers reach the memo before the first model that reads it."""
        if "state.phone_numbers" in reads:
            self._prefill.store(con)

    def keep(self, con: duckdb.DuckDBPyConnection) -> None:
        """Store the numbers this build read in state.phone_numbers, with the build: a later
        build (a full one too) looks them up instead of parsing them again."""
        self._prefill.cancel()
        con.execute("DROP TABLE IF EXISTS relay_changed")
        parsed = [(n, e) for n, country, e in take_parsed_mobiles() if country == self.country]
        if parsed:
            remember_mobiles(con, self.country, [n for n, _ in parsed], [e for _, e in parsed])

    def drop(self) -> None:
        """The build rolled back: stop the helper, and remember nothing it read."""
        self._prefill.cancel()
        take_parsed_mobiles()


@functools.lru_cache(maxsize=65536)
def email_is_valid(email: str) -> bool:
    """email-validator's syntax check, and the shape dispatch sends to (addresses.EMAIL): an
    address it accepts that dispatch refuses (``a@münchen.de``, ``a@example.c``) was on the
    marketing list, counted in its size, and skipped at every send."""
    if address_problem("email", email):
        return False
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Make the macros and UDFs available on ``con`` (idempotent: a build registers them at each
    start, on a connection that may have them already: DuckDB refuses a second function of the
    same name, and that is all it costs; asking duckdb_functions() first read every function
    DuckDB has, 10-30 ms a build)."""
    con.execute("SET enable_progress_bar = false")
    _create_once(
        lambda: con.create_function(
            "relay_mobile_e164",
            _relay_mobile_e164,
            [VARCHAR, VARCHAR],
            VARCHAR,
            null_handling=FunctionNullHandling.SPECIAL,
        )
    )
    _create_once(
        lambda: con.create_function("relay_email_validator", email_is_valid, [VARCHAR], BOOLEAN)
    )
    register_macros(con)


def register_macros(con: duckdb.DuckDBPyConnection) -> None:
    """The macros only (``register`` makes them too): what the sync needs to list numbers
    (``read_new_mobiles``), without the UDFs, whose first registration imports numpy."""
    for macro in MACROS:
        con.execute(macro)


def _create_once(create: Callable[[], object]) -> None:
    try:
        create()
    except duckdb.NotImplementedException as exc:  # created on this connection before: kept
        if "already created" not in str(exc):
            raise
    except duckdb.CatalogException as exc:  # by another connection to the same database (the
        if "already exists" not in str(exc):  # fast lane's, a cursor): in its catalog, usable
            raise
