-- "Appointment type attended" (seed 000): patients booked into the admin-only dummy type
-- "Admin - Insurance Patient", the clinic's tag for insurance-funded patients. The dummy
-- appointment is a tag, not a visit (its category is in clinic.yaml's tag_categories, so it
-- counts toward no visit or appointment count): any kept booking of the type counts, past or
-- upcoming.
-- Copy this file and change the type name to tag another group. Columns: patient_id, tagged_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

appointments as (
    select * from marts.appointments
),

tagged as (
    select patient_id, min(starts_at) as tagged_at
    from appointments
    where appointment_type_name = 'Admin - Insurance Patient'
        and is_kept
    group by patient_id
),

members as (
    select patients.patient_id, tagged.tagged_at
    from patients
    inner join tagged on tagged.patient_id = patients.patient_id
)

select * from members
