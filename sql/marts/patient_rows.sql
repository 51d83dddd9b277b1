-- config: materialized=incremental, key=patient_id
-- marts.patients' rows, kept incrementally (read marts.patients, not this): every patient ever
-- synced, deleted ones flagged (is_deleted) so that a deletion replaces the patient's row here
-- and marts.patients, a view, leaves it out. Rewriting all 100,000 rows on every build was a
-- third of a 5-minute rebuild (most of it writing the table at COMMIT); a build now recomputes
-- only the patients whose record the sync changed, whose appointments marts.appointments
-- recomputed (the same patients as marts.patient_visits), and whose age changed since the
-- previous build (birthdays). Columns: those of marts.patients, then is_deleted.
with

-- Import CTEs of large tables are NOT MATERIALIZED: read more than once, DuckDB would
-- otherwise copy the whole table first, and an incremental build would pay for millions
-- of rows instead of the few its filters keep.

patients as not materialized (
    select * from staging.patients
),

patient_visits as (
    select * from marts.patient_visits
),

appointments as not materialized (
    select patient_id, refreshed_by from marts.appointments
),

-- ages count in whole years at the build's date in the clinic's time zone (the birthday
-- journey's), not UTC's: a Melbourne patient turned a year older at 11:00 on the day
build_context as (
    select
        timezone(clinic_time_zone, built_at)::date as today,
        timezone(clinic_time_zone, getvariable('previous_built_at'))::date as previous_day
    from state.build_context
),

patients_in_scope as (
    select patient_id from patients
    where getvariable('changes_since') is null
        or loaded_at > getvariable('changes_since')
    union
    -- birthdays: whose age in whole years differs from the previous build's. Only on an
    -- incremental build (a full one takes everyone above) of another date than the previous
    -- one (the same date gives every patient the same age): a build on the same day computes
    -- no one's age twice.
    select patients.patient_id
    from patients
    cross join build_context
    where getvariable('changes_since') is not null
        and build_context.today is distinct from build_context.previous_day
        and date_part('year', age(build_context.today, patients.date_of_birth))
            is distinct from
            date_part('year', age(build_context.previous_day, patients.date_of_birth))
    union
    select patient_id from appointments
    where refreshed_by = getvariable('build_id')
    union
    -- an appointment moved to another patient: the patient it left (marts.patient_visits)
    select patient_id from replaced_patients('marts.appointments')
),

final as (
    select
        patients.patient_id,
        patients.title,
        patients.first_name,
        patients.last_name,
        patients.preferred_first_name,
        coalesce(patients.preferred_first_name, patients.first_name) as greeting_name,
        patients.email,
        patients.email_normalised,
        coalesce(patients.email_is_valid, false) as email_is_valid,
        patients.mobile_number,
        patients.mobile_e164,
        patients.accepted_email_marketing,
        patients.accepted_sms_marketing,
        patients.accepted_privacy_policy,
        patients.reminder_type,
        patients.receives_confirmation_emails,
        patients.time_zone,
        patients.country_code,
        patients.concession_type_id,
        patients.date_of_birth,
        date_part('year', age(build_context.today, patients.date_of_birth))::integer as age,
        patients.created_at,
        patients.updated_at,
        patients.archived_at,
        patients.merged_at,
        patients.merged_into_patient_id,
        patients.archived_at is not null or patients.merged_at is not null as is_archived,
        patient_visits.first_visit_at,
        patient_visits.last_visit_at,
        greatest(patient_visits.last_visit_at, patients.created_at) as last_seen_at,
        coalesce(patient_visits.visit_count, 0) as visit_count,
        coalesce(patient_visits.appointment_count, 0) as appointment_count,
        coalesce(patient_visits.visits_by_appointment_type, map()) as visits_by_appointment_type,
        coalesce(patient_visits.visits_by_category, map()) as visits_by_category,
        patient_visits.next_appointment_id,
        patient_visits.next_appointment_kind,
        patient_visits.next_appointment_at,
        patient_visits.next_appointment_type_id,
        patients.deleted_at is not null or patients.removed_at is not null as is_deleted
    from patients
    cross join build_context
    left join patient_visits on patient_visits.patient_id = patients.patient_id
    where patients.patient_id in (select patient_id from patients_in_scope)
)

select * from final
