-- config: materialized=incremental, key=group_appointment_id
-- One row per Cliniko group appointment (a class); who attended lives in staging.attendees.
with

-- On an incremental build, only what the sync wrote since the last good build.
source as (
    select id, payload, synced_at, removed_at
    from raw.group_appointments
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
            "created_at": "VARCHAR", "updated_at": "VARCHAR", "starts_at": "VARCHAR",
            "ends_at": "VARCHAR", "archived_at": "VARCHAR", "deleted_at": "VARCHAR",
            "max_attendees": "VARCHAR",
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
        cliniko_timestamp(p.starts_at) as starts_at,
        cliniko_timestamp(p.ends_at) as ends_at,
        try_cast(cliniko_text(p.max_attendees) as integer) as max_attendees,
        cliniko_timestamp(p.created_at) as created_at,
        cliniko_timestamp(p.updated_at) as updated_at,
        cliniko_timestamp(p.archived_at) as archived_at,
        cliniko_timestamp(p.deleted_at) as deleted_at,
        removed_at,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
