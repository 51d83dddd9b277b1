-- config: materialized=incremental, key=appointment_kind+appointment_id
-- Every appointment: individual appointments, plus one row per attendee of a group appointment
-- (class), with its type, category, business, practitioner and status. Read by the planner
-- (triggers) and by segments.
--
-- Incremental: a build recomputes only the patients whose appointments or patient record the
-- sync changed, or who had an appointment start since the last build (upcoming -> past);
-- everything when a type, business or practitioner changed. All of a patient's appointments
-- are recomputed together because their sequence numbers depend on each other.
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
--   status                one of, by precedence: deleted (or its patient is deleted in Cliniko
--                         or was never synced) > archived > cancelled >
--                         did_not_arrive > arrived > upcoming (starts after the build) >
--                         unmarked (past, neither arrived nor did-not-arrive); a class
--                         attendee not marked arrived is did_not_arrive once the class has
--                         started, upcoming before
--   is_visit              status is arrived or unmarked: the patient (presumably) came
--   is_kept               status is arrived, unmarked or upcoming: a kept appointment (what
--                         triggers count and fire on; the one definition of "kept")
--   sequence_number       1, 2, 3... over the patient's kept appointments (arrived, unmarked,
--                         upcoming) by start time; NULL for the others. Admin "dummy" types
--                         count too (seed 000): filter on category to leave them out.
--   type_sequence_number  the same, per appointment type
--   booked_online         Cliniko recorded a booking IP address
--   refreshed_by          the build that last recomputed the row (state.model_builds.build_id)
with

-- Import CTEs of large tables are NOT MATERIALIZED: read more than once, DuckDB would
-- otherwise copy the whole table first, and an incremental build would pay for millions
-- of rows instead of the few its filters keep.

individual_appointments as not materialized (
    select * from staging.individual_appointments
),

group_appointments as not materialized (
    select * from staging.group_appointments
),

attendees as not materialized (
    select * from staging.attendees
),

patients as not materialized (
    select * from staging.patients
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
    select build_id, built_at, clinic_time_zone from state.build_context
),

-- Which patients to recompute: everyone on a full build (changes_since is NULL) or when a
-- type, business or practitioner changed; otherwise those whose rows the sync changed.
dimension_changed as (
    select 1 from appointment_types where loaded_at > getvariable('changes_since')
    union all
    select 1 from businesses where loaded_at > getvariable('changes_since')
    union all
    select 1 from practitioners where loaded_at > getvariable('changes_since')
),

rebuild_everyone as (
    select getvariable('changes_since') is null or exists (select 1 from dimension_changed)
        as flag
),

changed_patients as (
    select patient_id from individual_appointments
    where (select flag from rebuild_everyone)
    union
    select patient_id from attendees
    where (select flag from rebuild_everyone)
    union
    select patient_id from individual_appointments
    where loaded_at > getvariable('changes_since')
    union
    select patient_id from individual_appointments
    where starts_at > getvariable('previous_built_at')
        and starts_at <= (select built_at from build_context)
    union
    select patient_id from attendees
    where loaded_at > getvariable('changes_since')
    union
    select attendees.patient_id
    from attendees
    inner join group_appointments
        on group_appointments.group_appointment_id = attendees.booking_id
    where group_appointments.loaded_at > getvariable('changes_since')
        or (group_appointments.starts_at > getvariable('previous_built_at')
            and group_appointments.starts_at <= (select built_at from build_context))
    union
    select patient_id from patients
    where loaded_at > getvariable('changes_since')
    union
    select merged_into_patient_id from patients
    where loaded_at > getvariable('changes_since')
),

-- A merged-away patient's appointments are numbered with the surviving patient's: recompute
-- the survivor, and with it every patient merged into it.
survivors_in_scope as (
    select distinct coalesce(patients.merged_into_patient_id, changed_patients.patient_id)
        as patient_id
    from changed_patients
    left join patients on patients.patient_id = changed_patients.patient_id
),

patients_in_scope as (
    select patient_id from survivors_in_scope
    union
    select patient_id from patients
    where merged_into_patient_id in (select patient_id from survivors_in_scope)
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
    where patient_id in (select patient_id from patients_in_scope)
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
        -- Cliniko sends arrived = false for every attendee until the class is marked: before
        -- the class starts that is no miss (the attendee is upcoming and gets its reminder).
        coalesce(not attendees.arrived, false)
            and group_appointments.starts_at <= (select built_at from build_context)
            as did_not_arrive,
        coalesce(attendees.arrived, false) as arrived,
        attendees.booked_online
    from attendees
    inner join group_appointments
        on group_appointments.group_appointment_id = attendees.booking_id
    where attendees.patient_id in (select patient_id from patients_in_scope)
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
        ),
        patients.patient_id is null
            or patients.deleted_at is not null
            or patients.removed_at is not null as patient_deleted
    from all_rows
    left join patients on patients.patient_id = all_rows.patient_id
),

with_status as (
    select
        with_patient.*,
        case
            when deleted_at is not null or patient_deleted then 'deleted'
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
        numbered.is_kept,
        case when numbered.is_kept then numbered.kept_position end as sequence_number,
        case when numbered.is_kept then numbered.kept_type_position end as type_sequence_number,
        numbered.booked_online,
        build_context.build_id as refreshed_by
    from numbered
    cross join build_context
    left join appointment_types
        on appointment_types.appointment_type_id = numbered.appointment_type_id
    left join businesses on businesses.business_id = numbered.business_id
    left join practitioners on practitioners.practitioner_id = numbered.practitioner_id
)

select * from final
