"""Payloads shaped like Cliniko's official examples (tests/fixtures/cliniko-examples/).

Same field names and nesting; ids are strings; foreign keys are ``{"links": {"self": ...}}``
written against the ``BASE`` placeholder. Each carries exactly the fields of the current
reference's table for its resource (tests/fixtures/cliniko-reference.json; checked by
tests/sandbox/test_conformance.py), so fields the 2022 examples lack are here too (``archived_at``
and the cancellation fields on attendees, ``merged_at``/``merged_with_patient`` on every patient,
``label``, ``country_code``, ``time_zone_identifier``, ``active``, ``display_name``, ``id`` on
referral sources). Empty timestamps are ``""`` on
patients from the clinic's first year (as in the patients example) and ``null`` everywhere else,
so a client meets both. All people are fake.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.cliniko.store import fmt_ts, link

CANCELLATION_REASONS = {
    10: "Feeling better",
    20: "Condition worse",
    30: "Sick",
    31: "COVID-19",
    40: "Away",
    50: "Other",
    60: "Work",
}

FIRST_NAMES = [
    "Olivia",
    "Charlotte",
    "Amelia",
    "Isla",
    "Mia",
    "Ava",
    "Grace",
    "Chloe",
    "Sophie",
    "Ruby",
    "Zoe",
    "Emily",
    "Harper",
    "Matilda",
    "Ella",
    "Lily",
    "Evie",
    "Sienna",
    "Willow",
    "Hannah",
    "Jack",
    "Oliver",
    "Noah",
    "William",
    "Leo",
    "Thomas",
    "James",
    "Henry",
    "Charlie",
    "Lucas",
    "Ethan",
    "Mason",
    "Liam",
    "Harrison",
    "Samuel",
    "Max",
    "Archie",
    "Hunter",
    "Riley",
    "Jacob",
    "Aroha",
    "Mere",
    "Wiremu",
    "Tane",
    "Priya",
    "Wei",
    "Mei",
    "Hiroshi",
    "Yuki",
    "Minh",
    "Linh",
    "Fatima",
    "Omar",
    "Aisha",
    "Mateo",
    "Sofia",
    "Lukas",
    "Anika",
    "Kai",
    "Talia",
]
LAST_NAMES = [
    "Smith",
    "Jones",
    "Williams",
    "Brown",
    "Wilson",
    "Taylor",
    "Johnson",
    "White",
    "Martin",
    "Anderson",
    "Thompson",
    "Nguyen",
    "Thomas",
    "Walker",
    "Harris",
    "Lee",
    "Ryan",
    "Robinson",
    "Kelly",
    "King",
    "Davis",
    "Wright",
    "Evans",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Jackson",
    "Clarke",
    "Patel",
    "Khan",
    "Lewis",
    "James",
    "Phillips",
    "Mitchell",
    "Campbell",
    "Turner",
    "Parker",
    "Cooper",
    "Edwards",
    "Morris",
    "Ngata",
    "Parata",
    "Tapsell",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Singh",
    "Kaur",
    "Tran",
    "Pham",
    "Le",
    "Murphy",
    "O'Brien",
    "Sullivan",
    "Fitzgerald",
    "Rossi",
    "Russo",
    "Papadopoulos",
    "Kowalski",
    "Muller",
    "Schmidt",
    "Novak",
    "Hughes",
    "Price",
    "Bennett",
]
NICKNAMES = {
    "William": "Will",
    "Thomas": "Tom",
    "James": "Jim",
    "Samuel": "Sam",
    "Charlotte": "Charlie",
    "Matilda": "Tilly",
    "Elizabeth": "Liz",
    "Jacob": "Jake",
    "Oliver": "Ollie",
    "Alexander": "Alex",
    "Harrison": "Harry",
    "Wiremu": "Bill",
    "Hiroshi": "Hiro",
}
STREETS = [
    "High",
    "Smith",
    "Station",
    "Church",
    "Victoria",
    "Albert",
    "Queen",
    "King",
    "George",
    "Park",
    "Beach",
    "Hill",
    "Bridge",
]


@dataclass(frozen=True)
class Outcome:
    """Where a booking stands: when it last changed, and whether it was cancelled, archived,
    attended (True), missed (False) or not marked (None)."""

    updated: int
    cancelled: int | None = None
    reason: int | None = None
    note: str | None = None
    archived: int | None = None
    arrived: bool | None = None


def _ts(value: int | None, empty: object = None) -> object:
    return fmt_ts(value) if value is not None else empty


def business(
    *,
    id: int,
    created: int,
    name: str,
    place: dict,
    appointment_type_ids: list[int],
    online: bool,
) -> dict:
    slug = "".join(c for c in name.lower() if c.isalnum())
    return {
        "additional_information": None,
        "additional_invoice_information": None,
        "address_1": f"{12 + id % 80} {STREETS[id % len(STREETS)]} Street",
        "address_2": None,
        "appointment_reminders_enabled": True,
        "appointment_type_ids": [str(i) for i in appointment_type_ids],
        "archived_at": None,
        "business_name": name,
        "business_registration_name": "ABN" if place["country_code"] == "AU" else "NZBN",
        "business_registration_value": str(10_000_000_000 + id % 89_999_999_999),
        "city": place["city"],
        "contact_information": f"Phone: {place['phone']}",
        "country": place["country"],
        "country_code": place["country_code"],
        "created_at": fmt_ts(created),
        "deleted_at": None,
        "display_name": None,
        "email_reply_to": f"reception@{slug}.example.com",
        "id": str(id),
        "label": name,
        "post_code": place["post_code"],
        "show_in_online_bookings": online,
        "state": place["state"],
        "time_zone": place["tz_label"],
        "time_zone_identifier": place["tz"],
        "updated_at": fmt_ts(created),
        "website_address": f"https://www.{slug}.example.com",
        "practitioners": link(f"businesses/{id}/practitioners"),
        "appointments": link(f"businesses/{id}/appointments?page=1"),
        "links": link(f"businesses/{id}")["links"],
    }


def practitioner(
    *,
    id: int,
    created: int,
    updated: int,
    first: str,
    last: str,
    title: str,
    designation: str,
    active: bool,
    user_id: int,
    default_type_id: int | None,
) -> dict:
    return {
        "active": active,
        "created_at": fmt_ts(created),
        "designation": designation,
        "description": None,
        "display_name": f"{first} {last}",
        "first_name": first,
        "id": str(id),
        "label": f"{title} {first} {last}".strip(),
        "last_name": last,
        "show_in_online_bookings": active and designation != "Reception",
        "title": title,
        "updated_at": fmt_ts(updated),
        "default_appointment_type": link(f"appointment_types/{default_type_id}")
        if default_type_id
        else None,
        "practitioner_reference_numbers": link(
            f"practitioners/{id}/practitioner_reference_numbers?page=1"
        ),
        "user": link(f"users/{user_id}"),
        "appointment_types": link(f"practitioners/{id}/appointment_types"),
        "appointments": link(f"practitioners/{id}/appointments?page=1"),
        "invoices": link(f"practitioners/{id}/invoices?page=1"),
        "links": link(f"practitioners/{id}")["links"],
    }


def appointment_type(
    *,
    id: int,
    created: int,
    updated: int,
    name: str,
    category: str | None,
    minutes: int,
    max_attendees: int,
    online: bool,
    color: str,
    archived: int | None,
) -> dict:
    return {
        "add_deposit_to_account_credit": False,
        "appointment_confirmation_template_ids": [],
        "appointment_reminder_template_ids": [],
        "appointment_type_billable_items": link(f"appointment_types/{id}/billable_items"),
        "appointment_type_products": link(f"appointment_types/{id}/products"),
        "archived_at": _ts(archived),
        "category": category,
        "color": color,
        "created_at": fmt_ts(created),
        "deposit_price": None,
        "description": None,
        "duration_in_minutes": minutes,
        "id": str(id),
        "max_attendees": max_attendees,
        "name": name,
        "online_bookings_lead_time_hours": None,
        "online_payments_enabled": False,
        "online_payments_mode": "no_payment",
        "show_in_online_bookings": online,
        "telehealth_enabled": False,
        "updated_at": fmt_ts(updated),
        "billable_item": None,
        "product": None,
        "practitioners": link(f"appointment_types/{id}/practitioners"),
        "treatment_note_template": None,
        "links": link(f"appointment_types/{id}")["links"],
    }


def concession_type(*, id: int, created: int, name: str) -> dict:
    return {
        "id": str(id),
        "name": name,
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(created),
        "links": link(f"concession_types/{id}")["links"],
    }


def referral_source_type(
    *, id: int, created: int, name: str, referrer_type: str | None, subcategories: list | None
) -> dict:
    referrers = {"Patient": "patients", "Contact": "contacts"}.get(referrer_type or "")
    return {
        "id": str(id),
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(created),
        "name": name,
        "referrers": link(referrers) if referrers else None,
        "referrer_type": referrer_type,
        "subcategories": subcategories,
        "links": link(f"referral_source_types/{id}")["links"],
    }


def referral_source(
    *,
    id: int,
    created: int,
    patient_id: int,
    type_id: int,
    referrer_type: str | None,
    referrer_id: int | None,
    subcategory: str | None,
) -> dict:
    referrer = None
    if referrer_type == "Patient":
        referrer = link(f"patients/{referrer_id}")
    elif referrer_type == "Contact":
        referrer = link(f"contacts/{referrer_id}")
    return {
        "id": str(id),
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(created),
        "links": link(f"patients/{patient_id}/referral_source")["links"],
        "referrer": referrer,
        "referrer_type": referrer_type,
        "subcategory": subcategory,
        "notes": None,
        "patient": link(f"patients/{patient_id}"),
        "referral_source_type": link(f"referral_source_types/{type_id}"),
    }


def patient(
    *,
    id: int,
    created: int,
    first: str,
    last: str,
    preferred: str | None,
    title: str,
    sex: str,
    email: str | None,
    dob: str | None,
    phones: list[dict],
    email_marketing: bool | None,
    sms_marketing: bool | None,
    reminder_type: str,
    place: dict,
    time_zone: str | None,
    concession_type_id: int | None,
    legacy_blanks: bool,
) -> dict:
    # legacy_blanks: older rows carry "" for unset timestamps (patients example), newer ones null.
    empty = "" if legacy_blanks else None
    return {
        "accepted_privacy_policy": email_marketing is not None or None,
        "accepted_email_marketing": email_marketing,
        "accepted_sms_marketing": sms_marketing,
        "address_1": f"{1 + id % 199} {STREETS[id % len(STREETS)]} Road",
        "address_2": "",
        "address_3": "",
        "archived_at": empty,
        "city": place["city"],
        "country": place["country"],
        "country_code": place["country_code"],
        "created_at": fmt_ts(created),
        "custom_fields": None,
        "date_of_birth": dob,
        "deleted_at": empty,
        "dva_card_number": "",
        "email": email,
        "emergency_contact": "",
        "first_name": first,
        "gender": None,
        "gender_identity": None,
        "id": str(id),
        "invoice_default_to": None,
        "invoice_email": None,
        "invoice_extra_information": None,
        "label": f"{preferred or first} {last}",
        "last_name": last,
        "medicare": "",
        "medicare_reference_number": "",
        "merged_at": None,
        "merged_with_patient": None,
        "notes": "",
        "appointment_notes": "",
        "occupation": "",
        "old_reference_id": "",
        "patient_phone_numbers": phones,
        "post_code": place["post_code"],
        "preferred_first_name": preferred or "",
        "pronouns": None,
        "receives_cancellation_emails": reminder_type != "None",
        "receives_confirmation_emails": reminder_type != "None",
        "referral_source": "",
        "reminder_type": reminder_type,
        "sex": sex,
        "state": place["state"],
        "title": title,
        "time_zone": time_zone,
        "updated_at": fmt_ts(created),
        "concession_type": link(f"concession_types/{concession_type_id}")
        if concession_type_id
        else None,
        "referring_doctor": None,
        "medical_alerts": link(f"patients/{id}/medical_alerts?page=1"),
        "invoices": link(f"patients/{id}/invoices?page=1"),
        "appointments": link(f"patients/{id}/appointments?page=1"),
        "attendees": link(f"patients/{id}/attendees?page=1"),
        "latest_booking": None,
        "patient_attachments": link(f"patients/{id}/patient_attachments?page=1"),
        "relationships": link(f"patients/{id}/relationships?page=1"),
        "links": link(f"patients/{id}")["links"],
    }


def individual_appointment(
    *,
    id: int,
    created: int,
    starts: int,
    minutes: int,
    patient_id: int,
    patient_name: str,
    practitioner_id: int,
    business_id: int,
    type_id: int,
    online: bool,
    outcome: Outcome | None = None,
    reminders: tuple[bool, bool] = (False, False),  # (email sent, SMS sent)
) -> dict:
    o = outcome or Outcome(updated=created)
    return {
        "id": str(id),
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(o.updated),
        "archived_at": _ts(o.archived),
        "booking_ip_address": f"203.0.113.{id % 250 + 1}" if online else None,
        "cancellation_note": o.note,
        "cancellation_reason": o.reason,
        "cancellation_reason_description": CANCELLATION_REASONS.get(o.reason, ""),
        "conflicts": link(f"individual_appointments/{id}/conflicts"),
        "did_not_arrive": o.arrived is False,
        "email_reminder_sent": reminders[0],
        "has_patient_appointment_notes": False,
        "invoice_status": None,
        "notes": None,
        "online_booking_policy_accepted": True if online else None,
        "patient_arrived": o.arrived is True,
        "patient_case": None,
        "patient_name": patient_name,
        "repeat_rule": {},
        "repeats": None,
        "repeated_from": None,
        "sms_reminder_sent": reminders[1],
        "telehealth_url": f"https://sandbox.cliniko.test/telehealth/{id}",
        "treatment_note_status": None,
        "deleted_at": None,
        "starts_at": fmt_ts(starts),
        "ends_at": fmt_ts(starts + minutes * 60),
        "cancelled_at": _ts(o.cancelled),
        "appointment_type": link(f"appointment_types/{type_id}"),
        "business": link(f"businesses/{business_id}"),
        "practitioner": link(f"practitioners/{practitioner_id}"),
        "patient": link(f"patients/{patient_id}"),
        "attendees": link(f"individual_appointments/{id}/attendees"),
        "links": link(f"individual_appointments/{id}")["links"],
    }


def group_appointment(
    *,
    id: int,
    created: int,
    starts: int,
    minutes: int,
    max_attendees: int,
    practitioner_id: int,
    business_id: int,
    type_id: int,
) -> dict:
    return {
        "id": str(id),
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(created),
        "archived_at": None,
        "conflicts": link(f"group_appointments/{id}/conflicts"),
        "max_attendees": max_attendees,
        "notes": None,
        "patient_ids": [],
        "repeat_rule": {},
        "repeats": None,
        "repeated_from": None,
        "deleted_at": None,
        "starts_at": fmt_ts(starts),
        "ends_at": fmt_ts(starts + minutes * 60),
        "telehealth_url": f"https://sandbox.cliniko.test/telehealth/g{id}",
        "appointment_type": link(f"appointment_types/{type_id}"),
        "business": link(f"businesses/{business_id}"),
        "practitioner": link(f"practitioners/{practitioner_id}"),
        "attendees": link(f"group_appointments/{id}/attendees"),
        "links": link(f"group_appointments/{id}")["links"],
    }


def attendee(
    *,
    id: int,
    created: int,
    booking_id: int,
    patient_id: int,
    online: bool,
    outcome: Outcome | None = None,
) -> dict:
    o = outcome or Outcome(updated=created)
    return {
        "id": str(id),
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(o.updated),
        "archived_at": _ts(o.archived),
        "arrived": o.arrived,
        "booking_ip_address": f"198.51.100.{id % 250 + 1}" if online else None,
        "cancellation_note": o.note,
        "cancellation_reason": o.reason,
        "cancellation_reason_description": CANCELLATION_REASONS.get(o.reason, ""),
        "cancellation_url": f"https://sandbox.cliniko.test/bookings/cancel/{id}",
        "email_reminder_sent": False,
        "invoice_status": None,
        "notes": None,
        "online_booking_policy_accepted": True if online else None,
        "sent_email_reminders_count": 0,
        "sent_sms_reminders_count": 0,
        "sms_reminder_sent": False,
        "telehealth_url": f"https://sandbox.cliniko.test/telehealth/a{id}",
        "treatment_note_status": None,
        "deleted_at": None,
        "cancelled_at": _ts(o.cancelled),
        "booking": link(f"bookings/{booking_id}"),
        "patient": link(f"patients/{patient_id}"),
        "patient_case": None,
        "patient_forms": link(f"attendees/{id}/patient_forms"),
        "invoices": link(f"attendees/{id}/invoices"),
        "links": link(f"attendees/{id}")["links"],
    }


def user(*, id: int, created: int, first: str, last: str) -> dict:
    return {
        "id": str(id),
        "title": "",
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "role": "administrator",
        "time_zone": "Melbourne",
        "user_active": True,
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(created),
        "links": link(f"users/{id}")["links"],
    }


INVOICE_STATUSES = {10: "Open", 20: "Paid", 30: "Closed", 40: "Open (credit)"}


def medical_alert(
    *,
    id: int,
    created: int,
    updated: int,
    patient_id: int,
    name: str,
    archived: int | None = None,
) -> dict:
    """Medical Alert (2022 example: name, patient link, deleted_at; the current API archives an
    alert with ``POST /medical_alerts/{id}/archive``, so it carries ``archived_at`` too)."""
    return {
        "archived_at": _ts(archived),
        "created_at": fmt_ts(created),
        "deleted_at": None,
        "id": str(id),
        "name": name,
        "updated_at": fmt_ts(updated),
        "patient": link(f"patients/{patient_id}"),
        "links": link(f"medical_alerts/{id}")["links"],
    }


def money(amount: float) -> str:
    """Amounts as Cliniko's invoice examples write them: decimal strings ("50.0", "2367.18")."""
    return repr(round(amount, 2))


def invoice(
    *,
    id: int,
    created: int,
    updated: int,
    number: int,
    issue_date: str,
    status: int,
    closed: int | None,
    net: float,
    discount: float,
    invoice_to: str | None,
    patient_id: int,
    business_id: int,
    practitioner_id: int | None,
    appointment_id: int | None,
    deleted: int | None = None,
) -> dict:
    """Invoice, field for field as the 2022 examples (amounts as strings, ``status`` 10 Open,
    20 Paid, 30 Closed, 40 Open (credit) with its ``status_description``; an invoice not raised
    from an appointment has no appointment or practitioner link)."""
    return {
        "id": str(id),
        "issue_date": issue_date,
        "total_amount": money(net),
        "tax_amount": "0.0",
        "net_amount": money(net),
        "notes": None if id % 3 else "",
        "status": status,
        "invoice_to": invoice_to,
        "patient_extra_information": None if id % 3 else "",
        "number": number,
        "discounted_amount": money(discount),
        "status_description": INVOICE_STATUSES[status],
        "created_at": fmt_ts(created),
        "updated_at": fmt_ts(updated),
        "deleted_at": _ts(deleted),
        "closed_at": _ts(closed),
        "appointment": link(f"appointments/{appointment_id}") if appointment_id else None,
        "business": link(f"businesses/{business_id}"),
        "practitioner": link(f"practitioners/{practitioner_id}") if practitioner_id else None,
        "patient": link(f"patients/{patient_id}"),
        "links": link(f"invoices/{id}")["links"],
    }
