-- Loyal patients: more than 10 visits.
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, visit_count.
with

patients as (
    select * from marts.patients
    where not is_archived
),

members as (
    select patients.patient_id, patients.visit_count
    from patients
    where patients.visit_count > 10
)

select * from members
