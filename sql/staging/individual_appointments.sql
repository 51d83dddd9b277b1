-- config: materialized=incremental, key=appointment_id
-- One row per Cliniko individual appointment (cancelled, archived and deleted ones too), typed.
-- Incremental: each build re-reads only the appointments the sync wrote since the last build.
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.individual_appointments')
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "starts_at": "TIMESTAMPTZ",
            "ends_at": "TIMESTAMPTZ", "cancelled_at": "TIMESTAMPTZ", "cancellation_reason": "INTEGER",
            "archived_at": "TIMESTAMPTZ", "deleted_at": "TIMESTAMPTZ", "did_not_arrive": "BOOLEAN",
            "patient_arrived": "BOOLEAN", "booking_ip_address": "VARCHAR",
            "patient": {"links": {"self": "VARCHAR"}},
            "practitioner": {"links": {"self": "VARCHAR"}},
            "business": {"links": {"self": "VARCHAR"}},
            "appointment_type": {"links": {"self": "VARCHAR"}}
        }') as p
    from source
),

renamed as (
    select
        id as appointment_id,
        cliniko_link_id(p.patient.links.self) as patient_id,
        cliniko_link_id(p.practitioner.links.self) as practitioner_id,
        cliniko_link_id(p.business.links.self) as business_id,
        cliniko_link_id(p.appointment_type.links.self) as appointment_type_id,
        p.starts_at as starts_at,
        p.ends_at as ends_at,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.cancelled_at as cancelled_at,
        p.cancellation_reason as cancellation_reason,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        coalesce(p.did_not_arrive, false) as did_not_arrive,
        coalesce(p.patient_arrived, false) as patient_arrived,
        cliniko_text(p.booking_ip_address) is not null as booked_online,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
)

select * from renamed
