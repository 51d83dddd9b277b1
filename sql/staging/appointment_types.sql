-- One row per Cliniko appointment type, archived ones too (old appointments point at them).
-- category is Cliniko's plain text category (e.g. "Admin Only" for seed 000's dummy types).
with

source as (
    select id, payload, synced_at, removed_at from raw.appointment_types
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "name": "VARCHAR", "category": "VARCHAR", "duration_in_minutes": "VARCHAR",
            "max_attendees": "VARCHAR", "show_in_online_bookings": "VARCHAR",
            "telehealth_enabled": "VARCHAR",
            "created_at": "VARCHAR", "updated_at": "VARCHAR", "archived_at": "VARCHAR"
        }') as p
    from source
),

renamed as (
    select
        id as appointment_type_id,
        cliniko_text(p.name) as appointment_type_name,
        cliniko_text(p.category) as category,
        try_cast(cliniko_text(p.duration_in_minutes) as integer) as duration_in_minutes,
        try_cast(cliniko_text(p.max_attendees) as integer) as max_attendees,
        cliniko_bool(p.show_in_online_bookings) as show_in_online_bookings,
        cliniko_bool(p.telehealth_enabled) as telehealth_enabled,
        cliniko_timestamp(p.created_at) as created_at,
        cliniko_timestamp(p.updated_at) as updated_at,
        cliniko_timestamp(p.archived_at) as archived_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
