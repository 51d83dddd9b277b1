-- config: materialized=incremental, key=group_appointment_id
-- One row per Cliniko group appointment (a class); who attended lives in staging.attendees.
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.group_appointments')
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "starts_at": "TIMESTAMPTZ",
            "ends_at": "TIMESTAMPTZ", "archived_at": "TIMESTAMPTZ", "deleted_at": "TIMESTAMPTZ",
            "max_attendees": "INTEGER",
            "practitioner": {"links": {"self": "VARCHAR"}},
            "business": {"links": {"self": "VARCHAR"}},
            "appointment_type": {"links": {"self": "VARCHAR"}}
        }') as p
    from source
),

renamed as (
    select
        id as group_appointment_id,
        cliniko_link_id(p.practitioner.links.self) as practitioner_id,
        cliniko_link_id(p.business.links.self) as business_id,
        cliniko_link_id(p.appointment_type.links.self) as appointment_type_id,
        p.starts_at as starts_at,
        p.ends_at as ends_at,
        p.max_attendees as max_attendees,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
