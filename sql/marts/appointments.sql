-- Every appointment of every known patient: individual appointments, plus one row per attendee
-- of a group appointment (class), with its type, category, business, practitioner and status.
-- Read by the planner (triggers) and by segments.
--
-- Columns:
--   appointment_id        Cliniko's individual appointment id, or the attendee id for a class
--   appointment_kind      'individual' | 'group'   ((appointment_kind, appointment_id) is unique)
--   group_appointment_id  the class (group appointments only)
--   patient_id            merged-away patients' appointments belong to the surviving patient
--   appointment_type_id, appointment_type_name, category (Cliniko's text, e.g. 'Admin Only')
--   business_id, business_name, business_time_zone (IANA; the clinic's when Cliniko sent none)
--   practitioner_id, practitioner_name
--   starts_at, ends_at    UTC (TIMESTAMPTZ);  starts_at_local: wall-clock time at the business
--   created_at, updated_at, cancelled_at, cancellation_reason, archived_at, deleted_at (UTC)
--   status                one of, by precedence: deleted > archived > cancelled >
--                         did_not_arrive > arrived > upcoming (starts after the build) >
--                         unmarked (past, neither arrived nor did-not-arrive)
--   is_visit              status is arrived or unmarked: the patient (presumably) came
--   sequence_number       1, 2, 3... over the patient's kept appointments (arrived, unmarked,
--                         upcoming) by start time; NULL for the others. Admin "dummy" types
--                         count too (seed 000): filter on category to leave them out.
--   type_sequence_number  the same, per appointment type
--   booked_online         Cliniko recorded a booking IP address
with

individual_appointments as (
    select * from staging.individual_appointments
),

group_appointments as (
    select * from staging.group_appointments
),

attendees as (
    select * from staging.attendees
),

-- Appointments of patients deleted in Cliniko go with them.
patients as (
    select * from staging.patients
    where deleted_at is null and removed_at is null
),

appointment_types as (
    select * from staging.appointment_types
),

businesses as (
    select * from staging.businesses
),

practitioners as (
    select * from staging.practitioners
),

build_context as (
    select built_at, clinic_time_zone from state.build_context
),

individual_rows as (
    select
        appointment_id,
        'individual' as appointment_kind,
        null::bigint as group_appointment_id,
        patient_id,
        appointment_type_id,
        business_id,
        practitioner_id,
        starts_at,
        ends_at,
        created_at,
        updated_at,
        cancelled_at,
        cancellation_reason,
        archived_at,
        coalesce(deleted_at, removed_at) as deleted_at,
        did_not_arrive,
        patient_arrived as arrived,
        booked_online
    from individual_appointments
),

-- Cliniko lists attendees of individual appointments too; only a class's attendees add rows.
group_rows as (
    select
        attendees.attendee_id as appointment_id,
        'group' as appointment_kind,
        group_appointments.group_appointment_id,
        attendees.patient_id,
        group_appointments.appointment_type_id,
        group_appointments.business_id,
        group_appointments.practitioner_id,
        group_appointments.starts_at,
        group_appointments.ends_at,
        attendees.created_at,
        attendees.updated_at,
        attendees.cancelled_at,
        attendees.cancellation_reason,
        coalesce(attendees.archived_at, group_appointments.archived_at) as archived_at,
        coalesce(
            attendees.deleted_at, attendees.removed_at,
            group_appointments.deleted_at, group_appointments.removed_at
        ) as deleted_at,
        coalesce(not attendees.arrived, false) as did_not_arrive,
        coalesce(attendees.arrived, false) as arrived,
        attendees.booked_online
    from attendees
    inner join group_appointments
        on group_appointments.group_appointment_id = attendees.booking_id
),

all_rows as (
    select * from individual_rows
    union all
    select * from group_rows
),

with_patient as (
    select
        all_rows.* replace (
            coalesce(patients.merged_into_patient_id, all_rows.patient_id) as patient_id
        )
    from all_rows
    inner join patients on patients.patient_id = all_rows.patient_id
),

with_status as (
    select
        with_patient.*,
        case
            when deleted_at is not null then 'deleted'
            when archived_at is not null then 'archived'
            when cancelled_at is not null then 'cancelled'
            when did_not_arrive then 'did_not_arrive'
            when arrived then 'arrived'
            when starts_at > build_context.built_at then 'upcoming'
            else 'unmarked'
        end as status
    from with_patient
    cross join build_context
),

numbered as (
    select
        *,
        status in ('arrived', 'unmarked') as is_visit,
        status in ('arrived', 'unmarked', 'upcoming') as is_kept,
        row_number() over (
            partition by patient_id, is_kept
            order by starts_at, appointment_kind, appointment_id
        ) as kept_position,
        row_number() over (
            partition by patient_id, appointment_type_id, is_kept
            order by starts_at, appointment_kind, appointment_id
        ) as kept_type_position
    from with_status
),

final as (
    select
        numbered.appointment_id,
        numbered.appointment_kind,
        numbered.group_appointment_id,
        numbered.patient_id,
        numbered.appointment_type_id,
        appointment_types.appointment_type_name,
        appointment_types.category,
        numbered.business_id,
        businesses.display_name as business_name,
        coalesce(businesses.time_zone, build_context.clinic_time_zone) as business_time_zone,
        numbered.practitioner_id,
        practitioners.display_name as practitioner_name,
        numbered.starts_at,
        numbered.ends_at,
        timezone(
            coalesce(businesses.time_zone, build_context.clinic_time_zone), numbered.starts_at
        ) as starts_at_local,
        numbered.created_at,
        numbered.updated_at,
        numbered.cancelled_at,
        numbered.cancellation_reason,
        numbered.archived_at,
        numbered.deleted_at,
        numbered.status,
        numbered.is_visit,
        case when numbered.is_kept then numbered.kept_position end as sequence_number,
        case when numbered.is_kept then numbered.kept_type_position end as type_sequence_number,
        numbered.booked_online
    from numbered
    cross join build_context
    left join appointment_types
        on appointment_types.appointment_type_id = numbered.appointment_type_id
    left join businesses on businesses.business_id = numbered.business_id
    left join practitioners on practitioners.practitioner_id = numbered.practitioner_id
)

select * from final
