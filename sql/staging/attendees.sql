-- config: materialized=incremental, key=attendee_id
-- One row per Cliniko attendee: a patient's place in a booking. Cliniko lists attendees of
-- individual appointments here too; marts.appointments keeps only those of group appointments.
-- arrived: true = arrived, false = did not arrive, NULL = not marked.
with

-- On an incremental build, only what the sync wrote since the last good build.
source as (
    select id, payload, synced_at, removed_at
    from raw.attendees
    where getvariable('changes_since') is null
        or synced_at > getvariable('changes_since')
        or removed_at > getvariable('changes_since')
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "created_at": "VARCHAR", "updated_at": "VARCHAR", "arrived": "VARCHAR",
            "cancelled_at": "VARCHAR", "cancellation_reason": "VARCHAR",
            "archived_at": "VARCHAR", "deleted_at": "VARCHAR", "booking_ip_address": "VARCHAR",
            "patient": {"links": {"self": "VARCHAR"}},
            "booking": {"links": {"self": "VARCHAR"}}
        }') as p
    from source
),

renamed as (
    select
        id as attendee_id,
        cliniko_link_id(p.patient.links.self) as patient_id,
        cliniko_link_id(p.booking.links.self) as booking_id,
        cliniko_bool(p.arrived) as arrived,
        cliniko_timestamp(p.created_at) as created_at,
        cliniko_timestamp(p.updated_at) as updated_at,
        cliniko_timestamp(p.cancelled_at) as cancelled_at,
        try_cast(cliniko_text(p.cancellation_reason) as integer) as cancellation_reason,
        cliniko_timestamp(p.archived_at) as archived_at,
        cliniko_timestamp(p.deleted_at) as deleted_at,
        removed_at,
        cliniko_text(p.booking_ip_address) is not null as booked_online,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
