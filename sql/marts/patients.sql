-- The entire database: one row per patient not deleted in Cliniko (archived and merged-away
-- patients included, flagged), for transactional messages and as the base of the lists.
--
-- Columns:
--   patient_id, title, first_name, last_name, preferred_first_name,
--   greeting_name         preferred first name, else first name
--   email                 as typed;  email_normalised: trimmed, lower-case (the list key)
--   email_is_valid        syntax check (email-validator, no DNS)
--   mobile_number         the first "Mobile" number as typed;  mobile_e164: +61..., NULL if invalid
--   accepted_email_marketing, accepted_sms_marketing, accepted_privacy_policy (NULL = no answer)
--   reminder_type         Cliniko's 'SMS & Email' | 'SMS' | 'Email' | 'None'
--   receives_confirmation_emails, time_zone, country_code, concession_type_id
--   date_of_birth, age    (whole years at the build)
--   created_at, updated_at, archived_at, merged_at, merged_into_patient_id (UTC)
--   is_archived           archived or merged away in Cliniko
--   first_visit_at, last_visit_at   first/last arrived-or-unmarked past appointment (UTC)
--   last_seen_at          last visit, else when the patient was created: the active-patient
--                         limit of the marketing list measures from here
--   visit_count           visits (every type, admin "dummy" ones too: see visits_by_category)
--   appointment_count     kept appointments (visits + upcoming)
--   visits_by_appointment_type  MAP(appointment_type_id -> visits)
--   visits_by_category          MAP(category -> visits), e.g. visits_by_category['Admin Only']
--   next_appointment_id, next_appointment_kind, next_appointment_at (UTC),
--   next_appointment_type_id
with

patients as (
    select * from staging.patients
    where deleted_at is null and removed_at is null
),

patient_visits as (
    select * from marts.patient_visits
),

build_context as (
    select built_at from state.build_context
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
        date_part('year', age(build_context.built_at::date, patients.date_of_birth))::integer
            as age,
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
        patient_visits.next_appointment_type_id
    from patients
    cross join build_context
    left join patient_visits on patient_visits.patient_id = patients.patient_id
)

select * from final
