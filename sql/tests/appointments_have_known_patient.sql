-- Every appointment belongs to a patient in marts.patients.
select appointments.appointment_kind, appointments.appointment_id
from marts.appointments
anti join marts.patients on patients.patient_id = appointments.patient_id
