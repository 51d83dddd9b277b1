-- One row per medical alert a patient carries now in Cliniko (GET /medical_alerts: id, name,
-- patient link, created_at, updated_at, deleted_at; archived_at where Cliniko sends it).
-- Deleted, archived and hard-deleted alerts (removed_at: gone from Cliniko at the last
-- reconcile) drop out: a removed alert no longer tags its patient. Removing an alert and adding
-- it again makes a new alert (new id, new created_at) in Cliniko.
-- name: as the front desk typed it; name_normalised: trimmed, lower case, the way triggers and
-- segments compare names. Alert names can be clinical: read them here, never copy them into
-- logs or messages.
with

source as (
    select id, payload, synced_at, removed_at from raw.medical_alerts
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "name": "VARCHAR", "patient": {"links": {"self": "VARCHAR"}},
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ",
            "archived_at": "TIMESTAMPTZ", "deleted_at": "TIMESTAMPTZ"
        }') as p
    from source
),

renamed as (
    select
        id as medical_alert_id,
        cliniko_link_id(p.patient.links.self) as patient_id,
        cliniko_text(p.name) as name,
        lower(trim(cliniko_text(p.name))) as name_normalised,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
),

current_alerts as (
    select * exclude (archived_at, deleted_at, removed_at)
    from renamed
    where archived_at is null and deleted_at is null and removed_at is null
        and patient_id is not null and name is not null
)

select * from current_alerts
