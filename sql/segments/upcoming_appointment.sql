-- Patients with an upcoming appointment booked.
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, next_appointment_at.
with

patients as (
    select * from marts.patients
    where not is_archived
),

members as (
    select patients.patient_id, patients.next_appointment_at
    from patients
    where patients.next_appointment_at is not null
)

select * from members
