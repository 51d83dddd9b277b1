-- The subscribed list honours clinic.yaml: the size cap, the active-patient limit and, when
-- set, Cliniko's accepted_email_marketing.
with

subscribed as (
    select * from marts.email_marketing_list
    where status = 'subscribed'
),

patients as (
    select * from marts.patients
),

settings as (
    select * from state.build_context
)

select 'over the size cap' as problem, count(*) as subscribed
from subscribed, settings
where settings.list_size_cap is not null
group by settings.list_size_cap
having count(*) > settings.list_size_cap

union all

select 'outside the active-patient limit or not opted in', count(*)
from subscribed
inner join patients using (patient_id)
cross join settings
where (settings.active_patient_months is not null
        and patients.last_seen_at < settings.built_at - to_months(settings.active_patient_months))
    or (settings.honour_email_opt_in and patients.accepted_email_marketing is distinct from true)
having count(*) > 0
