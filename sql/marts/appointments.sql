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
--   created_at, updated_at, cancelled_at, cancellation_reason, archived_at, deleted_at (UTC);
--                         a class attendee's updated_at is the later of its own and its class's
--   status                one of, by precedence: deleted (or its patient is deleted in Cliniko
--                         or was never synced) > archived > cancelled >
--                         did_not_arrive > arrived > upcoming (starts after the build) >
--                         unmarked (past, neither arrived nor did-not-arrive); a class
--                         attendee not marked arrived is did_not_arrive once the class has
--                         started, upcoming before
--   is_tag                its category is one of clinic.yaml's tag_categories (default
--                         'Admin Only', case and spaces ignored), or was when recorded
--                         (state.tag_types): an admin "dummy" appointment that tags the
--                         patient (seed 000), not care
--   is_attended           status is arrived or unmarked: the patient (presumably) came, or a
--                         tag's moment has passed ("appointment type attended")
--   is_kept               status is arrived, unmarked or upcoming: a kept appointment (what
--                         triggers fire on, tags included; the one definition of "kept")
--   is_visit              attended and not a tag: a visit (visit counts, first/last visit, the
--                         active-patient limit, recalls; the one definition of "visit")
--   is_care               kept and not a tag: an appointment that counts (appointment counts,
--                         sequence numbers, the next appointment, "no future appointment")
--   sequence_number       1, 2, 3... over the patient's appointments that count (is_care) by
--                         start time; NULL for the others (tags included)
--   type_sequence_number  1, 2, 3... over the patient's kept appointments of this type (a tag
--                         type numbers its own tags)
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
    select build_id, built_at, clinic_time_zone, tag_categories from state.build_context
),

-- Appointment types a tag category named when the planner recorded it: still tags after their
-- category is renamed in Cliniko (tasks/triggers/names.py).
tag_types as (
    select appointment_type_id from state.tag_types
    where list_contains((select tag_categories from build_context), tag_category)
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
    -- an appointment or attendance moved to another patient (booked under the wrong one):
    -- the patient it left is numbered again too
    select patient_id from replaced_patients('staging.individual_appointments')
    union
    select patient_id from replaced_patients('staging.attendees')
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
        -- a class moved in Cliniko changes the class, not its attendees: its last edit counts
        -- (the planner reads a late edit as a move into a reminder's window)
        greatest(attendees.updated_at, group_appointments.updated_at) as updated_at,
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

-- A tag's category names it (clinic.yaml tag_categories), compared trimmed and lower-case as
-- trigger filters compare category names; or named it once (state.tag_types: renamed since).
with_kind as (
    select
        with_status.*,
        coalesce(
            list_contains(build_context.tag_categories, lower(trim(appointment_types.category)))
            or with_status.appointment_type_id in (select appointment_type_id from tag_types),
            false
        ) as is_tag,
        status in ('arrived', 'unmarked') as is_attended,
        status in ('arrived', 'unmarked', 'upcoming') as is_kept
    from with_status
    cross join build_context
    left join appointment_types
        on appointment_types.appointment_type_id = with_status.appointment_type_id
),

classified as (
    select
        *,
        is_attended and not is_tag as is_visit,
        is_kept and not is_tag as is_care,
        appointment_kind = 'individual' as is_individual
    from with_kind
),

-- Sequence numbers, ordered by start, then kind ('group' before 'individual': the kind is
-- sorted as a boolean, a fixed-size key DuckDB sorts faster than text) and id. Numbered on
-- the few columns the numbering needs, then joined back by the appointment's key: a window
-- sorts every column it is given, and sorting all thirty columns of 2,000,000 rows twice was
-- most of this model's cost.
positions as (
    select
        appointment_id,
        is_individual,
        row_number() over (
            partition by patient_id, is_care
            order by starts_at, is_individual, appointment_id
        ) as care_position,
        row_number() over (
            partition by patient_id, appointment_type_id, is_kept
            order by starts_at, is_individual, appointment_id
        ) as kept_type_position
    from classified
),

numbered as (
    select
        classified.*,
        positions.care_position,
        positions.kept_type_position
    from classified
    inner join positions
        on positions.appointment_id = classified.appointment_id
        and positions.is_individual = classified.is_individual
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
        numbered.is_tag,
        numbered.is_attended,
        numbered.is_kept,
        numbered.is_visit,
        numbered.is_care,
        case when numbered.is_care then numbered.care_position end as sequence_number,
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
