-- Every appointment that is not deleted belongs to a patient in marts.patients. (Appointments
-- of patients deleted in Cliniko, or never synced, are kept with status 'deleted'.)
-- Counted, not listed: marts.patients has one row per patient, so the live appointments that
-- join one are as many as the live appointments exactly when none lacks its patient. Two
-- counts cost a quarter of an anti join over 2,000,000 appointments; to list the offenders:
--   select appointment_kind, appointment_id from marts.appointments
--   anti join marts.patients using (patient_id) where status <> 'deleted'
with

live_appointments as not materialized (
    select patient_id from marts.appointments
    where status <> 'deleted'
),

counts as (
    select
        (select count(*) from live_appointments) as appointments,
        (
            select count(*) from live_appointments
            inner join marts.patients on patients.patient_id = live_appointments.patient_id
        ) as with_a_patient
)

select appointments - with_a_patient as appointments_without_a_patient
from counts
where appointments <> with_a_patient
