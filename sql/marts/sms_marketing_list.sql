-- config: materialized=incremental, key=mobile_e164, delete_if_null=patient_id
-- The SMS marketing list (PRODUCT.md §2, seed 003): one row per distinct valid mobile number
-- (E.164). Reminders and one-off SMS ignore it; marketing SMS go only to 'subscribed' rows.
-- Statuses, in this order:
--   opted_out     a current SMS suppression (STOP reply, carrier opt-out, operator)
--   archived      the patient is archived (or merged away) in Cliniko
--   no_consent    accepted_sms_marketing is not true (NULL = no answer = no consent)
--   subscribed    accepted_sms_marketing is true and nothing above applies
-- A shared number appears once, for the patient who qualifies best, then seen most recently.
-- Patients whose mobile cannot be read are not here: see marts.patients (mobile_e164 NULL).
-- Columns: mobile_e164, patient_id, greeting_name, first_name, patients_sharing, status, reason.
--
-- Incremental: a build recomputes only the numbers whose row may have changed since the
-- previous build (numbers_in_scope); the other rows stay as they are. Everything is recomputed
-- on a full build. A number no patient has any more comes out with no patient_id, which
-- removes its row.
with

numbers_in_scope as (
    -- patients whose row marts.patient_rows replaced: the number they have now and the one
    -- they had (it may now belong to another patient, or be shared by one fewer)
    select value as mobile_e164 from changed_values('marts.patient_rows', 'mobile_e164')
    union
    -- every number ever opted out or back in (a small part of the list): a new STOP or START
    -- may have come since, and the history's times cannot say which
    select address from state.suppressions where channel = 'sms'
),

patients as (
    select * from marts.patients
    where mobile_e164 is not null
        and (getvariable('changes_since') is null
            or mobile_e164 in (select mobile_e164 from numbers_in_scope))
),

-- what is suppressed now, per address and scope (the one reading: tasks/schema/20_suppressions.sql)
sms_suppressions as (
    select * from state.current_suppressions
    where channel = 'sms'
),

-- one row per suppressed number (any scope stops marketing), named by its newest suppression
number_suppression as (
    select address as mobile_e164, first(reason order by occurred_at desc, reason) as reason
    from sms_suppressions
    group by address
),

patient_rules as (
    select
        *,
        case
            when is_archived then 'archived'
            when accepted_sms_marketing is distinct from true then 'no_consent'
            else 'consented'
        end as patient_rule
    from patients
),

-- The patient kept for each number: who qualifies best, then was seen most recently, then has
-- the oldest record, then the lowest patient_id (one aggregate, as marts.email_marketing_list
-- keeps one patient per address: its comment says how the key sorts).
best_per_mobile as (
    select
        mobile_e164,
        count(*) as patients_sharing,
        arg_min(patient_id, {
            'rule': list_position(['consented', 'no_consent', 'archived'], patient_rule),
            'seen': -epoch_us(last_seen_at),
            'created': epoch_us(created_at),
            'patient_id': patient_id
        }) as patient_id
    from patient_rules
    group by mobile_e164
),

one_per_mobile as (
    select patient_rules.*, best_per_mobile.patients_sharing
    from patient_rules
    inner join best_per_mobile on best_per_mobile.patient_id = patient_rules.patient_id
),

final as (
    select
        one_per_mobile.mobile_e164,
        one_per_mobile.patient_id,
        one_per_mobile.greeting_name,
        one_per_mobile.first_name,
        one_per_mobile.patients_sharing,
        case
            when number_suppression.mobile_e164 is not null then 'opted_out'
            when patient_rule = 'archived' then 'archived'
            when patient_rule = 'no_consent' then 'no_consent'
            else 'subscribed'
        end as status,
        case
            when number_suppression.mobile_e164 is not null
                then 'suppressed: ' || number_suppression.reason
            when patient_rule = 'archived' then 'patient archived in Cliniko'
            when patient_rule = 'no_consent' then 'accepted_sms_marketing is not true in Cliniko'
            else 'accepted SMS marketing in Cliniko'
        end as reason
    from one_per_mobile
    left join number_suppression
        on number_suppression.mobile_e164 = one_per_mobile.mobile_e164
),

-- a number in scope that no patient has any more: no patient_id, so its row goes
gone as (
    select mobile_e164 from numbers_in_scope
    where mobile_e164 is not null and mobile_e164 not in (select mobile_e164 from final)
)

select * from final
union all by name
select * from gone
