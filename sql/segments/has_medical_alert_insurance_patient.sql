-- Patients tagged with the medical alert "Insurance patient" (seed 000: "Medical alerts are the
-- most common way to tag patients in Cliniko for targeting purposes"). Only alerts the patient
-- carries now: a removed (archived or deleted) alert drops out of staging.medical_alerts, and the
-- patient leaves the segment at the next build. Names compare trimmed and case ignored.
-- Copy this file and change the name to tag another group (sql/README.md, "A tag, three ways").
-- Columns: patient_id, tagged_at (when the alert was added; the earliest if added twice).
with

patients as (
    select * from marts.patients
    where not is_archived
),

alerts as (
    select * from staging.medical_alerts
),

tagged as (
    select patient_id, min(created_at) as tagged_at
    from alerts
    where name_normalised = 'insurance patient'
    group by patient_id
),

members as (
    select patients.patient_id, tagged.tagged_at
    from patients
    inner join tagged on tagged.patient_id = patients.patient_id
)

select * from members
