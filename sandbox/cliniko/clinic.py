"""A generated Cliniko account and the clock that keeps changing it.

``SandboxClinic.generate`` builds a clinic deterministically from (seed, sizes, start): 2-4
businesses in different time zones (sometimes a separate "Admin" business, seed 000), active and
inactive practitioners, appointment types in categories including "Admin Only" with the
"Admin - Insurance Patient" tagging type, patients with the variety real data has, three years of
appointments and classes, and eight weeks of future bookings.

``advance`` moves the clock and makes the changes an incremental sync must find, at rates per
simulated minute that scale with the clinic's size; every changed row gets an ``updated_at``
inside the interval. Merges archive the merged-away patient with ``merged_at`` and a
``merged_with_patient`` link and re-point its appointments to the survivor; cancelled class
places keep their attendee row with ``cancelled_at``; hard deletes remove a row from every
endpoint. ``lock`` guards all state: the server answers from its
own thread while tests call ``advance``.
"""

from __future__ import annotations

import math
import random
import threading
from bisect import bisect_right
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import orjson

from sandbox.cliniko import records
from sandbox.cliniko.patient_extras import EXTRA_RATES, PatientExtras
from sandbox.cliniko.spec import SPECS
from sandbox.cliniko.store import BASE_BYTES, ID_MASK, Row, Table, dump, fmt_ts, link, link_id
from sandbox.cliniko.world import (
    ADMIN_CATEGORY,
    ADMIN_TAG_TYPE,
    BUSINESS_NAMES,
    CATALOGUE,
    CLINICAL,
    DAY,
    DESIGNATION,
    MINUTE,
    PLACES,
    AppointmentType,
    Business,
    Catalogue,
    Staff,
    appointment_slot,
    class_slots_after,
    class_timetable,
    poisson,
)

HISTORY_DAYS = 3 * 365
FUTURE_DAYS = 56

# Changes per simulated minute per 1,000 patients (of the generated size). Bookings are frequent
# on purpose: a one-minute advance of a 500-patient clinic should usually create at least one.
CHANGE_RATES = {
    "patients_created": 1.0,
    "patients_updated": 0.8,
    "bookings": 6.0,
    "class_bookings": 1.0,
    "reschedules": 1.5,
    "cancellations": 1.5,
    "arrivals": 3.0,
    "no_shows": 0.5,
    "archived": 0.4,
    "merges": 0.15,
    "hard_deletes": 0.3,
}
CLASS_SHARE = 0.7  # of a Pilates patient's visits after the first, the share that are classes
CATEGORY_MIX = (("Physiotherapy", 60), ("Massage", 22), ("Pilates", 18))
CANCEL_NOTES = (None, "Called the clinic", "Cancelled online", "Left a voicemail")
REMINDER_TYPES = (("SMS & Email", 55), ("SMS", 20), ("Email", 15), ("None", 10))


@dataclass(frozen=True)
class KeyAccess:
    """What an API key may see: resources answering 403 (denied) or 404 (not_found)."""

    denied: frozenset[str] = frozenset()
    not_found: frozenset[str] = frozenset()


def split_key(key: str) -> tuple[str, str | None]:
    """An API key's body and shard: the suffix after the last '-' (None: sent without it, which
    Cliniko allows, the key then being its account's on whichever shard holds it)."""
    body, sep, shard = key.rpartition("-")
    if sep and shard[:2].isalpha() and shard[2:].isdigit() and len(shard) in (3, 4):
        return body, shard
    return key, None


def _weighted(rng: random.Random, options: tuple) -> object:
    values, weights = zip(*options, strict=True)
    return rng.choices(values, weights)[0]


class SandboxClinic:
    """One simulated Cliniko account: its tables, its clock, its API keys."""

    def __init__(self, *, seed: int, start: datetime, patients: int, shard: str = "au1") -> None:
        if start.tzinfo is None:
            raise ValueError("start must be an aware datetime (UTC)")
        self.seed = seed
        self.shard = shard
        self.size = max(patients, 1)
        self.lock = threading.RLock()
        self.tables = {name: Table(spec) for name, spec in SPECS.items()}
        self.catalogue = Catalogue()
        self._now = start.timestamp()
        self._rng = random.Random(f"{seed}:clinic")
        self._id_counter = 0
        self._keys: dict[str, tuple[KeyAccess, str]] = {}  # key body -> (access, home shard)
        self._hard_deleted: dict[str, set[int]] = {name: set() for name in SPECS}
        self._malformed: dict[str, set[str]] = {name: set() for name in SPECS}
        # Relationships the change engine follows (all ids).
        self._home: dict[int, int] = {}  # patient -> business
        self._appointments_of: dict[int, list[int]] = {}  # patient -> individual appointments
        self._attendances_of: dict[int, list[int]] = {}  # patient -> attendees
        self._attendees_at: dict[int, list[int]] = {}  # booking (appointment or class) -> attendees
        self._referral_of: dict[int, int] = {}  # patient -> referral source
        self._marked: set[int] = set()  # individual appointments marked arrived or not arrived
        self._classes: dict[tuple[int, int], int] = {}  # (business, starts) -> group appointment
        self._timetable: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # class days, hours
        self.user: dict = {}
        self.concession_ids: list[int] = []
        self.referral_types: list[tuple[int, str | None, list[str] | None]] = []
        self.api_key = f"sbx{random.Random(f'{seed}:key').getrandbits(128):032x}-{shard}"
        self._keys[split_key(self.api_key)[0]] = (KeyAccess(), shard)
        # Medical alerts, invoices, custom fields: their own random streams (patient_extras.py).
        self.extras = PatientExtras(self, seed)

    # ---- public API ---------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        patients: int,
        start: datetime | None = None,
        appointments_per_patient: float = 15.0,
        shard: str = "au1",
    ) -> SandboxClinic:
        """A clinic with ``patients`` patients and about ``appointments_per_patient`` visits each
        (individual appointments plus class attendances), deterministic for the arguments.

        Without ``start`` the same seed gives the same clinic all day (the generation depends
        on its start, so "now" would make a new one each run): generated as of 00:00 UTC
        today, then its clock is set to now with nothing changed."""
        now = None
        if start is None:
            now = datetime.now(UTC).replace(microsecond=0)
            start = now.replace(hour=0, minute=0, second=0)
        clinic = cls(seed=seed, start=start, patients=patients, shard=shard)
        with clinic.lock:
            _Generator(clinic, random.Random(f"{seed}:{patients}:{appointments_per_patient}")).run(
                patients, appointments_per_patient
            )
            if now is not None:
                clinic._now = now.timestamp()
        return clinic

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self._now, UTC)

    def advance(self, dt: timedelta) -> dict[str, int]:
        """Move the clock by ``dt`` and make random realistic changes inside the interval.

        Returns how many changes of each kind were made."""
        seconds = dt.total_seconds()
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self.lock:
            old, new = self._now, self._now + seconds
            first, last = math.floor(old) + 1, math.floor(new)
            self._now = new
            done = dict.fromkeys((*CHANGE_RATES, *EXTRA_RATES, "invoices_raised"), 0)
            if last < first:
                return done
            scale = self.size / 1000 * seconds / MINUTE
            events = [
                (self._rng.randint(first, last), kind)
                for kind, rate in CHANGE_RATES.items()
                for _ in range(poisson(self._rng, rate * scale))
            ]
            events.sort()
            changes = _Changes(self)
            for t, kind in events:
                done[kind] += getattr(changes, kind)(t)
            done["invoices_raised"] = changes.invoices_raised
            done.update(self.extras.advance(first, last, scale))
            return done

    def cancel_attendance(self, attendee_id: int) -> dict:
        """Cancel one attendee now, as the front desk does (``PATCH /attendees/{id}/cancel``):
        it keeps its row with ``cancelled_at`` and a reason, leaves its class's ``patient_ids``,
        and plain ``/attendees`` lists stop showing it. Returns the attendee as stored."""
        with self.lock:
            _Changes(self).cancel_place(attendee_id, math.floor(self._now))
            return self.tables["attendees"].record(attendee_id)

    def add_medical_alert(self, patient_id: int, name: str) -> dict:
        """Add a medical alert to a patient now, as the front desk does (``POST /medical_alerts``
        with ``name`` and ``patient_id``). Returns the alert as stored."""
        with self.lock:
            t = math.floor(self._now)
            alert = records.medical_alert(
                id=self.extras.new_id(t), created=t, updated=t, patient_id=patient_id, name=name
            )
            self.tables["medical_alerts"].put(alert)
            return alert

    def bulk_edit(self, resource: str, ids: list[int], changes: dict) -> str:
        """Apply ``changes`` to many rows in one second, as a bulk action in Cliniko does: every
        row gets the same ``updated_at`` (now). Returns that timestamp."""
        with self.lock:
            stamp = fmt_ts(math.floor(self._now))
            table = self.tables[resource]
            for row_id in ids:
                rec = {**table.record(row_id), **changes, "updated_at": stamp}
                self.heal(resource, rec)
                table.put(rec)
            return stamp

    def add_key(
        self, key: str, denied: tuple[str, ...] = (), not_found: tuple[str, ...] = ()
    ) -> str:
        """Register another key (restricted keys answer 403/404 on the named resources)."""
        body, home = split_key(key)
        with self.lock:
            access = KeyAccess(frozenset(denied), frozenset(not_found))
            self._keys[body] = (access, home or self.shard)
        return key

    def key_access(self, key: str, shard: str) -> KeyAccess | None:
        """The access of a key presented to a server of ``shard`` (None: 401): its account's
        shard, named by the key's suffix or, sent without one, known from the key itself."""
        body, named = split_key(key)
        with self.lock:
            found = self._keys.get(body)
        if found is None or found[1] != shard or named not in (None, shard):
            return None
        return found[0]

    def snapshot(self, resource: str, base_url: str) -> dict[int, dict]:
        """Every row the API returns when all hidden rows are asked for, by id, as served.

        Rows made malformed by ``inject_malformed`` (see ``malformed``) are left out, and so are
        deleted ones (``deleted_at`` set), which no list shows."""
        base = base_url.rstrip("/").encode()
        with self.lock:
            bad = self._malformed[resource]
            out = {}
            for row in self.tables[resource].rows.values():
                if row.deleted_at is not None:
                    continue
                rec = orjson.loads(row.body.replace(BASE_BYTES, base))
                if str(rec.get("id")) in bad:
                    continue
                out[row.id] = rec
            return out

    def hard_deleted(self, resource: str) -> set[int]:
        with self.lock:
            return set(self._hard_deleted[resource])

    def malformed(self, resource: str) -> set[str]:
        """Keys (as served) of rows currently served malformed."""
        with self.lock:
            return set(self._malformed[resource])

    def inject_malformed(self, resource: str, n: int) -> list[str]:
        """Serve ``n`` random rows malformed (alternately a non-numeric id and an unparseable
        ``updated_at``), returning their keys as served. Their change-feed position moves to
        now, so an incremental sync meets them; the next real change to a row heals it."""
        with self.lock:
            table = self.tables[resource]
            healthy = [r for r in table.rows if str(r) not in self._malformed[resource]]
            now = math.floor(self._now)
            keys = []
            for i, row_id in enumerate(self._rng.sample(healthy, min(n, len(healthy)))):
                rec = table.record(row_id)
                rec["updated_at"] = fmt_ts(now)
                served = dict(rec)
                if i % 2 == 0:
                    served["id"] = f"x{row_id}"
                else:
                    served["updated_at"] = "2026-13-45T25:61:00Z"
                table.put(rec, body=dump(served))
                keys.append(str(served["id"]))
                self._malformed[resource].add(str(served["id"]))
            return keys

    def row(self, resource: str, row_id: int) -> Row | None:
        return self.tables[resource].rows.get(row_id)

    def referral_source_of(self, patient_id: int) -> Row | None:
        rid = self._referral_of.get(patient_id)
        return None if rid is None else self.tables["referral_sources"].rows.get(rid)

    # ---- shared by generation and changes -----------------------------------------------------

    def new_id(self, at: int) -> int:
        """A 64-bit id that grows with creation time but is not sequential (like Cliniko's)."""
        self._id_counter += 1
        millis = at * 1000 + self._rng.randrange(1000)
        return (millis << 20) | (self._id_counter * 7919 & 0xFFFFF)

    def relate(self, mapping: dict[int, list[int]], key: int, value: int) -> None:
        mapping.setdefault(key, []).append(value)

    def heal(self, resource: str, rec: dict) -> None:
        self._malformed[resource].discard(f"x{rec['id']}")
        self._malformed[resource].discard(str(rec["id"]))


# ---- generation -----------------------------------------------------------------------------


class _Generator:
    """Builds the initial clinic into bulk lists, then loads each table once."""

    def __init__(self, clinic: SandboxClinic, rng: random.Random) -> None:
        self.c = clinic
        self.rng = rng
        self.now = math.floor(clinic._now)
        self.opened = self.now - (HISTORY_DAYS + 30) * DAY
        self.out: dict[str, list[dict | Row]] = {name: [] for name in SPECS}
        self.group_recs: dict[int, dict] = {}

    def run(self, n_patients: int, per_patient: float) -> None:
        self._catalogue()
        self._staff(n_patients)
        self._lookups()
        self._patients(n_patients, per_patient)
        for group in self.group_recs.values():  # a few past classes were archived
            starts = parse_int(group["starts_at"])
            if starts < self.now and self.rng.random() < 0.03:
                archived = starts + self.rng.randint(0, 14) * DAY
                if archived > self.now:  # not archived yet
                    continue
                group["archived_at"] = fmt_ts(archived)
                group["updated_at"] = fmt_ts(max(archived, parse_int(group["updated_at"])))
        self.out["group_appointments"] = list(self.group_recs.values())
        seed_text = f"{self.c.seed}:{n_patients}:{per_patient}"
        self.c.extras.generate(self.out, self.now, seed_text)
        for name, recs in self.out.items():
            self.c.tables[name].load(recs)

    def _catalogue(self) -> None:
        rng, c = self.rng, self.c
        n_businesses = rng.randint(2, 4)
        with_admin = rng.random() < 0.5
        places = rng.sample(PLACES, n_businesses - with_admin)
        for i, place in enumerate(places):
            bid = c.new_id(self.opened + i * DAY)
            c.catalogue.add_business(Business(bid, place, admin=False))
        if with_admin:
            bid = c.new_id(self.opened + 10 * DAY)
            c.catalogue.add_business(Business(bid, places[0], admin=True))
        for category, name, minutes, attendees, _online, _colour, archived in CATALOGUE:
            tid = c.new_id(self.opened + 2 * DAY)
            c.catalogue.add_type(AppointmentType(tid, name, category, minutes, attendees, archived))
        type_ids = [t.id for t in c.catalogue.types]
        for i, b in enumerate(c.catalogue.businesses):
            name = "Admin" if b.admin else f"{b.place['city']} {BUSINESS_NAMES[i]}"
            ids = (
                [t.id for t in c.catalogue.types if t.category == ADMIN_CATEGORY]
                if b.admin
                else type_ids
            )
            self.out["businesses"].append(
                records.business(
                    id=b.id,
                    created=self.opened + i * DAY,
                    name=name,
                    place=b.place,
                    appointment_type_ids=ids,
                    online=not b.admin,
                )
            )
        for t, (*_, online, colour, archived) in zip(c.catalogue.types, CATALOGUE, strict=True):
            created = self.opened + 2 * DAY
            archived_at = self.now - rng.randint(200, 500) * DAY if archived else None
            self.out["appointment_types"].append(
                records.appointment_type(
                    id=t.id,
                    created=created,
                    updated=archived_at or created,
                    name=t.name,
                    category=t.category,
                    minutes=t.minutes,
                    max_attendees=t.max_attendees,
                    online=online,
                    color=colour,
                    archived=archived_at,
                )
            )

    def _staff(self, n_patients: int) -> None:
        rng, c = self.rng, self.c
        owner_id = c.new_id(self.opened)
        c.user = records.user(id=owner_id, created=self.opened, first="Casey", last="Owner")
        clinical = c.catalogue.clinical_businesses()
        per_business = max(1, min(20, n_patients // (400 * len(clinical)) + 1))
        people = []
        for b in clinical:
            for category in CLINICAL:
                count = per_business if category == "Physiotherapy" else max(1, per_business // 2)
                for k in range(count):
                    start = self.opened + (0 if k == 0 else rng.randint(0, HISTORY_DAYS) * DAY)
                    people.append((b.id, category, start, k > 0 and rng.random() < 0.25))
            # Inactive staff who left: they appear only in old appointments.
            people.append((b.id, "Physiotherapy", self.opened, True))
        admin_business = c.catalogue.admin_business() or clinical[0]
        people.append((admin_business.id, ADMIN_CATEGORY, self.opened, False))
        default_types = {
            cat: c.catalogue.types_in(cat)[0].id for cat in (*CLINICAL, ADMIN_CATEGORY)
        }
        for business, category, start, leaves in people:
            pid = c.new_id(start)
            first, last = rng.choice(records.FIRST_NAMES), rng.choice(records.LAST_NAMES)
            if category == ADMIN_CATEGORY:
                first, last = "Front", "Desk"
            end = None
            if leaves:
                end = (
                    rng.randint(start + 90 * DAY, self.now - 30 * DAY)
                    if start + 90 * DAY < self.now - 30 * DAY
                    else self.now - DAY
                )
            staff = Staff(pid, business, category, first, last, start, end)
            c.catalogue.add_staff(staff)
            user_id = c.new_id(start)
            self.out["practitioners"].append(
                records.practitioner(
                    id=pid,
                    created=start,
                    updated=end or start,
                    first=first,
                    last=last,
                    title=rng.choice(("", "Dr", "Ms", "Mr")) if category != ADMIN_CATEGORY else "",
                    designation=DESIGNATION[category],
                    active=end is None,
                    user_id=user_id,
                    default_type_id=default_types[category],
                )
            )

    def _lookups(self) -> None:
        c = self.c
        created = self.opened + 3 * DAY
        for name in ("Pensioner", "Student", "Health Care Card", "DVA Gold Card"):
            self.out["concession_types"].append(
                records.concession_type(id=c.new_id(created), created=created, name=name)
            )
        c.concession_ids = [int(r["id"]) for r in self.out["concession_types"]]
        for name, referrer_type, subcategories in (
            ("Client", "Patient", None),
            ("Contact", "Contact", None),
            ("Other", None, None),
            ("Internet", None, ["Google", "Facebook", "Instagram"]),
            ("Walk-in", None, None),
        ):
            tid = c.new_id(created)
            c.referral_types.append((tid, referrer_type, subcategories))
            self.out["referral_source_types"].append(
                records.referral_source_type(
                    id=tid,
                    created=created,
                    name=name,
                    referrer_type=referrer_type,
                    subcategories=subcategories,
                )
            )

    def _patients(self, n: int, per_patient: float) -> None:
        rng, c = self.rng, self.c
        # Enough classes for the Pilates patients' visits to fill them a little over half.
        pilates = dict(CATEGORY_MIX)["Pilates"] / sum(dict(CATEGORY_MIX).values())
        weekly = n * pilates * per_patient * CLASS_SHARE / (HISTORY_DAYS / 7)
        places = c.catalogue.types_in("Pilates", group=True)[0].max_attendees
        c._timetable = class_timetable(
            weekly / len(c.catalogue.clinical_businesses()) / (places * 0.6)
        )
        history_start = self.now - HISTORY_DAYS * DAY
        created_times = sorted(rng.randint(history_start, self.now - 3600) for _ in range(n))
        people: list[dict] = []
        for created in created_times:
            rec = new_patient(c, rng, created, people, legacy=created < history_start + 365 * DAY)
            people.append(rec)
            pid = int(rec["id"])
            if rng.random() < 0.35:
                self.out["referral_sources"].append(
                    referral_for(c, rng, pid, created, people, c.referral_types)
                )
        self._visits(people, per_patient)
        self._statuses(people)
        self.out["patients"] = people

    def _visits(self, people: list[dict], per_patient: float) -> None:
        rng, c = self.rng, self.c
        horizon = self.now + FUTURE_DAYS * DAY
        admin_type = c.catalogue.type_named(ADMIN_TAG_TYPE)
        for p in people:
            pid, created = int(p["id"]), math.floor(parse(p["created_at"]))
            business = c.catalogue.business(c._home[pid])
            if rng.random() < 0.06:  # seed 000: tagged by booking the admin type on day one
                self._individual(
                    p, admin_type, created + rng.randint(60, 3600), created + 30, tag=True
                )
            category = _weighted(rng, CATEGORY_MIX)
            visits = max(1, round(rng.expovariate(1 / per_patient)))
            span_days = (self.now - created) / DAY  # fit the visits before now; a few go ahead
            gap_days = min(rng.uniform(7, 45), max(0.5, span_days / visits - 1))
            t, last = created + rng.randint(0, 10) * DAY, None
            for k in range(visits):
                if t > self.now:
                    break
                self._visit(p, business, category, k, t)
                t, last = t + int(rng.expovariate(1 / gap_days) * DAY) + DAY, t
            if last is None or last < self.now - 60 * DAY:
                continue
            # Patients still coming have their next visit or two booked, up to eight weeks out.
            for k in range(visits, visits + rng.choice((0, 1, 1, 2))):
                t = max(t, self.now + int(rng.triangular(0.1, FUTURE_DAYS, 0.1) * DAY))
                if t > horizon:
                    break
                self._visit(p, business, category, k, t)
                t += int(rng.expovariate(1 / gap_days) * DAY) + DAY

    def _visit(self, p: dict, business: Business, category: str, k: int, t: int) -> None:
        """The k-th visit of a patient, around ``t``: a class, or an individual appointment."""
        rng, c = self.rng, self.c
        if category == "Pilates" and k > 0 and rng.random() < CLASS_SHARE:
            self._attend_class(p, business, t)
            return
        created = parse_int(p["created_at"])
        types = c.catalogue.types_in(category)
        type_ = types[0] if k == 0 else rng.choice(types[1:] or types)
        tz = business.place["tz"]
        starts = appointment_slot(rng, tz, t)
        if starts < created:  # booked on the day they joined, for a later day
            starts = appointment_slot(rng, tz, t + DAY)
        booked = max(created, starts - int(rng.expovariate(1 / (6 * DAY))))
        self._individual(p, type_, starts, self._booked_by_now(booked, created))

    def _individual(
        self, p: dict, type_: AppointmentType, starts: int, booked: int, tag: bool = False
    ) -> None:
        rng, c = self.rng, self.c
        pid = int(p["id"])
        home = c._home[pid]
        if tag:
            admin = c.catalogue.admin_business()
            business = admin.id if admin else home
            prac = c.catalogue.practitioner(rng, business, ADMIN_CATEGORY, starts)
        else:
            business = home
            prac = c.catalogue.practitioner(rng, business, type_.category, starts)
        outcome, reminders = records.Outcome(updated=booked), (False, False)
        if not tag:
            outcome = history_outcome(
                rng, booked, starts, starts + type_.minutes * MINUTE, self.now
            )
            if outcome.arrived is not None:  # reminders went out before a marked visit
                kind = p["reminder_type"]
                reminders = ("Email" in kind, "SMS" in kind)
        online = not tag and rng.random() < 0.3
        appt, att = book_individual(
            c, rng, p, type_, starts, booked, business, prac.id, online, outcome, reminders
        )
        # Final from here on: keep the served bytes, not the dicts (memory at 300,000 rows).
        times = {
            "created": booked,
            "updated": outcome.updated,
            "archived": outcome.archived,
            "cancelled": outcome.cancelled,
        }
        self.out["individual_appointments"].append(Row.of(appt, starts=starts, **times))
        if outcome.arrived is not None:
            c._marked.add(int(appt["id"]))
            if not tag:
                ends = starts + type_.minutes * MINUTE
                c.extras.note_visit(
                    ends, pid, business, prac.id, int(appt["id"]), outcome.arrived, type_.minutes
                )
        self.out["attendees"].append(Row.of(att, **times))

    def _booked_by_now(self, booked: int, created: int) -> int:
        """A future visit is already in the calendar, so it was booked before now: spread such
        bookings over the last three weeks rather than stamping them all with this second."""
        if booked <= self.now:
            return booked
        return self.rng.randint(min(self.now, max(created, self.now - 21 * DAY)), self.now)

    def _attend_class(self, p: dict, business: Business, around: int) -> None:
        rng, c = self.rng, self.c
        class_id, group = find_class(
            c, rng, business, around, self.group_recs.get, self.now, int(p["id"])
        )
        if class_id not in self.group_recs:
            self.group_recs[class_id] = group
        group = self.group_recs[class_id]
        created = parse_int(p["created_at"])
        booked = max(created, parse_int(group["starts_at"]) - rng.randint(3600, 10 * DAY))
        att = join_class(c, rng, p, group, self._booked_by_now(booked, created))
        settle_attendance(c, rng, att, group, self.now)
        self.out["attendees"].append(Row(att))
        if att["arrived"] is not None:
            c.extras.note_visit(
                parse_int(group["ends_at"]),
                int(p["id"]),
                business.id,
                link_id(group["practitioner"]),
                int(group["id"]),
                att["arrived"],
                (parse_int(group["ends_at"]) - parse_int(group["starts_at"])) // MINUTE,
                is_class=True,
            )

    def _statuses(self, people: list[dict]) -> None:
        """Archive, merge and delete some patients, as years of real use do."""
        rng, c = self.rng, self.c
        for p in people:
            created = parse_int(p["created_at"])
            roll = rng.random()
            if roll < 0.04:
                at = rng.randint(created, self.now)
                p["archived_at"] = fmt_ts(at)
                if roll < 0.015:
                    p["deleted_at"] = fmt_ts(at)
                p["updated_at"] = fmt_ts(at)
        # Merged duplicates: a second record for a person, merged into the first.
        survivors = [p for p in people if not p["archived_at"]]
        for survivor in rng.sample(survivors, len(survivors) // 100):
            created = parse_int(survivor["created_at"])
            dup = dict(survivor)
            dup_created = rng.randint(created, max(created, self.now - DAY))
            merged_at = dup_created + rng.randint(3600, 30 * DAY)
            if merged_at > self.now:  # merged recently: some time since the duplicate appeared
                merged_at = rng.randint(dup_created, self.now)
            dup_id = c.new_id(dup_created)
            dup.update(
                id=str(dup_id),
                created_at=fmt_ts(dup_created),
                updated_at=fmt_ts(merged_at),
                archived_at=fmt_ts(merged_at),
                merged_at=fmt_ts(merged_at),
                merged_with_patient=link(f"patients/{survivor['id']}"),
                medical_alerts=link(f"patients/{dup_id}/medical_alerts?page=1"),
                invoices=link(f"patients/{dup_id}/invoices?page=1"),
                appointments=link(f"patients/{dup_id}/appointments?page=1"),
                links=link(f"patients/{dup_id}")["links"],
            )
            c._home[dup_id] = c._home[int(survivor["id"])]
            people.append(dup)


# ---- building blocks shared by generation and the change engine ----------------------------


def parse(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def parse_int(value: str) -> int:
    return math.floor(parse(value))


def new_patient(
    c: SandboxClinic, rng: random.Random, created: int, earlier: list[dict], legacy: bool = False
) -> dict:
    clinical = c.catalogue.clinical_businesses()
    business = rng.choices(clinical, [3] + [1] * (len(clinical) - 1))[0]
    place = business.place
    first, last = rng.choice(records.FIRST_NAMES), rng.choice(records.LAST_NAMES)
    email = _email(rng, first, last)
    family = earlier and rng.random() < 0.1
    if family:  # a family shares a surname and, often, one email address
        relative = earlier[-1 - rng.randrange(min(len(earlier), 50))]
        last = relative["last_name"]
        if rng.random() < 0.7:
            email = relative["email"]
    pid = c.new_id(created)
    c._home[pid] = business.id
    consent = ((True, 45), (False, 25), (None, 30))
    sex = rng.choice(("Female", "Male", "Female", "Male", None))
    concession = rng.choice(c.concession_ids) if rng.random() < 0.12 else None
    return records.patient(
        id=pid,
        created=created,
        first=first,
        last=last,
        preferred=records.NICKNAMES.get(first) if rng.random() < 0.5 else None,
        title={"Female": "Ms", "Male": "Mr"}.get(sex or "", "") if rng.random() < 0.6 else "",
        sex=sex,
        email=email,
        dob=_birthday(rng, created),
        phones=_phones(rng, place),
        email_marketing=_weighted(rng, consent),
        sms_marketing=_weighted(rng, consent),
        reminder_type=_weighted(rng, REMINDER_TYPES),
        place=place,
        time_zone=place["tz"] if rng.random() < 0.7 else None,
        concession_type_id=concession,
        legacy_blanks=legacy,
    )


def _email(rng: random.Random, first: str, last: str) -> str | None:
    local = f"{first}.{last}".lower().replace("'", "")
    domain = rng.choice(("example.com", "example.net", "example.org"))
    roll = rng.random()
    if roll < 0.06:
        return rng.choice((None, ""))
    if roll < 0.10:  # typed wrong at the front desk
        return rng.choice(
            (
                f"{local}@{domain.split('.')[0]}",
                f"{first} {last}@{domain}".lower(),
                "n/a",
                f"{local}@@{domain}",
                f"{local}.{domain}",
            )
        )
    if roll < 0.15:
        return f"{local.upper()}@{domain.upper()}"
    return f"{local}{rng.randint(1, 99) if rng.random() < 0.3 else ''}@{domain}"


def _phones(rng: random.Random, place: dict) -> list[dict]:
    roll = rng.random()
    if roll < 0.07:
        return []
    landline = {
        "phone_type": "Home",
        "number": f"{place['landline_prefix']} {rng.randint(0, 9999):04d}",
    }
    if roll < 0.14:
        return [landline]  # landline only: no SMS
    phones = [{"phone_type": "Mobile", "number": _mobile(rng, place["country_code"])}]
    if roll > 0.8:
        phones.append(landline)
    return phones


def _mobile(rng: random.Random, country_code: str) -> str:
    if country_code == "NZ":
        n = f"{rng.randint(0, 9999):04d}"
        return rng.choice((f"021 555 {n}", f"+6421555{n}", f"6421555{n}", f"0215 55{n}"))
    a, b = rng.randint(0, 9), rng.randint(0, 999)
    return rng.choice(
        (
            f"0491 57{a} {b:03d}",
            f"+6149157{a}{b:03d}",
            f"6149157{a}{b:03d}",
            f"049157{a}{b:03d}",
            f"(0491) 57{a}-{b:03d}",
            f"+61 491 57{a} {b:03d}",
        )
    )


def _birthday(rng: random.Random, created: int) -> str | None:
    if rng.random() < 0.1:
        return None
    year = datetime.fromtimestamp(created, UTC).year - rng.randint(4, 88)
    return f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def referral_for(
    c: SandboxClinic, rng: random.Random, pid: int, created: int, people: list[dict], types: list
) -> dict:
    type_id, referrer_type, subcategories = rng.choice(types)
    referrer_id = None
    if referrer_type == "Patient":
        referrer_id = int(rng.choice(people[:-1] or people)["id"])
    elif referrer_type == "Contact":
        referrer_id = c.new_id(created - DAY)
    rid = c.new_id(created)
    c._referral_of[pid] = rid
    return records.referral_source(
        id=rid,
        created=created,
        patient_id=pid,
        type_id=type_id,
        referrer_type=referrer_type,
        referrer_id=referrer_id,
        subcategory=rng.choice(subcategories) if subcategories else None,
    )


def book_individual(
    c: SandboxClinic,
    rng: random.Random,
    p: dict,
    type_: AppointmentType,
    starts: int,
    booked: int,
    business: int,
    practitioner: int,
    online: bool,
    outcome: records.Outcome | None = None,
    reminders: tuple[bool, bool] = (False, False),
) -> tuple[dict, dict]:
    """A new individual appointment and its attendee row (Cliniko lists both)."""
    pid = int(p["id"])
    aid = c.new_id(booked)
    appt = records.individual_appointment(
        id=aid,
        created=booked,
        starts=starts,
        minutes=type_.minutes,
        patient_id=pid,
        patient_name=p["label"],
        practitioner_id=practitioner,
        business_id=business,
        type_id=type_.id,
        online=online,
        outcome=outcome,
        reminders=reminders,
    )
    att_id = c.new_id(booked)
    att = records.attendee(
        id=att_id, created=booked, booking_id=aid, patient_id=pid, online=online, outcome=outcome
    )
    c.relate(c._appointments_of, pid, aid)
    c.relate(c._attendances_of, pid, att_id)
    c.relate(c._attendees_at, aid, att_id)
    return appt, att


def history_outcome(
    rng: random.Random, created: int, starts: int, ends: int, now: int
) -> records.Outcome:
    """The outcome a generated appointment has by ``now``: most past visits attended, some
    missed, cancelled (a few then archived) or never marked; a few future ones cancelled.

    An event whose moment would fall after ``now`` has not happened yet, so the row stays as it
    was. Clamping such moments to ``now`` instead would stamp thousands of rows with the same
    second, which no real clinic produces and which swells every sync's overlap window."""
    roll = rng.random()
    unmarked = records.Outcome(updated=created)
    if starts > now:
        if roll < 0.07:
            return _cancelled(rng, rng.randint(created, now))
        return unmarked
    if roll < 0.10:
        cancelled = _cancelled(rng, rng.randint(created, max(created, min(starts, now))))
        if rng.random() < 0.15:
            archived = cancelled.updated + rng.randint(0, 30 * DAY)
            if archived <= now:
                return replace(cancelled, archived=archived, updated=archived)
        return cancelled
    if roll < 0.82:
        marked = max(created, ends + rng.randint(0, 4 * 3600))
        return records.Outcome(updated=marked, arrived=True) if marked <= now else unmarked
    if roll < 0.87:
        marked = max(created, ends + rng.randint(0, 2 * DAY))
        return records.Outcome(updated=marked, arrived=False) if marked <= now else unmarked
    if roll < 0.89:
        archived = max(created, starts + rng.randint(0, 30 * DAY))
        return records.Outcome(updated=archived, archived=archived) if archived <= now else unmarked
    return unmarked  # never marked (many clinics do not mark arrivals)


def _cancelled(rng: random.Random, at: int) -> records.Outcome:
    reason = rng.choice(tuple(records.CANCELLATION_REASONS))
    return records.Outcome(updated=at, cancelled=at, reason=reason, note=rng.choice(CANCEL_NOTES))


def cancel(appt: dict, att: dict | None, rng: random.Random, at: int) -> int:
    reason = rng.choice(tuple(records.CANCELLATION_REASONS))
    note = rng.choice(CANCEL_NOTES)
    for rec in (appt, att) if att is not None else (appt,):
        rec["cancelled_at"] = fmt_ts(at)
        rec["cancellation_reason"] = reason
        rec["cancellation_reason_description"] = records.CANCELLATION_REASONS[reason]
        rec["cancellation_note"] = note
        rec["updated_at"] = fmt_ts(at)
    return at


def archive(appt: dict, att: dict | None, at: int) -> int:
    for rec in (appt, att) if att is not None else (appt,):
        rec["archived_at"] = fmt_ts(at)
        rec["updated_at"] = fmt_ts(at)
    return at


def find_class(
    c: SandboxClinic,
    rng: random.Random,
    business: Business,
    around: int,
    existing,
    now: int,
    patient_id: int,
) -> tuple[int, dict]:
    """The first class at ``business`` after ``around`` with a free place (created if new) that
    the patient is not booked into already: the front desk books a person into a class once (two
    live places of one patient in one class come only from merging two records, ``merges``)."""
    tz = business.place["tz"]
    class_type = c.catalogue.types_in("Pilates", group=True)[0]
    for starts in class_slots_after(tz, around, c._timetable):
        class_id = c._classes.get((business.id, starts))
        if class_id is None:
            created = starts - rng.randint(7, 60) * DAY
            if created > now:  # a class this week was put on the timetable some days ago
                created = now - rng.randint(3600, 7 * DAY)
            class_id = c.new_id(created)
            c._classes[(business.id, starts)] = class_id
            prac = c.catalogue.practitioner(rng, business.id, "Pilates", starts)
            group = records.group_appointment(
                id=class_id,
                created=created,
                starts=starts,
                minutes=class_type.minutes,
                max_attendees=class_type.max_attendees,
                practitioner_id=prac.id,
                business_id=business.id,
                type_id=class_type.id,
            )
            return class_id, group
        group = existing(class_id)
        if (
            group is not None
            and len(group["patient_ids"]) < group["max_attendees"]
            and str(patient_id) not in group["patient_ids"]
        ):
            return class_id, group
    raise AssertionError("unreachable: class slots never run out")


def join_class(c: SandboxClinic, rng: random.Random, p: dict, group: dict, booked: int) -> dict:
    pid, gid = int(p["id"]), int(group["id"])
    att_id = c.new_id(booked)
    att = records.attendee(
        id=att_id, created=booked, booking_id=gid, patient_id=pid, online=rng.random() < 0.4
    )
    group["patient_ids"].append(str(pid))
    if parse_int(group["updated_at"]) < booked:
        group["updated_at"] = fmt_ts(booked)
    c.relate(c._attendances_of, pid, att_id)
    c.relate(c._attendees_at, gid, att_id)
    return att


def settle_attendance(
    c: SandboxClinic, rng: random.Random, att: dict, group: dict, now: int
) -> None:
    starts, created = parse_int(group["starts_at"]), parse_int(att["created_at"])
    ends = parse_int(group["ends_at"])
    roll = rng.random()
    if roll < 0.08:
        at = rng.randint(created, max(created, min(starts, now)))
        cancel(att, None, rng, at)
        group["patient_ids"].remove(att["patient"]["links"]["self"].rsplit("/", 1)[1])
        group["updated_at"] = fmt_ts(max(parse_int(group["updated_at"]), at))
    elif starts <= now:
        marked = ends + rng.randint(0, 3600)
        if marked <= now:  # otherwise the roll has not been marked yet
            att["arrived"] = roll < 0.9
            att["updated_at"] = fmt_ts(marked)


# ---- the change engine ----------------------------------------------------------------------


class _Changes:
    """One method per change kind; each returns 1 if it changed something, else 0."""

    def __init__(self, clinic: SandboxClinic) -> None:
        self.c = clinic
        self.rng = clinic._rng
        self.invoices_raised = 0

    def _put(self, resource: str, rec: dict) -> None:
        self.c.heal(resource, rec)
        self.c.tables[resource].put(rec)

    def _rec(self, resource: str, row_id: int) -> dict:
        return self.c.tables[resource].record(row_id)

    def _random_patient(self, t: int, active: bool = True) -> dict | None:
        index = self.c.tables["patients"].indexes["created_at"]
        for _ in range(20 if index else 0):
            rec = self._rec("patients", index[self.rng.randrange(len(index))] & ID_MASK)
            if not active or not rec["archived_at"]:
                return rec
        return None

    def patients_created(self, t: int) -> int:
        c, rng = self.c, self.rng
        recent = [self._rec("patients", i) for i in self._recent_patient_ids(5)]
        p = new_patient(c, rng, t, recent)
        self._put("patients", p)
        pid = int(p["id"])
        if rng.random() < 0.35:
            self._put("referral_sources", referral_for(c, rng, pid, t, recent, c.referral_types))
        if rng.random() < 0.6:  # most new patients book their first visit straight away
            business = c.catalogue.business(c._home[pid])
            category = _weighted(rng, CATEGORY_MIX)
            type_ = c.catalogue.types_in(category)[0]
            starts = appointment_slot(rng, business.place["tz"], t + rng.randint(0, 14) * DAY)
            starts = max(starts, t + 3600)
            prac = c.catalogue.practitioner(rng, business.id, category, starts)
            online = rng.random() < 0.4
            appt, att = book_individual(c, rng, p, type_, starts, t, business.id, prac.id, online)
            self._put("individual_appointments", appt)
            self._put("attendees", att)
        if rng.random() < 0.08:
            admin_type = c.catalogue.type_named(ADMIN_TAG_TYPE)
            admin = c.catalogue.admin_business()
            business = admin.id if admin else c._home[int(p["id"])]
            prac = c.catalogue.practitioner(rng, business, ADMIN_CATEGORY, t)
            appt, att = book_individual(c, rng, p, admin_type, t, t, business, prac.id, False)
            self._put("individual_appointments", appt)
            self._put("attendees", att)
        return 1

    def _recent_patient_ids(self, n: int) -> list[int]:
        index = self.c.tables["patients"].indexes["created_at"]
        return [k & ID_MASK for k in index[-n:]]

    def patients_updated(self, t: int) -> int:
        p = self._random_patient(t)
        if p is None:
            return 0
        rng = self.rng
        what = rng.randrange(3)
        if what == 0:
            p["accepted_email_marketing"] = rng.choice((True, False))
        elif what == 1:
            p["accepted_sms_marketing"] = rng.choice((True, False))
        else:
            p["patient_phone_numbers"] = _phones(
                rng, self.c.catalogue.business(self.c._home[int(p["id"])]).place
            )
        p["updated_at"] = fmt_ts(t)
        self._put("patients", p)
        return 1

    def bookings(self, t: int) -> int:
        c, rng = self.c, self.rng
        p = self._random_patient(t)
        if p is None:
            return 0
        business = c.catalogue.business(c._home[int(p["id"])])
        category = _weighted(rng, CATEGORY_MIX)
        type_ = rng.choice(c.catalogue.types_in(category))
        starts = appointment_slot(rng, business.place["tz"], t + rng.randint(1, FUTURE_DAYS) * DAY)
        prac = c.catalogue.practitioner(rng, business.id, category, starts)
        appt, att = book_individual(
            c, rng, p, type_, starts, t, business.id, prac.id, rng.random() < 0.3
        )
        self._put("individual_appointments", appt)
        self._put("attendees", att)
        return 1

    def class_bookings(self, t: int) -> int:
        c, rng = self.c, self.rng
        p = self._random_patient(t)
        if p is None:
            return 0
        business = c.catalogue.business(c._home[int(p["id"])])
        around = t + rng.randint(0, 14) * DAY
        groups = c.tables["group_appointments"]

        def existing(class_id: int) -> dict | None:
            return groups.record(class_id) if class_id in groups.rows else None

        class_id, group = find_class(c, rng, business, around, existing, t, int(p["id"]))
        if class_id not in groups.rows:  # a class put on the calendar just now
            group["created_at"] = fmt_ts(t)
        group["updated_at"] = fmt_ts(t)
        att = join_class(c, rng, p, group, t)
        self._put("group_appointments", group)
        self._put("attendees", att)
        return 1

    def _future_appointment(self, t: int) -> dict | None:
        table = self.c.tables["individual_appointments"]
        index = table.indexes["starts_at"]
        lo = bisect_right(index, (t << 64) | ID_MASK)
        if lo >= len(index):
            return None
        for _ in range(20):
            rec = table.record(index[self.rng.randrange(lo, len(index))] & ID_MASK)
            if not rec["cancelled_at"] and not rec["archived_at"]:
                return rec
        return None

    def _attendee_of(self, appointment_id: int) -> dict | None:
        ids = self.c._attendees_at.get(appointment_id) or []
        rows = self.c.tables["attendees"].rows
        return next((rows[i].record() for i in ids if i in rows), None)

    def reschedules(self, t: int) -> int:
        appt = self._future_appointment(t)
        if appt is None:
            return 0
        starts = parse_int(appt["starts_at"])
        length = parse_int(appt["ends_at"]) - starts
        moved = max(
            t + 3600,
            starts + self.rng.choice((-2, -1, 1, 2, 7)) * DAY + self.rng.choice((-1, 0, 1)) * 1800,
        )
        appt["starts_at"], appt["ends_at"] = fmt_ts(moved), fmt_ts(moved + length)
        appt["updated_at"] = fmt_ts(t)
        self._put("individual_appointments", appt)
        return 1

    def cancellations(self, t: int) -> int:
        appt = self._future_appointment(t)
        if appt is None:
            return 0
        att = self._attendee_of(int(appt["id"]))
        cancel(appt, att, self.rng, t)
        self._put("individual_appointments", appt)
        if att is not None:
            self._put("attendees", att)
        return 1

    def _due_unmarked(self, t: int) -> dict | None:
        """One of the latest appointments that have started and nobody has marked yet."""
        table = self.c.tables["individual_appointments"]
        index = table.indexes["starts_at"]
        hi = bisect_right(index, (t << 64) | ID_MASK)
        marked, candidates = self.c._marked, []
        for key in reversed(index[max(0, hi - 80) : hi]):  # bounded: marking is a recent job
            row = table.rows[key & ID_MASK]
            if row.cancelled_at is None and row.archived_at is None and row.id not in marked:
                candidates.append(row.id)
                if len(candidates) >= 3:
                    break
        return table.record(self.rng.choice(candidates)) if candidates else None

    def _mark(self, t: int, arrived: bool) -> int:
        appt = self._due_unmarked(t)
        if appt is None:
            return 0
        att = self._attendee_of(int(appt["id"]))
        appt["patient_arrived" if arrived else "did_not_arrive"] = True
        self.c._marked.add(int(appt["id"]))
        appt["updated_at"] = fmt_ts(t)
        self._put("individual_appointments", appt)
        self.invoices_raised += self.c.extras.invoice_visit(appt, arrived, t)
        if att is not None:
            att["arrived"] = arrived
            att["updated_at"] = fmt_ts(t)
            self._put("attendees", att)
        return 1

    def arrivals(self, t: int) -> int:
        return self._mark(t, True)

    def no_shows(self, t: int) -> int:
        return self._mark(t, False)

    def archived(self, t: int) -> int:
        if self.rng.random() < 0.3:
            p = self._random_patient(t)
            if p is None:
                return 0
            p["archived_at"] = p["updated_at"] = fmt_ts(t)
            self._put("patients", p)
            return 1
        appt = self._future_appointment(t)
        if appt is None:
            return 0
        att = self._attendee_of(int(appt["id"]))
        archive(appt, att, t)
        self._put("individual_appointments", appt)
        if att is not None:
            self._put("attendees", att)
        return 1

    def merges(self, t: int) -> int:
        c = self.c
        dup, survivor = self._random_patient(t), self._random_patient(t)
        if dup is None or survivor is None or dup["id"] == survivor["id"]:
            return 0
        dup_id, survivor_id = int(dup["id"]), int(survivor["id"])
        stamp = fmt_ts(t)
        dup["archived_at"] = dup["merged_at"] = dup["updated_at"] = stamp
        dup["merged_with_patient"] = link(f"patients/{survivor_id}")
        self._put("patients", dup)
        for aid in c._appointments_of.pop(dup_id, []):
            if aid not in c.tables["individual_appointments"].rows:
                continue
            appt = self._rec("individual_appointments", aid)
            appt["patient"] = link(f"patients/{survivor_id}")
            appt["patient_name"] = survivor["label"]
            appt["updated_at"] = stamp
            self._put("individual_appointments", appt)
            c.relate(c._appointments_of, survivor_id, aid)
        groups = c.tables["group_appointments"]
        for att_id in c._attendances_of.pop(dup_id, []):
            if att_id not in c.tables["attendees"].rows:
                continue
            att = self._rec("attendees", att_id)
            att["patient"] = link(f"patients/{survivor_id}")
            att["updated_at"] = stamp
            self._put("attendees", att)
            c.relate(c._attendances_of, survivor_id, att_id)
            booking = link_id(att["booking"])
            if booking in groups.rows:
                group = groups.record(booking)
                group["patient_ids"] = [
                    str(survivor_id) if i == str(dup_id) else i for i in group["patient_ids"]
                ]
                group["updated_at"] = stamp
                self._put("group_appointments", group)
        return 1

    def hard_deletes(self, t: int) -> int:
        c, rng = self.c, self.rng
        roll = rng.random()
        if roll < 0.15:
            # A patient created by mistake (no bookings or referral): deleted outright.
            for pid in self._recent_patient_ids(20):
                if (
                    not c._appointments_of.get(pid)
                    and not c._attendances_of.get(pid)
                    and pid not in c._referral_of
                ):
                    self._delete("patients", pid)
                    return 1
            return 0
        if roll < 0.3:  # counted here for a stable random stream, but a cancellation
            return self._cancel_class_place(t)
        appt = self._future_appointment(t)
        if appt is None:
            return 0
        aid = int(appt["id"])
        for att_id in c._attendees_at.pop(aid, []):
            self._delete("attendees", att_id)
        self._delete("individual_appointments", aid)
        return 1

    def _cancel_class_place(self, t: int) -> int:
        """Someone's place in a future class is cancelled, as Cliniko does it
        (``PATCH /attendees/{id}/cancel``; attendee DELETE is deprecated): the attendee gets
        ``cancelled_at`` and a reason, drops out of the class's ``patient_ids`` and out of plain
        ``/attendees`` lists, and comes back with ``q[]=cancelled_at:*``."""
        c = self.c
        classes = c.tables["group_appointments"]
        index = classes.indexes["starts_at"]
        lo = bisect_right(index, (t << 64) | ID_MASK)
        for _ in range(10 if lo < len(index) else 0):
            class_id = index[self.rng.randrange(lo, len(index))] & ID_MASK
            attendees = [
                a for a in c._attendees_at.get(class_id, []) if a in c.tables["attendees"].rows
            ]
            if not attendees:
                continue
            att_id = self.rng.choice(attendees)
            if self._rec("attendees", att_id).get("cancelled_at"):
                continue
            self.cancel_place(att_id, t)
            return 1
        return 0

    def cancel_place(self, att_id: int, t: int) -> None:
        att = self._rec("attendees", att_id)
        patient = str(link_id(att["patient"]))
        classes = self.c.tables["group_appointments"]
        class_id = link_id(att["booking"])
        if class_id in classes.rows:
            group = classes.record(class_id)
            if patient in group["patient_ids"]:
                group["patient_ids"].remove(patient)
            group["updated_at"] = fmt_ts(t)
            self._put("group_appointments", group)
        cancel(att, None, self.rng, t)
        self._put("attendees", att)

    def _delete(self, resource: str, row_id: int) -> None:
        if self.c.tables[resource].remove(row_id):
            self.c._hard_deleted[resource].add(row_id)
            self.c._malformed[resource].discard(str(row_id))
            self.c._malformed[resource].discard(f"x{row_id}")
