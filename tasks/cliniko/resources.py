"""The Cliniko resources we sync, as data: one row per resource, not a function each.

API facts (docs/reference.md, Cliniko): list endpoints hide archived rows (and appointments and
attendees hide cancelled ones) unless asked with ``q[]=<field>:*``; inactive practitioners live on their own
path; ids are 64-bit integers sent as strings; foreign keys are links. Dimensions come before facts
so an appointment never points at a type or practitioner we have not loaded.

Adding a resource is one line here: its raw table, watermark and reconciliation follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    name: str  # raw table name, and the key of the list in Cliniko's response
    paths: tuple[str, ...]  # list endpoints; each has its own watermark, all land in one table
    include_hidden: tuple[str, ...] = ()  # q[] fields to ask with ":*" so hidden rows come back
    # Old documented payloads (referral sources, 2022) carry no id: key those on a link instead.
    fallback_key_link: str | None = None

    @property
    def table(self) -> str:
        return f"raw.{self.name}"


RESOURCES: tuple[Resource, ...] = (
    # Dimensions first.
    Resource("businesses", ("/businesses",)),
    Resource("practitioners", ("/practitioners", "/practitioners/inactive")),
    Resource("appointment_types", ("/appointment_types",), ("archived_at",)),
    Resource("concession_types", ("/concession_types",)),
    Resource("referral_source_types", ("/referral_source_types",)),
    Resource("patients", ("/patients",), ("archived_at",)),
    Resource("referral_sources", ("/referral_sources",), fallback_key_link="patient"),
    # Facts.
    Resource(
        "individual_appointments", ("/individual_appointments",), ("cancelled_at", "archived_at")
    ),
    Resource("group_appointments", ("/group_appointments",), ("archived_at",)),
    # /attendees hides cancelled and archived attendances like the appointments do: a cancelled
    # class place exists only with cancelled_at:* (else it would look deleted at reconcile).
    Resource("attendees", ("/attendees",), ("cancelled_at", "archived_at")),
    # A removed medical alert is archived (hidden unless archived_at:*); deleted invoices are in
    # no list (reconcile sees them go).
    Resource("medical_alerts", ("/medical_alerts",), ("archived_at",)),
    Resource("invoices", ("/invoices",)),
)

BY_NAME = {r.name: r for r in RESOURCES}


def get(name: str) -> Resource:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"Unknown Cliniko resource '{name}'. Known: {', '.join(BY_NAME)}") from None
