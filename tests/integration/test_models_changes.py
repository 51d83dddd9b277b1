"""A 5-minute rebuild brings each list and segment to its new rows by difference, and records who
joined and left from the rows it took out and put in, not by comparing every member again
(issue 16). It must end exactly where a full rebuild and a full comparison do: two databases
synced from the same sandbox clinic, one built as ticks build it, the other in full every time,
through busy change sets (new, edited, archived, merged and deleted patients, bookings,
cancellations), an unsubscribe and a clock that jumps days ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.config import load_clinic
from tasks.models import checks, membership
from tasks.models import runner as models
from tasks.warehouse import one, open_db
from tests.integration.test_models_sandbox import sync, table

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clinic():
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=41, patients=400, start=START)


@pytest.fixture
def server(clinic):
    from sandbox.cliniko import SandboxServer

    with SandboxServer(clinic, rate_limit=None) as running:
        yield running


def audiences(con) -> dict[str, list[tuple]]:
    """Everything membership leaves behind, and every list and segment table."""
    out = {
        "events": table(
            con,
            "state.membership_events",
            "audience, member_key, event, occurred_at",
            "event_id, build_id",
        ),
        "members": table(con, "state.audience_members", "audience, member_key"),
        "audiences": table(con, "state.audiences", "audience", "first_build_id"),
    }
    for (relation,) in con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE schema_name IN ('marts', 'segments') AND NOT temporary ORDER BY 1"
    ).fetchall():
        # which build wrote a row (marts.appointments.refreshed_by) differs by design
        columns = [d[0] for d in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]
        kept = ", ".join(f'"{c}"' for c in columns if c != "refreshed_by")
        out[relation] = sorted(con.execute(f"SELECT {kept} FROM {relation}").fetchall(), key=repr)
    return out


def unsubscribe(con, now: datetime) -> None:
    """An unsubscribe click for someone on the email list (the first subscribed address)."""
    con.execute(
        "INSERT INTO state.suppressions (channel, address, action, reason, source, occurred_at) "
        "SELECT 'email', min(email), 'suppress', 'unsubscribed', 'operator', ? "
        "FROM marts.email_marketing_list WHERE status = 'subscribed'",
        [now],
    )


def test_rebuilds_by_difference_end_where_full_rebuilds_do(tmp_path, server, clinic, monkeypatch):
    settings = models.ListSettings.from_config(load_clinic("demo"))
    noted: list[set[str]] = []
    full_compare = membership.MemberChanges.note

    def build(con, now, *, full: bool) -> None:
        if full:  # the reference: every model in full, every audience compared member by member
            monkeypatch.setattr(membership.MemberChanges, "note", lambda self, relation: None)
        try:
            result = models.build(con, settings, now=now, full_refresh=full)
        finally:
            monkeypatch.setattr(membership.MemberChanges, "note", full_compare)
        for relation, rows in result.rows.items():  # from what the statements returned
            counted = None if rows is None else one(con, f"SELECT count(*) FROM {relation}")[0]
            assert rows == counted, relation
        for audience, count in result.audiences.items():  # sizes: recorded, or before +- events
            members = "SELECT count(*) FROM state.audience_members WHERE audience = ?"
            assert count["size"] == one(con, members, [audience])[0], audience
        # data tests run over the rows the build wrote (tasks/models/checks.py) passed: so does
        # every data test over every row
        assert set(models.run_tests(con).values()) == {0}

    over_new_rows = checks._over_new_rows
    tested_new_rows: list[str] = []

    def spying_over_new_rows(con, test, *args):
        sql = over_new_rows(con, test, *args)
        if sql is not None:
            tested_new_rows.append(test.file)
        return sql

    monkeypatch.setattr(checks, "_over_new_rows", spying_over_new_rows)

    finish = models.ModelBuild.finish

    def noting_finish(self):
        noted.append(set(self.changes.noted))
        return finish(self)

    monkeypatch.setattr(models.ModelBuild, "finish", noting_finish)

    # (the clinic's changes, then the build's clock ahead of the clinic's): 5 minutes, an hour,
    # 5 minutes with an unsubscribe, then the clock 3 days ahead (ages, recall bands, the
    # active-patient limit and upcoming appointments move with it), and 5 minutes more
    steps = [(timedelta(minutes=5), 0), (timedelta(hours=1), 0), (timedelta(minutes=5), 0)]
    steps += [(timedelta(minutes=5), 3), (timedelta(minutes=5), 3)]
    with open_db(tmp_path / "ticks.duckdb") as fast, open_db(tmp_path / "full.duckdb") as full:
        for con in (fast, full):
            sync(con, server, clinic)
            build(con, clinic.now, full=con is full)
        changed: dict[str, int] = {}
        for i, (step, days_ahead) in enumerate(steps):
            for kind, count in clinic.advance(step).items():
                changed[kind] = changed.get(kind, 0) + count
            for con in (fast, full):
                sync(con, server, clinic)
                if i == 2:
                    unsubscribe(con, clinic.now)
                build(con, clinic.now + timedelta(days=days_ahead), full=con is full)
            assert audiences(fast) == audiences(full), f"after step {i} ({step}, {days_ahead})"
        # the change sets held what the comparison is about
        for kind in ("patients_updated", "archived", "merges", "hard_deletes", "cancellations"):
            assert changed.get(kind, 0) > 0, (kind, changed)
        assert audiences(fast)["events"], "people joined and left the audiences"
    # the ticks recorded membership from the rows their tables lost and gained
    assert any("marts.email_marketing_list" in n for n in noted)
    assert any(any(r.startswith("segments.") for r in n) for n in noted)
    # and ran data tests over the rows they wrote
    assert "sql/tests/appointments_have_a_known_status.sql" in tested_new_rows


def test_an_appointment_moved_to_another_patient_recomputes_the_patient_it_left(
    tmp_path, server, clinic
):
    """A front-desk correction: a visit booked under the wrong patient is moved to the right one
    in Cliniko, and nothing else of the first patient changes. Incremental models keyed by
    appointment see only the new patient in the new row; the patient it left (their visit
    count, last visit, numbering, segments) must be computed again too (replaced_patients)."""
    from sandbox.cliniko.store import link

    settings = models.ListSettings.from_config(load_clinic("demo"))
    with open_db(tmp_path / "ticks.duckdb") as fast, open_db(tmp_path / "full.duckdb") as full:
        for con in (fast, full):
            sync(con, server, clinic)
            models.build(con, settings, now=clinic.now, full_refresh=con is full)
        clinic.advance(timedelta(minutes=5))
        aid, old = fast.execute(
            "SELECT appointment_id, patient_id FROM marts.appointments "
            "JOIN segments.first_appointment USING (patient_id) "
            "WHERE appointment_kind = 'individual' AND is_visit ORDER BY 1 LIMIT 1"
        ).fetchone()
        (new,) = fast.execute("SELECT min(patient_id) FROM segments.loyal").fetchone()
        clinic.bulk_edit("individual_appointments", [aid], {"patient": link(f"patients/{new}")})
        for con in (fast, full):
            sync(con, server, clinic)
            models.build(con, settings, now=clinic.now, full_refresh=con is full)
        visits = "SELECT visit_count FROM marts.patients WHERE patient_id = ?"
        assert fast.execute(visits, [old]).fetchone() == full.execute(visits, [old]).fetchone()
        assert audiences(fast) == audiences(full)
