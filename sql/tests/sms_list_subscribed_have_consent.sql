-- Everyone subscribed to SMS marketing accepted it in Cliniko, is not archived, and has not
-- opted out since. (One row per number is the list's key: the runner checks it.)
with

sms_list as (
    select * from marts.sms_marketing_list
),

patients as (
    select * from marts.patients
),

current_suppression as (
    select distinct address
    from state.current_suppressions
    where channel = 'sms'
)

select sms_list.patient_id
from sms_list
left join patients on patients.patient_id = sms_list.patient_id
left join current_suppression on current_suppression.address = sms_list.mobile_e164
where sms_list.status = 'subscribed'
    and (patients.patient_id is null
        or patients.accepted_sms_marketing is distinct from true
        or patients.is_archived
        or patients.mobile_e164 is distinct from sms_list.mobile_e164
        or current_suppression.address is not null)
