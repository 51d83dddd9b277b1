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
--   next_appointment_id, next_appointment_at (UTC), next_appointment_type_id
with

patients as (
    select * from staging.patients
    where deleted_at is null and removed_at is null
),

appointments as (
    select * from marts.appointments
),

patient_visits as (
    select * from marts.patient_visits
),

build_context as (
    select built_at from state.build_context
),

appointment_totals as (
    select
        patient_id,
        count(*) filter (where is_visit) as visit_count,
        count(*) filter (where status in ('arrived', 'unmarked', 'upcoming')) as appointment_count,
        min(starts_at) filter (where is_visit) as first_visit_at,
        max(starts_at) filter (where is_visit) as last_visit_at,
        arg_min(appointment_id, starts_at) filter (where status = 'upcoming')
            as next_appointment_id,
        min(starts_at) filter (where status = 'upcoming') as next_appointment_at,
        arg_min(appointment_type_id, starts_at) filter (where status = 'upcoming')
            as next_appointment_type_id
    from appointments
    group by patient_id
),

visits_by_type as (
    select
        patient_id,
        map_from_entries(
            list((appointment_type_id, visits)) filter (where visits > 0)
        ) as visits_by_appointment_type
    from patient_visits
    group by patient_id
),

visits_by_category as (
    select
        patient_id,
        map_from_entries(list((category, visits))) as visits_by_category
    from (
        select patient_id, category, sum(visits)::bigint as visits
        from patient_visits
        where category is not null and visits > 0
        group by patient_id, category
    )
    group by patient_id
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
        appointment_totals.first_visit_at,
        appointment_totals.last_visit_at,
        greatest(appointment_totals.last_visit_at, patients.created_at) as last_seen_at,
        coalesce(appointment_totals.visit_count, 0) as visit_count,
        coalesce(appointment_totals.appointment_count, 0) as appointment_count,
        coalesce(visits_by_type.visits_by_appointment_type, map()) as visits_by_appointment_type,
        coalesce(visits_by_category.visits_by_category, map()) as visits_by_category,
        appointment_totals.next_appointment_id,
        appointment_totals.next_appointment_at,
        appointment_totals.next_appointment_type_id
    from patients
    cross join build_context
    left join appointment_totals on appointment_totals.patient_id = patients.patient_id
    left join visits_by_type on visits_by_type.patient_id = patients.patient_id
    left join visits_by_category on visits_by_category.patient_id = patients.patient_id
)

select * from final
