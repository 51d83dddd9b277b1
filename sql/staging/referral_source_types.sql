-- One row per Cliniko referral source type (e.g. "Client", "GP").
with

source as (
    select id, payload, synced_at, removed_at from raw.referral_source_types
),

renamed as (
    select
        id as referral_source_type_id,
        cliniko_text(payload->>'name') as referral_source_type_name,
        cliniko_text(payload->>'referrer_type') as referrer_type,
        cliniko_timestamp(payload->>'created_at') as created_at,
        cliniko_timestamp(payload->>'updated_at') as updated_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from source
)

select * from renamed
