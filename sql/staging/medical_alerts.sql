-- One row per medical alert a patient carries now in Cliniko: staging.medical_alert_history
-- without the removed ones (archived, deleted, or gone from Cliniko at the last reconcile), so
-- a removed alert no longer tags its patient. Removing an alert and adding it again makes a new
-- alert (new id, new created_at) in Cliniko.
-- name: as the front desk typed it; name_normalised: trimmed, lower case, the way triggers and
-- segments compare names. Alert names can be clinical: read them here, never copy them into
-- logs or messages.
with

alerts as (
    select * from staging.medical_alert_history
),

current_alerts as (
    select * exclude (removed_at)
    from alerts
    where removed_at is null
)

select * from current_alerts
