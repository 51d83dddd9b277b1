-- One row per Cliniko concession type (e.g. "Students"); patients link to one.
with

source as (
    select id, payload, synced_at, removed_at from raw.concession_types
),

renamed as (
    select
        id as concession_type_id,
        cliniko_text(payload->>'name') as concession_type_name,
        cliniko_timestamp(payload->>'created_at') as created_at,
        cliniko_timestamp(payload->>'updated_at') as updated_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from source
)

select * from renamed
