-- Each appointment appears once, with exactly one known status.
select appointment_kind, appointment_id
from marts.appointments
group by appointment_kind, appointment_id
having count(*) > 1
    or any_value(status) not in (
        'deleted', 'archived', 'cancelled', 'did_not_arrive', 'arrived', 'upcoming', 'unmarked'
    )
