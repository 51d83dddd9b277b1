-- One row per Cliniko practitioner, active and inactive (the sync reads both lists into one
-- table). is_active comes from the payload's `active` field; NULL when Cliniko did not send it.
with

source as (
    select id, payload, synced_at, removed_at from raw.practitioners
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "title": "VARCHAR", "first_name": "VARCHAR", "last_name": "VARCHAR",
            "display_name": "VARCHAR", "label": "VARCHAR", "designation": "VARCHAR",
            "active": "BOOLEAN", "show_in_online_bookings": "BOOLEAN",
            "user": {"links": {"self": "VARCHAR"}},
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ"
        }') as p
    from source
),

renamed as (
    select
        id as practitioner_id,
        cliniko_text(p.title) as title,
        cliniko_text(p.first_name) as first_name,
        cliniko_text(p.last_name) as last_name,
        coalesce(
            cliniko_text(p.display_name),
            cliniko_text(p.label),
            concat_ws(' ', cliniko_text(p.first_name), cliniko_text(p.last_name))
        ) as display_name,
        cliniko_text(p.designation) as designation,
        p.active as is_active,
        p.show_in_online_bookings as show_in_online_bookings,
        cliniko_link_id(p.user.links.self) as user_id,
        p.created_at as created_at,
        p.updated_at as updated_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
