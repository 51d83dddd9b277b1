-- Every appointment that is not deleted belongs to a patient in marts.patients. (Appointments
-- of patients deleted in Cliniko, or never synced, are kept with status 'deleted'.)
select appointments.appointment_kind, appointments.appointment_id
from marts.appointments
anti join marts.patients on patients.patient_id = appointments.patient_id
where appointments.status <> 'deleted'
