-- config: materialized=incremental, key=attendee_id
-- One row per Cliniko attendee: a patient's place in a booking. Cliniko lists attendees of
-- individual appointments here too; marts.appointments keeps only those of group appointments.
-- arrived: true = arrived, NULL = not marked; false = not arrived, which is also what a class's
-- attendees carry before it starts (marts.appointments reads it as a miss only after the start).
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.attendees')
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "arrived": "BOOLEAN",
            "cancelled_at": "TIMESTAMPTZ", "cancellation_reason": "INTEGER",
            "archived_at": "TIMESTAMPTZ", "deleted_at": "TIMESTAMPTZ", "booking_ip_address": "VARCHAR",
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
        p.arrived as arrived,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.cancelled_at as cancelled_at,
        p.cancellation_reason as cancellation_reason,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        cliniko_text(p.booking_ip_address) is not null as booked_online,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
