-- One row per Cliniko business (location), typed. time_zone is the IANA name Cliniko sends as
-- time_zone_identifier (older payloads lack it: marts fall back to the clinic's time zone).
with

source as (
    select id, payload, synced_at, removed_at from raw.businesses
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "business_name": "VARCHAR", "display_name": "VARCHAR", "label": "VARCHAR",
            "country_code": "VARCHAR", "time_zone_identifier": "VARCHAR",
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ",
            "archived_at": "TIMESTAMPTZ", "deleted_at": "TIMESTAMPTZ"
        }') as p
    from source
),

renamed as (
    select
        id as business_id,
        cliniko_text(p.business_name) as business_name,
        coalesce(cliniko_text(p.display_name), cliniko_text(p.label), cliniko_text(p.business_name))
            as display_name,
        upper(cliniko_text(p.country_code)) as country_code,
        cliniko_text(p.time_zone_identifier) as time_zone,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
