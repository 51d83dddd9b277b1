-- Every appointment has exactly one of the known statuses. (One row per appointment is checked
-- by the runner: (appointment_kind, appointment_id) is the incremental model's key.)
select appointment_kind, appointment_id, status
from marts.appointments
where status is null
    or status not in (
        'deleted', 'archived', 'cancelled', 'did_not_arrive', 'arrived', 'upcoming', 'unmarked'
    )
