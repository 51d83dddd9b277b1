"""What a clinic records about a patient besides bookings: medical alerts, invoices and the
patient's custom fields, generated with the clinic and kept changing by its clock.

- Medical alerts (seed 000: "the most common way to tag patients in Cliniko for targeting"): tag
  alerts ("VIP", "Insurance patient", ...) and clinical ones; about three patients in ten have
  one or two. Some are removed later: archived (the current API's ``POST .../archive``; hidden
  unless ``archived_at:*``) or, rarely, deleted (in no list).
- Invoices: one for most attended visits and a no-show fee for some missed ones, raised when the
  visit is marked, numbered in order; paid at the desk, paid days later, left open, closed, or in
  credit (status 10 Open, 20 Paid, 30 Closed, 40 Open (credit)); a few deleted (in no list).
- Custom fields: the clinic's sections (insurer "Provider" radio buttons with the policy number,
  a "Referred by" radio field, "Programs" check boxes with several ticked), filled in on about
  half the patients, shaped like the patients example (``options`` with the ``selected`` ones, a
  text field's ``value``); some values change later, bumping the patient's ``updated_at``.

Everything here draws from its own random streams (never the clinic's), so adding it left every
appointment, patient and id the clinic generated before exactly as it was; it stays deterministic
per seed. Ids come from the same recipe as the clinic's (time-ordered 64-bit, not sequential).
"""

from __future__ import annotations

import math
import random
import uuid
from bisect import bisect_right
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from sandbox.cliniko import records
from sandbox.cliniko.store import ID_MASK, Row, fmt_ts, parse_ts
from sandbox.cliniko.world import poisson

DAY = 86_400

TAG_ALERTS = (
    "VIP",
    "Insurance patient",
    "Workers compensation",
    "NDIS",
    "DVA",
    "Staff member",
    "Prefers SMS",
)
CLINICAL_ALERTS = (
    "Asthma",
    "Type 2 diabetes",
    "Pacemaker",
    "Latex allergy",
    "Pregnant",
    "Anticoagulants",
    "Osteoporosis",
    "Recent surgery",
)
PROVIDERS = ("Bupa", "Medibank", "HCF", "nib", "Australian Unity", "Southern Cross", "ACC")
REFERRERS = ("GP", "Specialist", "Friend or family", "Google", "Gym or coach")
PROGRAMS = ("Back to Work", "Post-natal Pilates", "Falls Prevention", "Sports Recovery")

# Changes per simulated minute per 1,000 patients, as in clinic.CHANGE_RATES. Invoices for
# visits are raised when the clock marks them (``invoice_visit``), not here.
EXTRA_RATES = {
    "alerts_added": 0.3,
    "alerts_removed": 0.15,
    "invoices_sold": 0.2,  # a product sale: no appointment
    "invoices_paid": 1.0,
    "invoices_closed": 0.05,
    "invoices_credited": 0.03,
    "invoices_deleted": 0.02,
    "custom_fields_changed": 0.25,
}


@lru_cache(maxsize=16)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_date(ts: int, tz: str) -> str:
    return datetime.fromtimestamp(ts, _zone(tz)).strftime("%Y-%m-%d")


def price(minutes: int, is_class: bool) -> float:
    return 35.0 if is_class else float(round(minutes * 1.6 + 20))


class PatientExtras:
    """The new resources' own state on one clinic (guarded by the clinic's lock)."""

    def __init__(self, clinic, seed: int) -> None:
        self.c = clinic
        self.rng = random.Random(f"{seed}:extras")
        fields_rng = random.Random(f"{seed}:custom-fields")
        self._token = lambda: str(uuid.UUID(int=fields_rng.getrandbits(128), version=4))
        self.sections = self._definition()
        self._counter = 0
        self.next_number = 1
        self.open_invoices: list[int] = []  # status 10, the ones a payment can settle
        self.visits: list[tuple] = []  # generation only: marked visits to invoice

    # ---- shared --------------------------------------------------------------------------------

    def new_id(self, at: int) -> int:
        self._counter += 1
        millis = at * 1000 + self.rng.randrange(1000)
        return (millis << 20) | (self._counter * 7919 & 0xFFFFF)

    def _definition(self) -> list[dict]:
        def options(names):
            return [{"name": n, "token": self._token()} for n in names]

        return [
            {
                "name": "Insurance coverage",
                "token": self._token(),
                "fields": [
                    {
                        "name": "Provider",
                        "type": "radiobuttons",
                        "other": {"enabled": True},
                        "token": self._token(),
                        "options": options(PROVIDERS),
                    },
                    {"name": "Policy number", "type": "text", "token": self._token()},
                ],
            },
            {
                "name": "Referral",
                "token": self._token(),
                "fields": [
                    {
                        "name": "Referred by",
                        "type": "radiobuttons",
                        "other": {"enabled": False},
                        "token": self._token(),
                        "options": options(REFERRERS),
                    },
                ],
            },
            {
                "name": "Programs",
                "token": self._token(),
                "fields": [
                    {
                        "name": "Programs",
                        "type": "checkboxes",
                        "token": self._token(),
                        "options": options(PROGRAMS),
                    },
                ],
            },
        ]

    def custom_fields(self, rng: random.Random, current: dict | None = None) -> dict:
        """A patient's filled-in custom fields (a new random filling, or ``current`` with one
        value changed: a new insurer, a program joined or left, a new policy number)."""
        if current is None:
            chosen = {
                "Provider": rng.choice(PROVIDERS) if rng.random() < 0.6 else None,
                "Referred by": rng.choice(REFERRERS) if rng.random() < 0.5 else None,
                "Programs": set(rng.sample(PROGRAMS, rng.choice((0, 0, 1, 1, 2, 3)))),
            }
            policy = None
        else:
            chosen = {"Provider": None, "Referred by": None, "Programs": set()}
            policy = None
            for section in current["sections"]:
                for f in section["fields"]:
                    picked = [o["name"] for o in f.get("options", ()) if o.get("selected")]
                    if f["type"] == "checkboxes":
                        chosen[f["name"]] = set(picked)
                    elif f["type"] == "radiobuttons":
                        chosen[f["name"]] = picked[0] if picked else None
                    else:
                        policy = f.get("value")
            what = rng.randrange(3)
            if what == 0:
                chosen["Provider"] = rng.choice([p for p in PROVIDERS if p != chosen["Provider"]])
                policy = None
            elif what == 1:
                chosen["Programs"] ^= {rng.choice(PROGRAMS)}
            else:
                chosen["Referred by"] = rng.choice(REFERRERS)
        if chosen["Provider"] and policy is None:
            policy = f"{chosen['Provider'][:3].upper()}-{rng.randint(10_000, 99_999)}"
        sections = []
        for section in self.sections:
            fields = []
            for f in section["fields"]:
                field = {k: v for k, v in f.items() if k != "options"}
                if "options" in f:
                    picked = chosen[f["name"]]
                    picked = picked if isinstance(picked, set) else {picked}
                    field["options"] = [
                        {**o, "selected": True} if o["name"] in picked else dict(o)
                        for o in f["options"]
                    ]
                elif policy and chosen["Provider"]:
                    field["value"] = policy
                fields.append(field)
            sections.append({**section, "fields": fields})
        return {"sections": sections}

    def _invoice(
        self,
        rng: random.Random,
        *,
        created: int,
        visit: tuple | None,
        patient: dict,
        business: int,
        now: int,
        settle: bool,
    ) -> dict:
        """One invoice raised at ``created``: for ``visit`` (ends, patient, business,
        practitioner, appointment, arrived, minutes, is_class) or a product sale. With
        ``settle`` its later history up to ``now`` is drawn too (generation)."""
        if visit is None:
            amount, prac, appointment = float(rng.choice((25, 39, 45, 60))), None, None
        else:
            _ends, _pid, business, prac, appointment, arrived, minutes, is_class = visit
            amount = price(minutes, is_class) if arrived else 50.0
        discount = round(amount * 0.15, 2) if patient.get("concession_type") else 0.0
        status, closed, updated, deleted = 10, None, created, None
        roll = rng.random()
        if roll < 0.78:  # paid at the desk
            status, closed = 20, created
        elif settle and roll < 0.90:  # paid later
            paid = created + rng.randint(1, 30) * DAY
            if paid <= now:
                status, closed, updated = 20, paid, paid
        elif settle and roll < 0.93:
            shut = created + rng.randint(1, 60) * DAY
            if shut <= now:
                status, closed, updated = 30, shut, shut
        elif settle and roll < 0.94:  # overpaid: the balance is the patient's credit
            credited = created + rng.randint(0, 10) * DAY
            if credited <= now:
                status, updated = 40, credited
        if settle and rng.random() < 0.005:
            deleted = min(now, updated + rng.randint(0, 5) * DAY)
            updated = deleted
        iid = self.new_id(created)
        tz = self.c.catalogue.business(business).place["tz"]
        rec = records.invoice(
            id=iid,
            created=created,
            updated=updated,
            number=0,  # numbered below, in order of creation
            issue_date=local_date(created, tz),
            status=status,
            closed=closed,
            net=amount - discount,
            discount=discount,
            invoice_to=None if rng.random() < 0.7 else patient["label"],
            patient_id=int(patient["id"]),
            business_id=business,
            practitioner_id=prac,
            appointment_id=appointment,
            deleted=deleted,
        )
        return rec

    # ---- generation ----------------------------------------------------------------------------

    def note_visit(
        self,
        ends: int,
        patient_id: int,
        business: int,
        practitioner: int,
        appointment: int,
        arrived: bool | None,
        minutes: int,
        is_class: bool = False,
    ) -> None:
        """A generated visit (called as the clinic generates; draws nothing)."""
        if arrived is not None:
            self.visits.append(
                (ends, patient_id, business, practitioner, appointment, arrived, minutes, is_class)
            )

    def generate(self, out: dict[str, list], now: int, seed_text: str) -> None:
        """Add alerts, invoices and custom fields to a generated clinic's bulk lists."""
        rng = random.Random(f"{seed_text}:extras")
        patients = out["patients"]
        by_id = {int(p["id"]): p for p in patients}
        alerts = out["medical_alerts"]
        for p in patients:
            created = math.floor(parse_ts(p["created_at"]))
            roll = rng.random()
            for _ in range(2 if roll < 0.08 else 1 if roll < 0.30 else 0):
                at = created + rng.randint(0, 400) * DAY + rng.randint(0, DAY - 1)
                if at > now:
                    continue
                name = rng.choice(TAG_ALERTS if rng.random() < 0.55 else CLINICAL_ALERTS)
                alert = records.medical_alert(
                    id=self.new_id(at), created=at, updated=at, patient_id=int(p["id"]), name=name
                )
                removed = rng.random()
                if removed < 0.15:
                    gone = at + rng.randint(1, 300) * DAY
                    if gone <= now:
                        alert["archived_at"] = alert["updated_at"] = fmt_ts(gone)
                elif removed < 0.18:
                    gone = min(now, at + rng.randint(1, 300) * DAY)
                    alert["deleted_at"] = alert["updated_at"] = fmt_ts(gone)
                alerts.append(alert)
            if rng.random() < 0.5:
                p["custom_fields"] = self.custom_fields(rng)
                if rng.random() < 0.2:  # changed since
                    changed = created + rng.randint(1, 700) * DAY
                    if changed <= now:
                        p["custom_fields"] = self.custom_fields(rng, p["custom_fields"])
                        updated = max(changed, math.floor(parse_ts(p["updated_at"])))
                        p["updated_at"] = fmt_ts(updated)
        invoices = []
        for visit in self.visits:
            ends, pid, business, *_rest = visit
            arrived = visit[5]
            if rng.random() >= (0.93 if arrived else 0.25):
                continue
            created = ends + rng.randint(0, 7200)
            if created > now or pid not in by_id:
                continue
            invoices.append(
                self._invoice(
                    rng,
                    created=created,
                    visit=visit,
                    patient=by_id[pid],
                    business=business,
                    now=now,
                    settle=True,
                )
            )
        self.visits = []
        for p in patients:  # products sold over the counter: invoices with no appointment
            if rng.random() < 0.05:
                at = math.floor(parse_ts(p["created_at"])) + rng.randint(0, 700) * DAY
                business = self.c._home.get(int(p["id"]))
                if at <= now and business is not None:
                    invoices.append(
                        self._invoice(
                            rng,
                            created=at,
                            visit=None,
                            patient=p,
                            business=business,
                            now=now,
                            settle=True,
                        )
                    )
        invoices.sort(key=lambda rec: (rec["created_at"], int(rec["id"])))
        for rec in invoices:
            rec["number"] = self.next_number
            self.next_number += 1
            if rec["status"] == 10 and not rec["deleted_at"]:
                self.open_invoices.append(int(rec["id"]))
        out["invoices"] = [Row(rec) for rec in invoices]

    # ---- the clock -----------------------------------------------------------------------------

    def invoice_visit(self, appt: dict, arrived: bool, t: int) -> int:
        """The clock marked an appointment at ``t``: its invoice is raised then (most attended
        visits, some no-shows' fees), paid at the desk or left open. Returns 1 if raised."""
        rng = self.rng
        if rng.random() >= (0.93 if arrived else 0.25):
            return 0
        pid = int(appt["patient"]["links"]["self"].rsplit("/", 1)[1])
        patients = self.c.tables["patients"]
        if pid not in patients.rows:
            return 0
        starts = parse_ts(appt["starts_at"])
        visit = (
            t,
            pid,
            int(appt["business"]["links"]["self"].rsplit("/", 1)[1]),
            int(appt["practitioner"]["links"]["self"].rsplit("/", 1)[1]),
            int(appt["id"]),
            arrived,
            (parse_ts(appt["ends_at"]) - starts) // 60,
            False,
        )
        rec = self._invoice(
            rng,
            created=t,
            visit=visit,
            patient=patients.record(pid),
            business=visit[2],
            now=t,
            settle=False,
        )
        self._add_invoice(rec)
        return 1

    def _add_invoice(self, rec: dict) -> None:
        rec["number"] = self.next_number
        self.next_number += 1
        self.c.tables["invoices"].put(rec)
        if rec["status"] == 10:
            self.open_invoices.append(int(rec["id"]))

    def advance(self, first: int, last: int, scale: float) -> dict[str, int]:
        """The new resources' own changes in [first, last] (after the clinic's, same interval)."""
        done = dict.fromkeys(EXTRA_RATES, 0)
        events = sorted(
            (self.rng.randint(first, last), kind)
            for kind, rate in EXTRA_RATES.items()
            for _ in range(poisson(self.rng, rate * scale))
        )
        for t, kind in events:
            done[kind] += getattr(self, kind)(t)
        return done

    def _patient(self, t: int) -> dict | None:
        """A random active patient who existed at ``t``."""
        index = self.c.tables["patients"].indexes["created_at"]
        hi = bisect_right(index, (t << 64) | ID_MASK)
        for _ in range(20 if hi else 0):
            rec = self.c.tables["patients"].record(index[self.rng.randrange(hi)] & ID_MASK)
            if not rec["archived_at"]:
                return rec
        return None

    def alerts_added(self, t: int) -> int:
        p = self._patient(t)
        if p is None:
            return 0
        name = self.rng.choice(TAG_ALERTS if self.rng.random() < 0.55 else CLINICAL_ALERTS)
        self.c.tables["medical_alerts"].put(
            records.medical_alert(
                id=self.new_id(t), created=t, updated=t, patient_id=int(p["id"]), name=name
            )
        )
        return 1

    def alerts_removed(self, t: int) -> int:
        """An alert taken off a patient: archived (the current API's way), 1 in 8 deleted."""
        table = self.c.tables["medical_alerts"]
        index = table.indexes["created_at"]
        hi = bisect_right(index, (t << 64) | ID_MASK)
        for _ in range(10 if hi else 0):
            alert_id = index[self.rng.randrange(hi)] & ID_MASK
            rec = table.record(alert_id)
            if rec["archived_at"]:
                continue
            if self.rng.random() < 0.125:
                table.remove(alert_id)
                self.c._hard_deleted["medical_alerts"].add(alert_id)
            else:
                rec["archived_at"] = rec["updated_at"] = fmt_ts(t)
                table.put(rec)
            return 1
        return 0

    def invoices_sold(self, t: int) -> int:
        p = self._patient(t)
        if p is None:
            return 0
        business = self.c._home.get(int(p["id"]))
        if business is None:
            return 0
        rec = self._invoice(
            self.rng, created=t, visit=None, patient=p, business=business, now=t, settle=False
        )
        self._add_invoice(rec)
        return 1

    def _open_invoice(self) -> dict | None:
        table = self.c.tables["invoices"]
        while self.open_invoices:
            i = self.rng.randrange(len(self.open_invoices))
            iid = self.open_invoices[i]
            self.open_invoices[i] = self.open_invoices[-1]
            self.open_invoices.pop()
            if iid in table.rows:
                rec = table.record(iid)
                if rec["status"] == 10:
                    return rec
        return None

    def _settle(self, t: int, status: int) -> int:
        rec = self._open_invoice()
        if rec is None:
            return 0
        rec["status"] = status
        rec["status_description"] = records.INVOICE_STATUSES[status]
        if status != 40:
            rec["closed_at"] = fmt_ts(t)
        rec["updated_at"] = fmt_ts(max(t, parse_ts(rec["updated_at"])))
        self.c.tables["invoices"].put(rec)
        return 1

    def invoices_paid(self, t: int) -> int:
        return self._settle(t, 20)

    def invoices_closed(self, t: int) -> int:
        return self._settle(t, 30)

    def invoices_credited(self, t: int) -> int:
        return self._settle(t, 40)

    def invoices_deleted(self, t: int) -> int:
        """An invoice raised by mistake, deleted: it leaves every list (reconcile sees it go)."""
        table = self.c.tables["invoices"]
        index = table.indexes["created_at"]
        if not index:
            return 0
        lo = max(0, len(index) - 200)  # a recent one
        iid = index[self.rng.randrange(lo, len(index))] & ID_MASK
        table.remove(iid)
        self.c._hard_deleted["invoices"].add(iid)
        return 1

    def custom_fields_changed(self, t: int) -> int:
        p = self._patient(t)
        if p is None:
            return 0
        p["custom_fields"] = self.custom_fields(self.rng, p["custom_fields"] or None)
        p["updated_at"] = fmt_ts(max(t, parse_ts(p["updated_at"])))
        self.c.heal("patients", p)
        self.c.tables["patients"].put(p)
        return 1
