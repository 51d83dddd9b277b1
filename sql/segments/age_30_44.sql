-- Age group: 30 to 44 (whole years at the build; patients without a date of birth are in none).
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
    where patients.age between 30 and 44
)

select * from members
