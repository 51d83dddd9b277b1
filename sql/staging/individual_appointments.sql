-- config: materialized=incremental, key=appointment_id
-- One row per Cliniko individual appointment (cancelled, archived and deleted ones too), typed.
-- Incremental: each build re-reads only the appointments the sync wrote since the last build.
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.individual_appointments')
),

-- Each field as text in one parse per row (json_extract_string with a list of paths), then
-- typed with try_cast: "" and wrong types become NULL. Half the CPU of a typed json_transform,
-- whose TIMESTAMPTZ fields cost more than parsing the payload (2,000,000 rows on a full build).
parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_extract_string(payload, [
            '$.created_at', '$.updated_at', '$.starts_at', '$.ends_at', '$.cancelled_at',
            '$.cancellation_reason', '$.archived_at', '$.deleted_at', '$.did_not_arrive',
            '$.patient_arrived', '$.booking_ip_address', '$.patient.links.self',
            '$.practitioner.links.self', '$.business.links.self', '$.appointment_type.links.self'
        ]) as f
    from source
),

renamed as (
    select
        id as appointment_id,
        cliniko_link_id(f[12]) as patient_id,
        cliniko_link_id(f[13]) as practitioner_id,
        cliniko_link_id(f[14]) as business_id,
        cliniko_link_id(f[15]) as appointment_type_id,
        try_cast(f[3] as timestamptz) as starts_at,
        try_cast(f[4] as timestamptz) as ends_at,
        try_cast(f[1] as timestamptz) as created_at,
        try_cast(f[2] as timestamptz) as updated_at,
        try_cast(f[5] as timestamptz) as cancelled_at,
        try_cast(f[6] as integer) as cancellation_reason,
        try_cast(f[7] as timestamptz) as archived_at,
        try_cast(f[8] as timestamptz) as deleted_at,
        removed_at,
        coalesce(try_cast(f[9] as boolean), false) as did_not_arrive,
        coalesce(try_cast(f[10] as boolean), false) as patient_arrived,
        cliniko_text(f[11]) is not null as booked_online,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
