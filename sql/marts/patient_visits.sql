-- Visits per patient and appointment type: what "appointment type attended" segments read.
-- One row per (patient_id, appointment_type_id) the patient has any appointment of.
-- Columns: patient_id, appointment_type_id, appointment_type_name, category, visits (arrived or
-- past unmarked), appointments (kept: visits + upcoming), first_visit_at, last_visit_at,
-- next_appointment_at (UTC).
with

appointments as (
    select * from marts.appointments
),

per_type as (
    select
        patient_id,
        appointment_type_id,
        any_value(appointment_type_name) as appointment_type_name,
        any_value(category) as category,
        count(*) filter (where is_visit) as visits,
        count(*) filter (where status in ('arrived', 'unmarked', 'upcoming')) as appointments,
        min(starts_at) filter (where is_visit) as first_visit_at,
        max(starts_at) filter (where is_visit) as last_visit_at,
        min(starts_at) filter (where status = 'upcoming') as next_appointment_at
    from appointments
    group by patient_id, appointment_type_id
)

select * from per_type
