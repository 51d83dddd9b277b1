-- marts.patients holds no patient deleted in Cliniko (an archived patient stays: archiving
-- hides, deleting removes). One row per patient is marts.patient_rows' key, which the runner
-- refuses to store twice, so it is not asked again here.
select patients.patient_id
from marts.patients
where patients.patient_id in (
    select patient_id from staging.patients
    where deleted_at is not null or removed_at is not null
)
