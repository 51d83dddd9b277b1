"""The marketing lists, segments and marts, each rule shown on a small hand-made clinic.

Raw rows are written the way the sync writes them (payload = what Cliniko sends, with its
quirks), then the real models are built on an in-memory DuckDB at a fixed clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tasks.models import runner as models
from tasks.warehouse import RAW_COLUMNS, memory_db

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
API = "https://api.au1.cliniko.com/v1"


def _link(resource: str, id_: int | None) -> dict | None:
    return None if id_ is None else {"links": {"self": f"{API}/{resource}/{id_}"}}


def _ts(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Clinic:
    """A clinic written into raw.* row by row; each write is stamped later than the last, as
    successive sync runs would be."""

    def __init__(self):
        self.con = memory_db()
        self._clock = NOW - timedelta(days=1)
        self.appointment_type(1, "Standard Consultation", "Physiotherapy")
        self.appointment_type(12, "Admin - Insurance Patient", "Admin Only")
        self.con.execute(
            "INSERT INTO raw.businesses VALUES (1, NULL, ?, ?, NULL)",
            [
                json.dumps(
                    {
                        "id": "1",
                        "business_name": "Main St",
                        "country_code": "AU",
                        "time_zone_identifier": "Australia/Perth",
                    }
                ),
                self._tick(),
            ],
        )

    def _tick(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def _write(self, table: str, id_: int, payload: dict) -> None:
        self.con.execute(
            f"INSERT OR REPLACE INTO raw.{table} {RAW_COLUMNS} VALUES (?, NULL, ?, ?, NULL)",
            [id_, json.dumps(payload), self._tick()],
        )

    def appointment_type(self, id_: int, name: str, category: str) -> None:
        self._write("appointment_types", id_, {"id": str(id_), "name": name, "category": category})

    def patient(
        self,
        id_: int,
        email: str | None = "",
        *,
        created: datetime = NOW - timedelta(days=100),
        mobile: str | None = None,
        archived: bool = False,
        email_opt_in: bool | None = None,
        sms_opt_in: bool | None = None,
        born: str = "1980-05-26",
    ) -> int:
        phones = [{"phone_type": "Home", "number": "03 9999 9999"}]
        if mobile:
            phones.append({"phone_type": "Mobile", "number": mobile})
        self._write(
            "patients",
            id_,
            {
                "id": str(id_),
                "first_name": f"Name{id_}",
                "email": f"patient{id_}@example.com" if email == "" else email,
                "created_at": _ts(created),
                "archived_at": _ts(NOW - timedelta(days=3)) if archived else "",
                "accepted_email_marketing": email_opt_in,
                "accepted_sms_marketing": sms_opt_in,
                "patient_phone_numbers": phones,
                "date_of_birth": born,
            },
        )
        return id_

    def appointment(
        self,
        id_: int,
        patient_id: int,
        starts: datetime,
        *,
        type_id: int = 1,
        cancelled: bool = False,
        did_not_arrive: bool = False,
        arrived: bool = False,
        archived: bool = False,
    ) -> None:
        self._write(
            "individual_appointments",
            id_,
            {
                "id": id_,  # ints and strings both occur in Cliniko's payloads
                "starts_at": _ts(starts),
                "ends_at": _ts(starts + timedelta(minutes=30)),
                "cancelled_at": _ts(starts - timedelta(days=1)) if cancelled else None,
                "did_not_arrive": did_not_arrive,
                "patient_arrived": arrived,
                "archived_at": _ts(NOW) if archived else "",
                "patient": _link("patients", patient_id),
                "appointment_type": _link("appointment_types", type_id),
                "business": _link("businesses", 1),
                "practitioner": _link("practitioners", 7),
            },
        )

    def visit(self, appointment_id: int, patient_id: int, days_ago: int) -> None:
        self.appointment(appointment_id, patient_id, NOW - timedelta(days=days_ago), arrived=True)

    def bounce(self, email: str, kind: str, n: int = 1) -> None:
        for _ in range(n):
            moment = self._tick()
            self.con.execute(
                "INSERT INTO state.email_bounces VALUES (?, ?, ?, ?, 'postmark')",
                [f"b-{moment.timestamp()}", email, kind, moment],
            )

    def suppression(
        self, channel: str, address: str, action: str = "suppress", reason: str = "unsubscribed"
    ) -> None:
        self.con.execute(
            "INSERT INTO state.suppressions (channel, address, action, reason, source, "
            "occurred_at) VALUES (?, ?, ?, ?, 'operator', ?)",
            [channel, address, action, reason, self._tick()],
        )

    def build(
        self, now: datetime = NOW, full_refresh: bool = False, **settings
    ) -> models.BuildResult:
        return models.build(
            self.con,
            models.ListSettings(**{"active_patient_months": 12, **settings}),
            now=now,
            full_refresh=full_refresh,
        )

    def email_row(self, email: str) -> dict:
        return self._row("marts.email_marketing_list", "email", email)

    def sms_row(self, mobile: str) -> dict:
        return self._row("marts.sms_marketing_list", "mobile_e164", mobile)

    def _row(self, table: str, key: str, value) -> dict:
        cur = self.con.execute(f"SELECT * FROM {table} WHERE {key} = ?", [value])
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def subscribed(self) -> set[str]:
        return {
            r[0]
            for r in self.con.execute(
                "SELECT email FROM marts.email_marketing_list WHERE status = 'subscribed'"
            ).fetchall()
        }

    def members(self, segment: str) -> set[int]:
        return {
            r[0] for r in self.con.execute(f"SELECT patient_id FROM segments.{segment}").fetchall()
        }


@pytest.fixture
def clinic():
    c = Clinic()
    yield c
    c.con.close()


# --- email marketing list ----------------------------------------------------------------------


def test_a_shared_email_is_kept_once_for_the_patient_seen_most_recently(clinic):
    clinic.patient(1, "Family@Example.com ")
    clinic.patient(2, "family@example.com")
    clinic.visit(100, 1, days_ago=200)
    clinic.visit(101, 2, days_ago=20)
    clinic.build()
    row = clinic.email_row("family@example.com")
    assert (row["patient_id"], row["patients_sharing"], row["status"]) == (2, 2, "subscribed")
    assert clinic.con.execute("SELECT count(*) FROM marts.email_marketing_list").fetchone()[0] == 1


def test_a_shared_address_and_number_go_to_the_latest_seen_then_oldest_record_then_lowest_id(
    clinic,
):
    """Each tie-break of the one patient kept per email address and per mobile number, on both
    lists: seen most recently (never seen last), then the oldest record, then the lowest id."""
    old, young = NOW - timedelta(days=200), NOW - timedelta(days=50)
    pairs = {  # address: (kept, other), each pair sharing an address and a mobile
        "seen@example.com": (41, 40),  # 41 seen 5 days ago, 40 50 days ago
        "never@example.com": (10, 11),  # 11 never seen: no visit, no record date
        "oldest@example.com": (21, 20),  # seen at the same moment: 21's record is older
        "lowest@example.com": (30, 31),  # the same in everything but the id
    }
    for n, (email, (kept, other)) in enumerate(pairs.items()):
        mobile = f"0412 000 00{n}"
        for patient in sorted((kept, other), reverse=True):
            created = {11: None, 21: old, 20: young}.get(patient, NOW - timedelta(days=100))
            clinic.patient(patient, email, created=created, mobile=mobile, sms_opt_in=True)
    clinic.visit(400, 41, days_ago=5)
    clinic.visit(401, 40, days_ago=50)
    clinic.visit(200, 21, days_ago=10)
    clinic.visit(201, 20, days_ago=10)
    clinic.build()
    for n, (email, (kept, _)) in enumerate(pairs.items()):
        email_row, sms_row = clinic.email_row(email), clinic.sms_row(f"+6141200000{n}")
        assert (email, email_row["patient_id"], email_row["patients_sharing"]) == (email, kept, 2)
        assert (email, sms_row["patient_id"], sms_row["patients_sharing"]) == (email, kept, 2)


def test_an_archived_patient_is_out_but_a_live_patient_sharing_the_email_keeps_it(clinic):
    clinic.patient(1, "alone@example.com", archived=True)
    clinic.patient(2, "shared@example.com", archived=True)
    clinic.patient(3, "shared@example.com")
    clinic.visit(100, 2, days_ago=1)  # seen more recently, but archived
    clinic.visit(101, 3, days_ago=90)
    clinic.build()
    assert clinic.email_row("alone@example.com")["status"] == "archived"
    shared = clinic.email_row("shared@example.com")
    assert (shared["status"], shared["patient_id"]) == ("subscribed", 3)


def test_an_invalid_email_is_out_with_its_reason(clinic):
    clinic.patient(1, "not-an-email@@example")
    clinic.build()
    row = clinic.email_row("not-an-email@@example")
    assert row["status"] == "invalid"
    assert "not valid" in row["reason"]


def test_a_hard_bounce_removes_an_address(clinic):
    clinic.patient(1, "gone@example.com")
    clinic.bounce("gone@example.com", "hard")
    clinic.build()
    assert clinic.email_row("gone@example.com")["status"] == "bounced"
    assert clinic.email_row("gone@example.com")["reason"] == "hard bounce"


def test_four_soft_bounces_stay_on_the_list_and_the_fifth_removes_the_address(clinic):
    clinic.patient(1, "full@example.com")
    clinic.bounce("full@example.com", "soft", 4)
    clinic.build()
    assert clinic.email_row("full@example.com")["status"] == "subscribed"
    clinic.bounce("full@example.com", "soft")
    clinic.build()
    row = clinic.email_row("full@example.com")
    assert (row["status"], row["soft_bounces"]) == ("bounced", 5)


def test_an_unsubscribe_takes_an_address_off_until_it_is_lifted(clinic):
    clinic.patient(1, "bye@example.com")
    clinic.suppression("email", "bye@example.com")
    clinic.build()
    assert clinic.email_row("bye@example.com")["status"] == "unsubscribed"
    clinic.suppression("email", "bye@example.com", action="lift", reason="opt_in")
    clinic.build()
    assert clinic.email_row("bye@example.com")["status"] == "subscribed"


def test_a_lapsed_patient_moves_to_removed_and_comes_back_after_a_new_visit(clinic):
    clinic.patient(1, "lapse@example.com", created=NOW - timedelta(days=900))
    clinic.visit(100, 1, days_ago=300)
    clinic.build()
    assert clinic.email_row("lapse@example.com")["status"] == "subscribed"

    clinic.build(now=NOW + timedelta(days=100))  # last visit is now 400 days ago
    row = clinic.email_row("lapse@example.com")
    assert row["status"] == "removed"
    assert "outside the 12-month active-patient limit" in row["reason"]

    clinic.visit(101, 1, days_ago=-99)  # a visit the day before the third build
    clinic.build(now=NOW + timedelta(days=100, hours=1))
    assert clinic.email_row("lapse@example.com")["status"] == "subscribed"
    events = clinic.con.execute(
        "SELECT event FROM state.membership_events WHERE audience = 'email_marketing_list' "
        "AND member_key = 'lapse@example.com' ORDER BY event_id"
    ).fetchall()
    assert [e[0] for e in events] == ["joined", "left", "joined"]


def test_a_patient_outside_the_limit_who_was_never_on_the_list_is_inactive_not_removed(clinic):
    clinic.patient(1, "old@example.com", created=NOW - timedelta(days=2000))
    clinic.build()
    assert clinic.email_row("old@example.com")["status"] == "inactive"
    clinic.build(active_patient_months=None)
    assert clinic.email_row("old@example.com")["status"] == "subscribed"


def test_clinikos_email_opt_in_is_honoured_only_when_the_setting_says_so(clinic):
    clinic.patient(1, "yes@example.com", email_opt_in=True)
    clinic.patient(2, "no@example.com", email_opt_in=False)
    clinic.patient(3, "unanswered@example.com", email_opt_in=None)
    clinic.build(honour_email_opt_in=False)
    assert clinic.subscribed() == {"yes@example.com", "no@example.com", "unanswered@example.com"}
    clinic.build(honour_email_opt_in=True)
    assert clinic.subscribed() == {"yes@example.com"}
    assert clinic.email_row("unanswered@example.com")["status"] == "not_opted_in"


def test_the_size_cap_keeps_the_most_recently_seen_first(clinic):
    for pid, days_ago in [(1, 50), (2, 5), (3, 20)]:
        clinic.patient(pid)
        clinic.visit(100 + pid, pid, days_ago=days_ago)
    clinic.build(list_size_cap=2)
    assert clinic.subscribed() == {"patient2@example.com", "patient3@example.com"}
    assert clinic.email_row("patient1@example.com")["status"] == "over_cap"


def test_the_size_cap_can_keep_the_longest_standing_patients_first(clinic):
    for pid, created_days_ago in [(1, 300), (2, 100), (3, 200)]:
        clinic.patient(pid, created=NOW - timedelta(days=created_days_ago))
    clinic.build(list_size_cap=2, cap_order="earliest_created")
    assert clinic.subscribed() == {"patient1@example.com", "patient3@example.com"}


def test_the_list_size_report_gives_the_size_under_every_active_patient_limit(clinic):
    for pid, days_ago in [(1, 30), (2, 250), (3, 450), (4, 650), (5, 1000)]:
        clinic.patient(pid, created=NOW - timedelta(days=1500))
        clinic.visit(100 + pid, pid, days_ago=days_ago)
    clinic.patient(6, archived=True)
    clinic.build(list_size_cap=3)
    sizes = dict(
        clinic.con.execute(
            "SELECT active_patient_limit, list_size FROM marts.list_size_by_limit"
        ).fetchall()
    )
    assert sizes == {"6": 1, "12": 2, "18": 3, "24": 4, "all": 5}
    current = clinic.con.execute(
        "SELECT active_patient_limit, list_size_after_cap FROM marts.list_size_by_limit "
        "WHERE is_current_setting"
    ).fetchall()
    assert current == [("12", 2)]


# --- SMS marketing list ------------------------------------------------------------------------


def test_sms_list_needs_consent_and_a_valid_mobile_normalised_to_e164(clinic):
    clinic.patient(1, mobile="0412 345 678", sms_opt_in=True)
    clinic.patient(2, mobile="61412000111", sms_opt_in=None)
    clinic.patient(3, mobile="03 9999 1234", sms_opt_in=True)  # a landline typed as mobile
    clinic.build()
    assert clinic.sms_row("+61412345678")["status"] == "subscribed"
    assert clinic.sms_row("+61412000111")["status"] == "no_consent"
    mobiles = clinic.con.execute("SELECT patient_id, mobile_e164 FROM marts.patients").fetchall()
    assert dict(mobiles)[3] is None


def test_a_stop_reply_opts_a_number_out_of_sms_marketing(clinic):
    clinic.patient(1, mobile="+61 412 345 678", sms_opt_in=True)
    clinic.suppression("sms", "+61412345678", reason="stop")
    clinic.build()
    row = clinic.sms_row("+61412345678")
    assert (row["status"], row["reason"]) == ("opted_out", "suppressed: stop")


# --- appointments, segments, membership --------------------------------------------------------


def test_appointment_status_follows_the_precedence_and_kept_ones_are_numbered(clinic):
    clinic.patient(1)
    clinic.appointment(10, 1, NOW - timedelta(days=30), arrived=True)
    clinic.appointment(11, 1, NOW - timedelta(days=20), cancelled=True, arrived=True)
    clinic.appointment(12, 1, NOW - timedelta(days=10), did_not_arrive=True)
    clinic.appointment(13, 1, NOW - timedelta(days=5))
    clinic.appointment(14, 1, NOW + timedelta(days=5))
    clinic.appointment(15, 1, NOW + timedelta(days=6), archived=True, cancelled=True)
    clinic.build()
    rows = clinic.con.execute(
        "SELECT appointment_id, status, sequence_number, business_time_zone, "
        "strftime(starts_at_local, '%H:%M') FROM marts.appointments ORDER BY appointment_id"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (10, "arrived", 1),
        (11, "cancelled", None),
        (12, "did_not_arrive", None),
        (13, "unmarked", 2),
        (14, "upcoming", 3),
        (15, "archived", None),
    ]
    assert rows[0][3] == "Australia/Perth" and rows[0][4] == "17:00"  # 09:00 UTC in Perth
    patient = clinic.con.execute(
        "SELECT visit_count, appointment_count, next_appointment_id FROM marts.patients"
    ).fetchone()
    assert patient == (2, 3, 14)


def test_a_patient_booked_into_the_dummy_admin_type_lands_in_its_segment(clinic):
    """Seed 000: the admin-only type is a tag; segment authors can still see and target it, and
    it numbers only among its own type."""
    clinic.patient(1)
    clinic.patient(2)
    clinic.appointment(10, 1, NOW - timedelta(hours=2), type_id=12)
    clinic.visit(11, 2, days_ago=3)
    clinic.build()
    assert clinic.members("attended_admin_insurance_patient") == {1}
    dummy = clinic.con.execute(
        "SELECT category, is_tag, sequence_number, type_sequence_number FROM marts.appointments "
        "WHERE appointment_id = 10"
    ).fetchone()
    assert dummy == ("Admin Only", True, None, 1)
    by_category = clinic.con.execute(
        "SELECT visits_by_category['Admin Only'] FROM marts.patients WHERE patient_id = 1"
    ).fetchone()[0]
    assert by_category == 1


def test_recall_bands_use_days_since_the_last_visit_and_skip_patients_booked_again(clinic):
    for pid, days_ago in [(1, 10), (2, 45), (3, 45), (4, 200)]:
        clinic.patient(pid)
        clinic.visit(100 + pid, pid, days_ago=days_ago)
    clinic.appointment(200, 3, NOW + timedelta(days=2))
    clinic.build()
    assert clinic.members("recall_7_13") == {1}
    assert clinic.members("recall_30_59") == {2}
    assert clinic.members("recall_180_plus") == {4}
    assert clinic.members("upcoming_appointment") == {3}


def test_a_new_segments_first_members_are_marked_initial_and_later_joiners_are_not(clinic):
    clinic.patient(1)
    clinic.visit(100, 1, days_ago=20)
    clinic.build()
    clinic.patient(2)
    clinic.visit(101, 2, days_ago=1)
    clinic.build()
    events = clinic.con.execute(
        "SELECT patient_id, event, initial FROM state.membership_events "
        "WHERE audience = 'segments.active_last_90_days' ORDER BY event_id"
    ).fetchall()
    assert events == [(1, "joined", True), (2, "joined", False)]


def test_staging_reads_only_what_the_sync_wrote_since_the_last_build(clinic):
    """Incremental staging: a payload changed without a new synced_at is not re-read; a full
    refresh re-reads everything."""
    clinic.patient(1, "before@example.com")
    clinic.build()
    clinic.con.execute(
        'UPDATE raw.patients SET payload = json_merge_patch(payload, \'{"email": '
        '"after@example.com"}\')'
    )
    clinic.build()
    assert clinic.subscribed() == {"before@example.com"}
    models.build(clinic.con, models.ListSettings(), now=NOW, full_refresh=True)
    assert clinic.subscribed() == {"after@example.com"}


def _snapshot(con, relation: str, order: str) -> list[tuple]:
    # refreshed_by says which build recomputed a row: the one column that may differ
    columns = "* EXCLUDE (refreshed_by)" if relation == "marts.appointments" else "*"
    return con.execute(f"SELECT {columns} FROM {relation} ORDER BY {order}").fetchall()


def test_incremental_builds_end_with_the_same_tables_as_a_full_rebuild(clinic):
    for pid in range(1, 6):
        clinic.patient(pid, mobile=f"04123456{pid:02d}", sms_opt_in=True)
        clinic.visit(100 + pid, pid, days_ago=10 * pid)
        clinic.appointment(200 + pid, pid, NOW + timedelta(hours=pid))
    clinic.build()

    later = NOW + timedelta(hours=3)  # appointments 201-203 have started since
    clinic.appointment(204, 4, NOW + timedelta(hours=4), cancelled=True)
    clinic.appointment(300, 5, NOW - timedelta(days=400), arrived=True)  # an earlier visit
    clinic._write(
        "patients",
        2,
        {
            "id": "2",
            "email": "patient2@example.com",
            "archived_at": _ts(NOW),
            "merged_at": _ts(NOW),
            "merged_with_patient": _link("patients", 1),
        },
    )
    clinic.con.execute("UPDATE raw.patients SET removed_at = ? WHERE id = 3", [clinic._tick()])
    clinic.appointment_type(1, "Standard Consultation", "Physio (renamed)")
    clinic.build(now=later)
    incremental = {
        "marts.appointments": _snapshot(clinic.con, "marts.appointments", "appointment_id"),
        "marts.patients": _snapshot(clinic.con, "marts.patients", "patient_id"),
        "marts.email_marketing_list": _snapshot(clinic.con, "marts.email_marketing_list", "email"),
        "marts.sms_marketing_list": _snapshot(
            clinic.con, "marts.sms_marketing_list", "mobile_e164"
        ),
    }
    models.build(
        clinic.con, models.ListSettings(active_patient_months=12), now=later, full_refresh=True
    )
    for relation, rows in incremental.items():
        order = {"marts.appointments": "appointment_id", "marts.patients": "patient_id"}.get(
            relation, "2"
        )
        assert _snapshot(clinic.con, relation, order) == rows, relation
    # and the changes did land: merged visits moved to patient 1, the deleted patient is gone
    moved = clinic.con.execute(
        "SELECT patient_id, sequence_number FROM marts.appointments WHERE appointment_id = 102"
    ).fetchone()
    assert moved == (1, 1)
    assert clinic.con.execute(
        "SELECT status FROM marts.appointments WHERE appointment_id = 203"
    ).fetchone() == ("deleted",)
    assert clinic.con.execute(
        "SELECT status FROM marts.appointments WHERE appointment_id = 201"
    ).fetchone() == ("unmarked",)


def test_an_incremental_build_ages_a_patient_on_their_birthday_without_a_sync(clinic):
    # marts.patients is kept incrementally: a birthday changes a row nobody synced
    clinic.patient(1, born="1980-11-23")
    clinic.patient(2, born="1980-01-01")
    clinic.build()
    ages = "SELECT patient_id, age FROM marts.patients ORDER BY patient_id"
    assert clinic.con.execute(ages).fetchall() == [(1, 45), (2, 46)]
    clinic.build(now=NOW + timedelta(days=1))
    assert clinic.con.execute(ages).fetchall() == [(1, 46), (2, 46)]


def test_age_turns_at_midnight_in_the_clinics_time_zone_not_in_utc(clinic):
    """Ages were counted at the UTC date: a Melbourne patient turned 46 at 11:00 on their
    birthday, a New York one a day early, at 19:00 (age segments, a campaign for adults)."""
    clinic.patient(1, born="1980-11-23")
    ages = "SELECT age FROM marts.patients"
    clinic.build()  # 2026-11-22 20:00 in Melbourne
    assert clinic.con.execute(ages).fetchall() == [(45,)]
    clinic.build(now=NOW + timedelta(hours=5))  # 2026-11-23 01:00 in Melbourne, still 22nd UTC
    assert clinic.con.execute(ages).fetchall() == [(46,)]
    new_york = {"clinic_time_zone": "America/New_York"}
    clinic.build(now=NOW + timedelta(hours=17), full_refresh=True, **new_york)  # 22nd, 21:00
    assert clinic.con.execute(ages).fetchall() == [(45,)]
    clinic.build(now=NOW + timedelta(hours=20), **new_york)  # 23rd, 00:00 in New York
    assert clinic.con.execute(ages).fetchall() == [(46,)]


# --- seed 000: tags are not visits (clinic.yaml tag_categories) --------------------------------

TAG = 12  # "Admin - Insurance Patient", category "Admin Only": a tag by default


def test_a_patient_lapsed_three_years_and_tagged_yesterday_stays_off_the_marketing_list(clinic):
    clinic.patient(1, "lapsed@example.com", created=NOW - timedelta(days=5 * 365))
    clinic.visit(100, 1, days_ago=3 * 365)
    clinic.appointment(101, 1, NOW - timedelta(days=1), type_id=TAG, arrived=True)
    clinic.build()
    row = clinic.email_row("lapsed@example.com")
    assert row["status"] == "inactive"
    assert row["last_seen_at"] == NOW - timedelta(days=3 * 365)
    assert clinic.members("recall_180_plus") == {1}  # still due a recall: the tag is no visit
    assert clinic.members("active_last_90_days") == set()
    assert clinic.members("attended_admin_insurance_patient") == {1}  # and still tagged


def test_a_tag_counts_toward_no_visit_segment_and_is_no_booking(clinic):
    clinic.patient(1)  # ten visits and a tag: not loyal (more than ten visits)
    for i in range(10):
        clinic.visit(100 + i, 1, days_ago=10 + i)
    clinic.appointment(110, 1, NOW - timedelta(days=5), type_id=TAG, arrived=True)
    clinic.patient(2)  # only a tag: no first appointment, not new, not awaiting a recall
    clinic.appointment(200, 2, NOW - timedelta(days=5), type_id=TAG)
    clinic.patient(3)  # tagged long ago, first visit last month: new, and on a first appointment
    clinic.appointment(300, 3, NOW - timedelta(days=300), type_id=TAG, arrived=True)
    clinic.visit(301, 3, days_ago=30)
    clinic.patient(4)  # a visit 60 days ago and a tag booked for next week: due a recall
    clinic.visit(400, 4, days_ago=60)
    clinic.appointment(401, 4, NOW + timedelta(days=7), type_id=TAG)
    clinic.build()
    assert 1 not in clinic.members("loyal")
    assert clinic.members("first_appointment") == {3, 4}
    assert clinic.members("new_patients") == {1, 3, 4}  # first visits within 6 months
    assert clinic.members("recall_60_89") == {4}
    assert 4 in clinic.members("no_upcoming_appointment")
    assert clinic.members("upcoming_appointment") == set()
    assert 2 not in clinic.members("no_upcoming_appointment")
    counts = clinic.con.execute(
        "SELECT patient_id, visit_count, appointment_count, first_visit_at, next_appointment_id "
        "FROM marts.patients ORDER BY patient_id"
    ).fetchall()
    assert [c[:3] for c in counts] == [(1, 10, 10), (2, 0, 0), (3, 1, 1), (4, 1, 1)]
    assert counts[2][3] == NOW - timedelta(days=30) and counts[3][4] is None
    assert clinic.members("attended_admin_insurance_patient") == {1, 2, 3, 4}


def test_the_tag_categories_are_matched_like_category_names_and_a_change_rebuilds(clinic):
    """clinic.yaml's tag_categories ignore case and spaces, as trigger category names do; a
    changed setting recomputes what the incremental marts had computed with the old one."""
    from dataclasses import replace

    from tasks.config import ClinicConfig

    clinic.patient(1, "lapsed@example.com", created=NOW - timedelta(days=5 * 365))
    clinic.visit(100, 1, days_ago=3 * 365)
    clinic.appointment(101, 1, NOW - timedelta(days=1), type_id=TAG, arrived=True)
    config = ClinicConfig(clinic="x", name="X", tag_categories=["  admin ONLY "])
    settings = replace(models.ListSettings.from_config(config), active_patient_months=12)
    models.build(clinic.con, settings, now=NOW)
    assert clinic.email_row("lapsed@example.com")["status"] == "inactive"

    untagged = replace(settings, tag_categories=())  # a clinic that declares no tags
    models.build(clinic.con, untagged, now=NOW + timedelta(minutes=5))
    assert clinic.email_row("lapsed@example.com")["status"] == "subscribed"
    incremental = _snapshot(clinic.con, "marts.patients", "patient_id")
    models.build(clinic.con, untagged, now=NOW + timedelta(minutes=5), full_refresh=True)
    assert _snapshot(clinic.con, "marts.patients", "patient_id") == incremental


def test_the_next_appointment_is_one_appointment_even_when_two_start_at_the_same_moment(clinic):
    """Two upcoming appointments at the same moment: the next appointment's id, type and time
    all come from the one numbered first (start, kind, id), never a mix of the two."""
    clinic.appointment_type(2, "Follow-up", "Physiotherapy")
    moment = NOW + timedelta(days=3)
    for pid in range(1, 41):
        clinic.patient(pid)
        # the higher id is written first and carries the other type
        clinic.appointment(1000 + 2 * pid + 1, pid, moment, type_id=1 + pid % 2)
        clinic.appointment(1000 + 2 * pid, pid, moment, type_id=2 - pid % 2)
    clinic.build()
    rows = clinic.con.execute(
        "SELECT patient_id, next_appointment_id, next_appointment_kind, next_appointment_type_id "
        "FROM marts.patients ORDER BY patient_id"
    ).fetchall()
    assert rows == [(pid, 1000 + 2 * pid, "individual", 2 - pid % 2) for pid in range(1, 41)]


def test_a_class_and_an_appointment_at_the_same_moment_are_numbered_class_first(clinic):
    """Sequence numbers order by start, then kind (a class's attendee before an individual
    appointment), then id: the order marts.appointments sorts by, however it sorts."""
    moment = NOW + timedelta(days=2)
    clinic.patient(1)
    clinic.appointment(5, 1, moment)
    clinic._write(
        "group_appointments",
        70,
        {
            "id": "70",
            "starts_at": _ts(moment),
            "ends_at": _ts(moment + timedelta(hours=1)),
            "appointment_type": _link("appointment_types", 1),
            "business": _link("businesses", 1),
            "practitioner": _link("practitioners", 7),
        },
    )
    clinic._write(
        "attendees",
        9,
        {"id": "9", "patient": _link("patients", 1), "booking": _link("bookings", 70)},
    )
    clinic.build()
    rows = clinic.con.execute(
        "SELECT appointment_kind, appointment_id, sequence_number, type_sequence_number "
        "FROM marts.appointments ORDER BY sequence_number"
    ).fetchall()
    assert rows == [("group", 9, 1, 1), ("individual", 5, 2, 2)]
    assert clinic.con.execute(
        "SELECT next_appointment_kind, next_appointment_id FROM marts.patients"
    ).fetchone() == ("group", 9)


def test_a_segment_keeping_a_patient_deleted_since_the_last_build_is_held(tmp_path):
    """A segment brought to its new rows by difference had only the rows that came checked: a
    row kept while its patient was deleted in Cliniko went on naming a patient marts.patients no
    longer has (a fresh build, and `relay preview segment`, refuse it). Found by the issue 3
    re-check."""
    import shutil
    from pathlib import Path

    sql = tmp_path / "sql"
    shutil.copytree(Path(__file__).parents[3] / "sql", sql)
    (sql / "segments" / "ever_booked_standard.sql").write_text(
        "select distinct patient_id from marts.appointments where appointment_type_id = 1\n"
    )
    clinic = Clinic()
    clinic.patient(1), clinic.patient(2)
    clinic.visit(101, 1, 10), clinic.visit(102, 2, 20)
    settings = models.ListSettings(active_patient_months=12)
    models.build(clinic.con, settings, sql_dir=sql, now=NOW)
    clinic.con.execute(
        "UPDATE raw.patients SET removed_at = ?, synced_at = ? WHERE id = 2",
        [clinic._tick(), clinic._tick()],
    )
    with pytest.raises(
        models.BuildFailed,
        match=r"segments/ever_booked_standard.sql: 1 row\(s\) with a patient_id that is not a",
    ):
        models.build(clinic.con, settings, sql_dir=sql, now=NOW)
    assert clinic.members("ever_booked_standard") == {1, 2}  # its last good rows
    latest = models.latest_build(clinic.con)
    assert latest["status"] == "succeeded"
    assert set(latest["held"]) == {"segments.ever_booked_standard"}  # the others went on
    assert clinic.members("upcoming_appointment") == set()
