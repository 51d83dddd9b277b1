-- Patients who have visited but have no upcoming appointment booked.
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, last_visit_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

members as (
    select patients.patient_id, patients.last_visit_at
    from patients
    where patients.visit_count > 0 and patients.next_appointment_at is null
)

select * from members
