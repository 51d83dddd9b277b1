-- config: materialized=incremental, key=patient_id
-- Each patient's appointment history in one row: visit counts in total, per appointment type
-- and per category, first/last visit and the next booking. marts.patients joins it.
-- Incremental: recomputes the patients whose appointments this build refreshed, or whose
-- patient record the sync changed (e.g. merged away: their appointments moved to another).
--
-- Visits, appointments and the next booking read marts.appointments' is_visit and is_care:
-- a tag (clinic.yaml tag_categories, seed 000) is none of them. The two maps count what the
-- patient attended per type and category, tags included, so a segment can still target a tag.
--
-- Columns:
--   patient_id
--   visit_count                 visits (is_visit: arrived or past unmarked, not a tag)
--   appointment_count           appointments that count (is_care): visits + upcoming, not tags
--   first_visit_at, last_visit_at (UTC)   first/last visit
--   visits_by_appointment_type  MAP(appointment_type_id -> attended), tag types included
--   visits_by_category          MAP(category -> attended), e.g. visits_by_category['Admin Only']
--   next_appointment_id, next_appointment_kind, next_appointment_at (UTC),
--   next_appointment_type_id    the next upcoming appointment that counts (not a tag); of two
--                               at the same moment, the one numbered first (kind, then id)
with

-- Import CTEs of large tables are NOT MATERIALIZED: read more than once, DuckDB would
-- otherwise copy the whole table first, and an incremental build would pay for millions
-- of rows instead of the few its filters keep.

patients as not materialized (
    select * from staging.patients
),

appointments as not materialized (
    select * from marts.appointments
),

patients_in_scope as (
    select patient_id from appointments
    where getvariable('changes_since') is null
        or refreshed_by = getvariable('build_id')
    union
    select patient_id from patients
    where getvariable('changes_since') is null
        or loaded_at > getvariable('changes_since')
    union
    -- an appointment moved to another patient: the patient it left has one visit fewer
    select patient_id from replaced_patients('marts.appointments')
),

scoped_appointments as (
    select * from appointments
    where patient_id in (select patient_id from patients_in_scope)
),

per_type as (
    select
        patient_id,
        appointment_type_id,
        any_value(category) as category,
        count(*) filter (where is_attended) as visits
    from scoped_appointments
    group by patient_id, appointment_type_id
),

by_type as (
    select
        patient_id,
        map(
            list(appointment_type_id) filter (where visits > 0 and appointment_type_id is not null),
            list(visits) filter (where visits > 0 and appointment_type_id is not null)
        ) as visits_by_appointment_type
    from per_type
    group by patient_id
),

by_category as (
    select
        patient_id,
        map(list(category), list(visits)) as visits_by_category
    from (
        select patient_id, category, sum(visits)::bigint as visits
        from per_type
        where category is not null and visits > 0
        group by patient_id, category
    )
    group by patient_id
),

totals as (
    select
        patient_id,
        count(*) filter (where is_visit) as visit_count,
        count(*) filter (where is_care) as appointment_count,
        min(starts_at) filter (where is_visit) as first_visit_at,
        max(starts_at) filter (where is_visit) as last_visit_at,
        -- one arg_min of the whole appointment: separate ones could mix two appointments that
        -- start at the same moment; sequence_number orders them (start, kind, id) and is unique
        -- among a patient's is_care appointments
        arg_min(
            {
                'id': appointment_id, 'kind': appointment_kind, 'at': starts_at,
                'type_id': appointment_type_id
            },
            sequence_number
        ) filter (where is_care and status = 'upcoming') as next_appointment
    from scoped_appointments
    group by patient_id
),

final as (
    select
        patients_in_scope.patient_id,
        coalesce(totals.visit_count, 0) as visit_count,
        coalesce(totals.appointment_count, 0) as appointment_count,
        totals.first_visit_at,
        totals.last_visit_at,
        coalesce(by_type.visits_by_appointment_type, map()) as visits_by_appointment_type,
        coalesce(by_category.visits_by_category, map()) as visits_by_category,
        totals.next_appointment.id as next_appointment_id,
        totals.next_appointment.kind as next_appointment_kind,
        totals.next_appointment.at as next_appointment_at,
        totals.next_appointment.type_id as next_appointment_type_id
    from patients_in_scope
    left join totals on totals.patient_id = patients_in_scope.patient_id
    left join by_type on by_type.patient_id = patients_in_scope.patient_id
    left join by_category on by_category.patient_id = patients_in_scope.patient_id
)

select * from final
