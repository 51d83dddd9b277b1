-- Patients who visited in the last 90 days.
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, last_visit_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

build_context as (
    select built_at from state.build_context
),

members as (
    select patients.patient_id, patients.last_visit_at
    from patients
    cross join build_context
    where patients.last_visit_at >= build_context.built_at - interval 90 days
)

select * from members
