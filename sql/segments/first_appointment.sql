-- Patients who have had exactly one visit (their first appointment).
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, first_visit_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

members as (
    select patients.patient_id, patients.first_visit_at
    from patients
    where patients.visit_count = 1
)

select * from members
