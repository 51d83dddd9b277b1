-- Nobody subscribed is archived, deleted, invalid, bounced or currently suppressed.
with

subscribed as (
    select * from marts.email_marketing_list
    where status = 'subscribed'
),

patients as (
    select * from marts.patients
),

latest_suppression as (
    select address, action
    from state.suppressions
    where channel = 'email'
    qualify row_number() over (
        partition by address order by occurred_at desc, suppression_id desc
    ) = 1
),

hard_bounced as (
    select distinct email from state.email_bounces where kind = 'hard'
)

select subscribed.patient_id
from subscribed
left join patients on patients.patient_id = subscribed.patient_id
left join latest_suppression on latest_suppression.address = subscribed.email
where patients.patient_id is null
    or patients.is_archived
    or not patients.email_is_valid
    or latest_suppression.action = 'suppress'
    or (latest_suppression.address is null
        and subscribed.email in (select email from hard_bounced))
