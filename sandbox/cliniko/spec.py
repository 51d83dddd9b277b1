"""What each simulated Cliniko list endpoint accepts, as data (the current OpenAPI reference;
its per-resource tables are copied in tests/fixtures/cliniko-reference.json, which
tests/sandbox/test_conformance.py holds these specs to).

Each endpoint only accepts filters on its documented fields; anything else is the real API's 400
"This column is not searchable.". Hidden rows are the real API's default exclusions: archived rows
come back only when the request filters on ``archived_at`` (``*`` = any value), cancelled
individual appointments and cancelled attendees only with a ``cancelled_at`` filter. Deleted rows
never appear in lists. Practitioners are one table split over two paths by ``active``.
Where the reference did not capture a resource's filter list (patients, businesses,
practitioners, concession types, medical alerts, invoices), the 2022 list stands, plus
``archived_at`` on patients and on medical alerts (the current API archives an alert with
``POST /medical_alerts/{id}/archive``; plain lists leave archived alerts out like every archived
row) and ``deleted_at`` on medical alerts (their 2022 payload has it). Invoices have no archive:
none is hidden, and a deleted invoice is in no list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Value types of filterable fields; they decide which q[] operators apply.
DATETIME, DATE, NUMBER, STRING, BOOLEAN, ARRAY = (
    "datetime",
    "date",
    "number",
    "string",
    "bool",
    "array",
)

_COMMON = {"id": NUMBER, "created_at": DATETIME, "updated_at": DATETIME}
_APPOINTMENT = {
    **_COMMON,
    "appointment_type_id": NUMBER,
    "archived_at": DATETIME,
    "business_id": NUMBER,
    "deleted_at": DATETIME,
    "ends_at": DATETIME,
    "practitioner_id": NUMBER,
    "repeated_from_id": NUMBER,
    "starts_at": DATETIME,
}


@dataclass(frozen=True)
class ResourceSpec:
    name: str  # path segment and the key of the list in responses
    filters: dict[str, str]  # documented q[] fields -> value type
    hidden: tuple[str, ...] = ()  # fields whose non-null rows are hidden unless filtered on
    # Timestamp fields kept unpacked on each row (fast filters and sorted indexes).
    indexed: tuple[str, ...] = field(default=("created_at", "updated_at"))


SPECS: dict[str, ResourceSpec] = {
    s.name: s
    for s in (
        ResourceSpec("businesses", dict(_COMMON)),
        ResourceSpec("practitioners", {**_COMMON, "user_id": NUMBER}),
        ResourceSpec(
            "appointment_types",
            {
                **_COMMON,
                "appointment_confirmation_template_ids": ARRAY,
                "appointment_reminder_template_ids": ARRAY,
                "archived_at": DATETIME,
                "category": STRING,
                "online_payments_mode": STRING,
                "show_in_online_bookings": BOOLEAN,
            },
            hidden=("archived_at",),
        ),
        ResourceSpec("concession_types", dict(_COMMON)),
        ResourceSpec("referral_source_types", dict(_COMMON)),
        ResourceSpec(
            "patients",
            {
                **_COMMON,
                "archived_at": DATETIME,
                "date_of_birth": DATE,
                "email": STRING,
                "first_name": STRING,
                "last_name": STRING,
                "old_reference_id": STRING,
            },
            hidden=("archived_at",),
        ),
        ResourceSpec("referral_sources", dict(_COMMON)),
        ResourceSpec(
            "medical_alerts",
            {**_COMMON, "archived_at": DATETIME, "deleted_at": DATETIME, "patient_id": NUMBER},
            hidden=("archived_at",),
        ),
        ResourceSpec(
            "invoices",
            {
                **_COMMON,
                "appointment_id": NUMBER,
                "business_id": NUMBER,
                "issue_date": DATE,
                "number": NUMBER,
                "patient_id": NUMBER,
                "practitioner_id": NUMBER,
                "status": NUMBER,
            },
        ),
        ResourceSpec(
            "individual_appointments",
            {
                **_APPOINTMENT,
                "cancelled_at": DATETIME,
                "did_not_arrive": BOOLEAN,
                "patient_id": NUMBER,
            },
            hidden=("cancelled_at", "archived_at"),
            indexed=("created_at", "updated_at", "starts_at"),
        ),
        ResourceSpec(
            "group_appointments",
            {**_APPOINTMENT, "patient_ids": ARRAY},  # no patient_id: the class has many
            hidden=("archived_at",),
            indexed=("created_at", "updated_at", "starts_at"),
        ),
        ResourceSpec(
            "attendees",
            {
                **_COMMON,
                "appointment_id": NUMBER,
                "archived_at": DATETIME,
                "booking_id": NUMBER,
                "cancelled_at": DATETIME,
                "deleted_at": DATETIME,
                "patient_case_id": NUMBER,
                "patient_id": NUMBER,
            },
            hidden=("cancelled_at", "archived_at"),
        ),
    )
}

# Extra list paths served from a table with a row predicate: (resource, field, required value).
PARTITIONS: dict[str, tuple[str, str, object]] = {
    "practitioners": ("practitioners", "active", True),
    "practitioners/inactive": ("practitioners", "active", False),
}
