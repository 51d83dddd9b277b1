-- marts.patients has one row per patient, and no patient deleted in Cliniko.
select patients.patient_id
from marts.patients
left join staging.patients as staged on staged.patient_id = patients.patient_id
group by patients.patient_id
having count(*) > 1
    or bool_or(staged.deleted_at is not null or staged.removed_at is not null)
