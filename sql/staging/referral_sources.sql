-- One row per referred patient: how they came to the clinic. Old payloads carry no id, so the
-- patient (from its link, or the raw key the sync used) identifies the row.
with

source as (
    select id, payload, synced_at, removed_at from raw.referral_sources
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "id": "VARCHAR", "notes": "VARCHAR", "subcategory": "VARCHAR",
            "referrer_type": "VARCHAR",
            "patient": {"links": {"self": "VARCHAR"}},
            "referrer": {"links": {"self": "VARCHAR"}},
            "referral_source_type": {"links": {"self": "VARCHAR"}},
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ"
        }') as p
    from source
),

renamed as (
    select
        coalesce(cliniko_link_id(p.patient.links.self), id) as patient_id,
        try_cast(cliniko_text(p.id) as bigint) as referral_source_id,
        cliniko_link_id(p.referral_source_type.links.self) as referral_source_type_id,
        cliniko_text(p.referrer_type) as referrer_type,
        cliniko_link_id(p.referrer.links.self) as referrer_id,
        cliniko_text(p.subcategory) as subcategory,
        cliniko_text(p.notes) as notes,
        p.created_at as created_at,
        p.updated_at as updated_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
