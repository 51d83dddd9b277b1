-- One row per medical alert ever synced (GET /medical_alerts with archived_at:*: id, name,
-- patient link, created_at, updated_at, deleted_at; archived_at where Cliniko sends it), the
-- removed ones too. removed_at: when it came off the patient: archived (the current API's way
-- of removing an alert), deleted, or, for one gone from Cliniko at a reconcile, when the
-- reconcile saw it go (at or after the deletion). NULL: the patient carries it now
-- (staging.medical_alerts, which segments read). Triggers read the removed ones to tell a
-- patient newly tagged from one who carried the alert when the trigger went live and had it
-- removed and added again (tasks/triggers/patient_records.py).
-- name: as the front desk typed it; name_normalised: trimmed of any whitespace (line breaks,
-- tabs, no-break spaces too, as in staging.patient_custom_fields), lower case, the way triggers
-- and segments compare names. Alert names can be clinical: read them here, never copy them
-- into logs or messages.
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
        lower(regexp_replace(p.name, '^[[:space:]\pZ]+|[[:space:]\pZ]+$', '', 'g'))
            as name_normalised,
        p.created_at as created_at,
        p.updated_at as updated_at,
        coalesce(p.archived_at, p.deleted_at, removed_at) as removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
),

named as (
    select * from renamed
    where patient_id is not null and name is not null
)

select * from named
