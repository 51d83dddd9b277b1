-- Recall band: last visit 14 to 29 days ago, and nothing booked since (no upcoming appointment).
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
    where patients.next_appointment_at is null
        and patients.last_visit_at <= build_context.built_at - interval 14 days
        and patients.last_visit_at > build_context.built_at - interval 30 days
)

select * from members
