-- Patients whose insurer is Medibank: the patient custom field "Provider" of the section
-- "Insurance coverage" (radio buttons in Cliniko; staging.patient_custom_fields has one row per
-- selected option, or per text typed). A patient whose insurer changes leaves at the next build.
-- Copy this file and change the section, field and value to make a segment of another insurer,
-- referrer or program (sql/README.md, "A tag, three ways"). Columns: patient_id.
with

patients as (
    select * from marts.patients
    where not is_archived
),

custom_fields as (
    select * from staging.patient_custom_fields
),

insured as (
    select distinct patient_id
    from custom_fields
    where section = 'Insurance coverage' and field = 'Provider' and value = 'Medibank'
),

members as (
    select patients.patient_id
    from patients
    inner join insured on insured.patient_id = patients.patient_id
)

select * from members
