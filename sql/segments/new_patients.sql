-- New patients: first visit within the last 6 months.
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, first_visit_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

build_context as (
    select built_at from state.build_context
),

members as (
    select patients.patient_id, patients.first_visit_at
    from patients
    cross join build_context
    where patients.first_visit_at >= build_context.built_at - interval 6 months
)

select * from members
