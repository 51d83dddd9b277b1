-- Who a recall can reach: live (not archived) patients with a past visit and nothing booked since
-- (no upcoming appointment), with the whole days since that visit as of this build. The six
-- segments/recall_* files each pick one band of it. A tag (clinic.yaml tag_categories) is neither
-- a visit nor a booking here (marts.patients reads marts.appointments.is_visit and is_care).
-- Columns: patient_id, last_visit_at, days_since_last_visit.
with

patients as (
    select * from marts.patients
    where not is_archived
),

build_context as (
    select built_at from state.build_context
),

candidates as (
    select
        patients.patient_id,
        patients.last_visit_at,
        -- whole days elapsed, counted in microseconds so a band's edges are exact
        (epoch_us(build_context.built_at) - epoch_us(patients.last_visit_at))
            // 86400000000 as days_since_last_visit
    from patients
    cross join build_context
    where patients.next_appointment_at is null
        and patients.last_visit_at is not null
)

select * from candidates
