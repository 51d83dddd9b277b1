-- Nobody subscribed is archived, deleted, invalid, bounced or currently suppressed.
with

subscribed as (
    select * from marts.email_marketing_list
    where status = 'subscribed'
),

patients as (
    select * from marts.patients
),

current_suppression as (
    select distinct address
    from state.current_suppressions
    where channel = 'email'
),

-- hard bounces since the address was last lifted (an opt-in starts the count again)
hard_bounced as (
    select email from state.email_bounce_counts where hard_bounces > 0
)

select subscribed.patient_id
from subscribed
left join patients on patients.patient_id = subscribed.patient_id
left join current_suppression on current_suppression.address = subscribed.email
where patients.patient_id is null
    or patients.is_archived
    or not patients.email_is_valid
    or current_suppression.address is not null
    or subscribed.email in (select email from hard_bounced)
