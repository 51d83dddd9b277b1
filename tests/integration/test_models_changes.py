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


LISTS = ("marts.email_marketing_list", "marts.sms_marketing_list")


def test_the_lists_recompute_what_changed_and_end_where_full_rebuilds_do(
    tmp_path, server, clinic, monkeypatch
):
    """The marketing lists recompute only the addresses and numbers a build's changes reach
    (changed_values of marts.patient_rows, suppressions and bounces, the clock), yet every row
    and every membership event is what a full rebuild gives: a patient moving to a shared
    address and out of it (the kept patient, and another), a number moving, a bounce, an
    unsubscribe, a STOP and a lift arriving, a subscribed patient lapsing past the
    active-patient limit while nothing of theirs changes, and a size cap (issue 16)."""
    from dataclasses import replace

    from tasks.models import tables

    settings = models.ListSettings.from_config(load_clinic("demo"))
    assert settings.active_patient_months and settings.list_size_cap is None
    selected: dict[str, int] = {}
    merge = tables.merge

    def counting_merge(con, model, *args, **kwargs):
        if model.relation in LISTS:
            selected[model.relation] = one(con, f"SELECT count(*) FROM ({model.sql})")[0]
        return merge(con, model, *args, **kwargs)

    monkeypatch.setattr(tables, "merge", counting_merge)

    def build_both(fast, full, now, list_settings=settings, edit=None) -> None:
        clinic.advance(timedelta(minutes=5))
        if edit:
            edit()
        for con in (fast, full):
            sync(con, server, clinic)
        selected.clear()  # what the ticks' merges select (a full rebuild merges nothing)
        for con in (fast, full):
            models.build(con, list_settings, now=now, full_refresh=con is full)
        assert audiences(fast) == audiences(full)

    def rows(con, sql: str, *args) -> list[tuple]:
        return con.execute(sql, list(args)).fetchall()

    def moved(patient_ids, changes):
        return lambda: clinic.bulk_edit("patients", patient_ids, changes)

    with open_db(tmp_path / "ticks.duckdb") as fast, open_db(tmp_path / "full.duckdb") as full:
        for con in (fast, full):
            sync(con, server, clinic)
            models.build(con, settings, now=clinic.now, full_refresh=con is full)
        email = "SELECT email, patient_id FROM marts.email_marketing_list "
        (a, ea), (b, eb), (c, ec) = [
            (p, e)
            for e, p in rows(
                fast,
                email + "WHERE status = 'subscribed' AND patients_sharing = 1 ORDER BY 2 LIMIT 3",
            )
        ]
        sms = "SELECT mobile_e164, patient_id FROM marts.sms_marketing_list "
        (n1, p1), (n2, p2) = rows(
            fast, sms + "WHERE status = 'subscribed' AND patients_sharing = 1 ORDER BY 2 LIMIT 2"
        )

        # b and c move to a's address (b's and c's addresses are nobody's any more); p2 takes
        # p1's number
        def share():
            clinic.bulk_edit("patients", [b, c], {"email": f" {ea.upper()}"})
            mobile = [{"phone_type": "Mobile", "number": n1}]
            clinic.bulk_edit("patients", [p2], {"patient_phone_numbers": mobile})

        build_both(fast, full, clinic.now, edit=share)
        assert rows(fast, email + "WHERE email IN (?, ?)", eb, ec) == []
        shared = "SELECT patients_sharing, patient_id FROM marts.email_marketing_list "
        ((sharing, kept),) = rows(fast, shared + "WHERE email = ?", ea)
        assert sharing == 3
        assert set(selected) == set(LISTS)  # the lists were recomputed in part only
        for table, count in selected.items():
            assert 0 < count < one(fast, f"SELECT count(*) FROM {table}")[0], table

        # a patient who shares the address but is not the one kept leaves it; then the kept one
        other = max({a, b, c} - {kept})
        build_both(fast, full, clinic.now, edit=moved([other], {"email": f"x{other}@example.org"}))
        assert rows(fast, shared + "WHERE email = ?", ea) == [(2, kept)]
        build_both(fast, full, clinic.now, edit=moved([kept], {"email": f"x{kept}@example.org"}))
        assert rows(fast, shared + "WHERE email = ?", ea)[0][0] == 1

        # a hard bounce, an unsubscribe and a STOP arrive; then the unsubscribe is lifted
        def feedback(action):
            for con in (fast, full):
                if action == "suppress":
                    con.execute(
                        "INSERT INTO state.email_bounces VALUES ('b1', ?, 'hard', ?, 'postmark')",
                        [ea, clinic.now],
                    )
                con.execute(
                    "INSERT INTO state.suppressions (channel, address, action, reason, source, "
                    "occurred_at) VALUES ('email', ?, ?, 'unsubscribed', 'operator', ?), "
                    "('sms', ?, ?, 'stop', 'twilio', ?)",
                    [f"x{other}@example.org", action, clinic.now, n1, action, clinic.now],
                )

        for action in ("suppress", "lift"):
            feedback(action)
            build_both(fast, full, clinic.now)
        status = "SELECT status FROM marts.email_marketing_list WHERE email = ?"
        assert rows(fast, status, ea) == [("bounced",)]

        # the clock: the subscribed patient seen longest ago lapses; nothing of theirs changed
        lapsing, limit = one(
            fast,
            "SELECT l.patient_id, l.last_seen_at + to_months(?) + INTERVAL 1 HOUR "
            "FROM marts.email_marketing_list l JOIN marts.patients p USING (patient_id) "
            "WHERE l.status = 'subscribed' AND (p.date_of_birth IS NULL OR "
            "date_part('year', age(?::DATE, p.date_of_birth)) = date_part('year', age("
            "(l.last_seen_at + to_months(?) + INTERVAL 1 HOUR)::DATE, p.date_of_birth))) "
            "ORDER BY l.last_seen_at, 1 LIMIT 1",
            [settings.active_patient_months, clinic.now, settings.active_patient_months],
        )
        later = max(limit, clinic.now + timedelta(minutes=5))
        build_both(fast, full, later)
        assert rows(
            fast, "SELECT status FROM marts.email_marketing_list WHERE patient_id = ?", lapsing
        ) == [("removed",)]

        # a size cap: the build after it takes effect moves people across it
        subscribed = "SELECT count(*) FROM marts.email_marketing_list WHERE status = 'subscribed'"
        capped = replace(settings, list_size_cap=one(fast, subscribed)[0] - 3)
        build_both(fast, full, later, capped)
        (first,) = one(
            fast,
            "SELECT min(patient_id) FROM marts.email_marketing_list WHERE status = 'subscribed'",
        )
        archived = {"archived_at": clinic.now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        build_both(fast, full, later, capped, edit=moved([first], archived))
        assert one(fast, subscribed)[0] == capped.list_size_cap
