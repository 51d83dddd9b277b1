-- Age group: 65 and over (whole years at the build; patients without a date of birth are in none).
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, age.
with

patients as (
    select * from marts.patients
    where not is_archived
),

members as (
    select patients.patient_id, patients.age
    from patients
    where patients.age >= 65
)

select * from members
