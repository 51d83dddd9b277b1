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
            "name": "VARCHAR", "category": "VARCHAR", "duration_in_minutes": "INTEGER",
            "max_attendees": "INTEGER", "show_in_online_bookings": "BOOLEAN",
            "telehealth_enabled": "BOOLEAN",
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "archived_at": "TIMESTAMPTZ"
        }') as p
    from source
),

renamed as (
    select
        id as appointment_type_id,
        cliniko_text(p.name) as appointment_type_name,
        cliniko_text(p.category) as category,
        p.duration_in_minutes as duration_in_minutes,
        p.max_attendees as max_attendees,
        p.show_in_online_bookings as show_in_online_bookings,
        p.telehealth_enabled as telehealth_enabled,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.archived_at as archived_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
