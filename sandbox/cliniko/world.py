"""The fixed parts of a generated clinic: places, the appointment-type catalogue, staff, and the
calendar arithmetic (business hours and class slots in each business's own time zone).

Contact details are fictitious: emails at example.com/.net/.org (some deliberately invalid),
Australian mobiles in the 0491 57x xxx block, landlines in 5550 xxxx, NZ mobiles in 021 555.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY = 86_400
MINUTE = 60

PLACES = (
    {
        "city": "Melbourne",
        "state": "Victoria",
        "post_code": "3000",
        "country": "Australia",
        "country_code": "AU",
        "tz": "Australia/Melbourne",
        "tz_label": "Melbourne",
        "phone": "03 5550 0100",
        "landline_prefix": "03 5550",
    },
    {
        "city": "Perth",
        "state": "Western Australia",
        "post_code": "6000",
        "country": "Australia",
        "country_code": "AU",
        "tz": "Australia/Perth",
        "tz_label": "Perth",
        "phone": "08 5550 0100",
        "landline_prefix": "08 5550",
    },
    {
        "city": "Auckland",
        "state": "Auckland",
        "post_code": "1010",
        "country": "New Zealand",
        "country_code": "NZ",
        "tz": "Pacific/Auckland",
        "tz_label": "Auckland",
        "phone": "09 555 0100",
        "landline_prefix": "09 555",
    },
    {
        "city": "Brisbane",
        "state": "Queensland",
        "post_code": "4000",
        "country": "Australia",
        "country_code": "AU",
        "tz": "Australia/Brisbane",
        "tz_label": "Brisbane",
        "phone": "07 5550 0100",
        "landline_prefix": "07 5550",
    },
)
BUSINESS_NAMES = ("Physio & Pilates", "Sports Physiotherapy", "Health Studio", "Movement Clinic")

ADMIN_CATEGORY = "Admin Only"
ADMIN_TAG_TYPE = "Admin - Insurance Patient"

# (category, name, minutes, max_attendees, online, colour, archived?)
CATALOGUE = (
    ("Physiotherapy", "Initial Physiotherapy Consultation", 60, 1, True, "#1E88E5", False),
    ("Physiotherapy", "Standard Physiotherapy Consultation", 30, 1, True, "#42A5F5", False),
    ("Physiotherapy", "Extended Physiotherapy Consultation", 45, 1, True, "#90CAF9", False),
    ("Physiotherapy", "Dry Needling", 30, 1, False, "#0D47A1", True),
    ("Massage", "Remedial Massage 60 min", 60, 1, True, "#43A047", False),
    ("Massage", "Remedial Massage 30 min", 30, 1, True, "#81C784", False),
    ("Massage", "Hot Stone Massage", 75, 1, False, "#1B5E20", True),
    ("Pilates", "Pilates Assessment", 45, 1, True, "#8E24AA", False),
    ("Pilates", "Clinical Pilates Class", 55, 8, True, "#BA68C8", False),
    ("Pilates", "Mat Pilates Class", 45, 12, False, "#CE93D8", False),
    (None, "Phone Consultation", 15, 1, False, "#9E9E9E", False),
    (ADMIN_CATEGORY, ADMIN_TAG_TYPE, 5, 1, False, "#FF7043", False),
    (ADMIN_CATEGORY, "Admin - Program Enrolment", 5, 1, False, "#FFAB91", False),
)
CLINICAL = ("Physiotherapy", "Massage", "Pilates")
DESIGNATION = {
    "Physiotherapy": "Physiotherapist",
    "Massage": "Remedial Massage Therapist",
    "Pilates": "Pilates Instructor",
    ADMIN_CATEGORY: "Reception",
}
# Class timetable: the first n days and hours are used, n growing with the demand for classes.
CLASS_DAYS = (0, 2, 5, 1, 3, 4)  # Monday, Wednesday, Saturday, then the other weekdays
CLASS_HOURS = (7, 18, 9, 17, 12, 19, 8, 16, 10, 13, 15, 20)


@dataclass
class Business:
    id: int
    place: dict
    admin: bool  # the separate "Admin" business of seed 000


@dataclass
class AppointmentType:
    id: int
    name: str
    category: str | None
    minutes: int
    max_attendees: int
    archived: bool

    @property
    def is_group(self) -> bool:
        return self.max_attendees > 1


@dataclass
class Staff:
    id: int
    business: int
    category: str
    first: str
    last: str
    start: int
    end: int | None  # set for inactive practitioners: they stopped working then

    def works_at(self, ts: int) -> bool:
        return self.start <= ts and (self.end is None or ts < self.end)


class Catalogue:
    """Businesses, appointment types and staff, with the look-ups generation needs hot."""

    def __init__(self) -> None:
        self.businesses: list[Business] = []
        self.types: list[AppointmentType] = []
        self.staff: list[Staff] = []
        self._by_id: dict[int, Business] = {}
        self._types_in: dict[tuple[str | None, bool], list[AppointmentType]] = {}
        self._staff_in: dict[tuple[int, str], list[Staff]] = {}

    def add_business(self, business: Business) -> None:
        self.businesses.append(business)
        self._by_id[business.id] = business

    def add_type(self, type_: AppointmentType) -> None:
        self.types.append(type_)
        if not type_.archived:
            self._types_in.setdefault((type_.category, type_.is_group), []).append(type_)

    def add_staff(self, staff: Staff) -> None:
        self.staff.append(staff)
        self._staff_in.setdefault((staff.business, staff.category), []).append(staff)

    def business(self, business_id: int) -> Business:
        return self._by_id[business_id]

    def admin_business(self) -> Business | None:
        return next((b for b in self.businesses if b.admin), None)

    def clinical_businesses(self) -> list[Business]:
        return [b for b in self.businesses if not b.admin]

    def types_in(self, category: str | None, *, group: bool = False) -> list[AppointmentType]:
        return self._types_in.get((category, group), [])

    def type_named(self, name: str) -> AppointmentType:
        return next(t for t in self.types if t.name == name)

    def practitioner(self, rng: random.Random, business: int, category: str, ts: int) -> Staff:
        """Someone who works in that category at that business at that time (anyone in the
        category, then anyone, when nobody does)."""
        working = (
            self._staff_in.get((business, category))
            or [s for s in self.staff if s.category == category]
            or self.staff
        )
        at_work = [s for s in working if s.works_at(ts)] or working
        return rng.choice(at_work)


@lru_cache(maxsize=65_536)
def local_epoch(tz: str, ordinal: int, hour: int, minute: int) -> int:
    """Epoch seconds of a wall-clock time on a date (proleptic ordinal) in a zone."""
    day = datetime.fromordinal(ordinal)
    return int(day.replace(hour=hour, minute=minute, tzinfo=ZoneInfo(tz)).timestamp())


def local_ordinal(tz: str, ts: int) -> int:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).toordinal()


def appointment_slot(rng: random.Random, tz: str, around: int) -> int:
    """A business-hours start (Mon-Sat, 08:00-17:45 local) on the local day of ``around``."""
    ordinal = local_ordinal(tz, around)
    if datetime.fromordinal(ordinal).weekday() == 6:
        ordinal += 1
    return local_epoch(tz, ordinal, rng.randint(8, 17), rng.choice((0, 15, 30, 45)))


def class_timetable(classes_per_week: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Class days and hours giving about ``classes_per_week`` classes (at least two)."""
    wanted = max(2, math.ceil(classes_per_week))
    days = min(len(CLASS_DAYS), wanted)
    hours = min(len(CLASS_HOURS), math.ceil(wanted / days))
    return CLASS_DAYS[:days], tuple(sorted(CLASS_HOURS[:hours]))


def class_slots_after(tz: str, ts: int, timetable: tuple[tuple[int, ...], tuple[int, ...]]):
    """Class start times after ``ts``, in order, on the timetable's days and hours."""
    days, hours = timetable
    ordinal = local_ordinal(tz, ts)
    while True:
        if datetime.fromordinal(ordinal).weekday() in days:
            for hour in hours:
                start = local_epoch(tz, ordinal, hour, 0)
                if start > ts:
                    yield start
        ordinal += 1


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean ``lam`` (a normal approximation above 50), drawn
    from ``rng``: how many events of a daily rate happen on one simulated day."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
