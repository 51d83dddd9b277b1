-- config: materialized=incremental, key=appointment_id
-- One row per Cliniko individual appointment (cancelled, archived and deleted ones too), typed.
-- Incremental: each build re-reads only the appointments the sync wrote since the last build.
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.individual_appointments')
),

-- The sync parsed each appointment's fields when it wrote it (raw.individual_appointments.fields:
-- each payload field typed, "" and wrong types as NULL, links as ids; tasks/cliniko/fields.py
-- says from which payload paths), so no build parses 2,000,000 payloads again.
renamed as (
    select
        id as appointment_id,
        fields.patient_id as patient_id,
        fields.practitioner_id as practitioner_id,
        fields.business_id as business_id,
        fields.appointment_type_id as appointment_type_id,
        fields.starts_at as starts_at,
        fields.ends_at as ends_at,
        fields.created_at as created_at,
        fields.updated_at as updated_at,
        fields.cancelled_at as cancelled_at,
        fields.cancellation_reason as cancellation_reason,
        fields.archived_at as archived_at,
        fields.deleted_at as deleted_at,
        removed_at,
        coalesce(fields.did_not_arrive, false) as did_not_arrive,
        coalesce(fields.patient_arrived, false) as patient_arrived,
        cliniko_text(fields.booking_ip_address) is not null as booked_online,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from source
)

select * from renamed
