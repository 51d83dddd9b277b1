"""The candidate query as a newcomer reads it: ``trigger_sql`` prints any trigger's query, and
what it prints is SQL DuckDB accepts against the built models, with every value a parameter."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tasks.config import ClinicConfig, load_clinic
from tasks.errors import UserFacingError
from tasks.models import runner as models
from tasks.triggers.preview import trigger_sql
from tasks.warehouse import memory_db

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

# One of each shape the query takes: every event, timing, filter and exclusion kind.
SHAPES = [
    dict(name="booked", event="appointment_booked", timing="5 minutes after", channel="email",
         template="welcome", purpose="transactional",
         filters={"appointment_types": ["Admin - Insurance Patient", 12]}),
    dict(name="reminder", event="before_appointment", timing="24 hours before", channel="sms",
         template="reminder-24h", purpose="transactional", last_minute="skip",
         exclude={"categories": ["Admin Only"], "businesses": ["Admin"]}),
    dict(name="recall", event="after_appointment", timing="6 weeks after", channel="email",
         template="recall", purpose="marketing",
         filters={"practitioners": ["Sam Example"], "no_future_appointment": True,
                  "age": {"min": 18, "max": 65},
                  "appointment_count": {"min": 2, "max": 4, "types": ["Standard"]}}),
    dict(name="arrived", event="after_appointment", timing="1 hour after", channel="sms",
         template="reminder-24h", purpose="transactional", require_arrived=True),
    dict(name="sorry", event="cancelled", timing="2 hours after", channel="email",
         template="welcome", purpose="transactional",
         filters={"not_rebooked_since_cancelling": True}),
    dict(name="missed", event="did_not_arrive", timing="1 hour after", channel="sms",
         template="promo-sms", purpose="marketing"),
    dict(name="first", event="first_appointment", timing="2 days before", channel="email",
         template="welcome", purpose="transactional"),
    dict(name="third", event="nth_appointment", n=3, timing="1 hour after", channel="email",
         template="welcome", purpose="transactional"),
    dict(name="hello", event="patient_created", timing="10 minutes after", channel="email",
         template="welcome", purpose="transactional"),
]  # fmt: skip


@pytest.fixture(scope="module")
def built():
    """Every model built over an empty clinic: the schema the query reads."""
    con = memory_db()
    models.build(con, models.ListSettings(), now=NOW)
    yield con
    con.close()


def _prepares(con, sql: str) -> None:
    con.execute("PREPARE trigger_query AS " + sql)  # binds every table and column it names
    con.execute("DEALLOCATE trigger_query")


@pytest.mark.parametrize("name", [t.name for t in load_clinic("demo").triggers])
def test_every_demo_trigger_prints_sql_that_duckdb_accepts(built, name):
    _prepares(built, trigger_sql(load_clinic("demo"), name))


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_every_shape_of_trigger_prints_sql_that_duckdb_accepts(built, shape):
    config = ClinicConfig(clinic="test", name="Test Physio", triggers=[shape])
    _prepares(built, trigger_sql(config, shape["name"]))


def test_the_printed_query_reads_top_to_bottom_with_values_as_parameters():
    config = ClinicConfig(clinic="test", name="Test Physio", triggers=[SHAPES[1]])
    sql = trigger_sql(config, "reminder")
    steps = ["planned AS", "suppressed AS", "occasions AS", "timed AS", "expiring AS",
             "windowed AS", "SELECT\n"]  # fmt: skip
    assert [sql.index(s) for s in steps] == sorted(sql.index(s) for s in steps)
    query = sql.split("\nWITH\n", 1)[1]
    assert "Admin Only" not in query and "admin only" not in query
    assert "$exclude_categories_names" in query
    assert "--   $exclude_categories_names = ['admin only']" in sql


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_the_header_says_what_every_parameter_of_the_query_is(shape):
    # A newcomer reads the header, then the query: each $name the query uses is there, with its
    # value (the configuration's) or what it is bound to when the query runs ($now, $until...).
    config = ClinicConfig(clinic="test", name="Test Physio", triggers=[shape])
    header, _, query = trigger_sql(config, shape["name"]).partition("\nWITH\n")
    said = set(re.findall(r"^--   \$([a-z0-9_]+)\b", header, re.MULTILINE))
    used = set(re.findall(r"\$([a-z_][a-z0-9_]*)", query))
    assert sorted(used - said) == []


def test_an_unknown_trigger_name_lists_the_clinics_triggers():
    with pytest.raises(UserFacingError, match="No trigger 'nope' in .*Triggers: welcome-insurance"):
        trigger_sql(load_clinic("demo"), "nope")


def test_a_journey_or_campaign_name_says_what_it_is_and_where_its_audience_is_seen():
    # `relay preview trigger birthday` said only "No trigger 'birthday'": it is a journey.
    with pytest.raises(UserFacingError, match="'birthday' is a journey, not a trigger"):
        trigger_sql(load_clinic("demo"), "birthday")
    with pytest.raises(UserFacingError) as raised:
        trigger_sql(load_clinic("demo"), "recall-90-179")
    assert "is a campaign, not a trigger" in str(raised.value)
    assert "relay preview segment recall_90_179" in str(raised.value)


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_the_header_explains_every_parameter_its_words_name(shape):
    # "$until_us: $until in microseconds" leaves a reader asking what $until is: a name the
    # header's explanations use is itself explained there (the window's end, go-live...).
    config = ClinicConfig(clinic="test", name="Test Physio", triggers=[shape])
    header = trigger_sql(config, shape["name"]).partition("\nWITH\n")[0]
    said = set(re.findall(r"^--   \$([a-z0-9_]+)\b", header, re.MULTILINE))
    named = {
        name
        for line in header.splitlines()
        if line.startswith("--   $")
        for name in re.findall(r"\$([a-z_][a-z0-9_]*)", line.partition(":")[2])
    }
    assert sorted(named - said) == []
