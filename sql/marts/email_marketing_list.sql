-- config: materialized=incremental, key=email, delete_if_null=patient_id
-- The email marketing list (PRODUCT.md §2, seed 002): one row per distinct email address
-- (trimmed, lower-case) with its status and the reason, by these rules in this order:
--   invalid       the address fails a syntax check
--   bounced       a hard bounce, marketing_list.soft_bounce_limit soft bounces (counted since
--                 the address was last lifted), or a current suppression for a bounce/invalid
--                 address (state.current_suppressions)
--   unsubscribed  a current suppression (unsubscribe link, spam complaint, import, operator)
--   archived      the patient is archived (or merged away) in Cliniko
--   not_opted_in  clinic.yaml honours Cliniko's accepted_email_marketing and it is not true
--   removed       was on the list, now outside the active-patient limit ("Deleted"); comes
--                 back when the patient qualifies again
--   inactive      outside the active-patient limit and never on the list
--   over_cap      within every rule but beyond clinic.yaml's size_cap
--   subscribed    on the list: marketing email may go here
-- A shared address appears once, for the patient who qualifies best (by the order above), then
-- was seen most recently, then has the oldest record; patients_sharing says how many share it.
-- The cap keeps people in clinic.yaml's cap_keeps order: most_recent_visit (last seen first)
-- or earliest_created (oldest patient records first); ties go to the lower patient_id.
-- Columns: email, patient_id, greeting_name, first_name, last_seen_at, patients_sharing,
--   soft_bounces, status, reason.
--
-- Incremental: a build recomputes only the addresses whose row may have changed since the
-- previous build (addresses_in_scope); the other rows stay as they are. Everything is
-- recomputed on a full build, and when clinic.yaml sets a size_cap (the cap ranks the whole
-- list: then the addresses near the cap come out too). An address no patient has any more comes
-- out with no patient_id, which removes its row.
with

settings as (
    select * from state.build_context
),

addresses_in_scope as (
    -- patients whose row marts.patient_rows replaced: the address they have now and the
    -- one they had (it may now belong to another patient, or be shared by one fewer)
    select value as email from changed_values('marts.patient_rows', 'email_normalised')
    union
    -- every address ever suppressed, lifted or bounced (a small part of the list): a new
    -- suppression, lift or bounce may have come since, and the history's times cannot say which
    select address from state.suppressions where channel = 'email'
    union
    select email from state.email_bounces
    union
    -- the clock: patients who crossed the active-patient limit between the previous build and
    -- this one (its time moves nothing else here)
    select marts.patients.email_normalised
    from marts.patients
    cross join settings
    where last_seen_at
        >= least(getvariable('previous_built_at'), settings.built_at)
            - to_months(settings.active_patient_months)
        and last_seen_at
            < greatest(getvariable('previous_built_at'), settings.built_at)
                - to_months(settings.active_patient_months)
),

patients as (
    select * from marts.patients
    where email_normalised is not null
        and (getvariable('changes_since') is null
            or (select list_size_cap from settings) is not null
            or email_normalised in (select email from addresses_in_scope))
),

-- what is suppressed now, per address and scope (the one reading: tasks/schema/20_suppressions.sql)
email_suppressions as (
    select
        address as email,
        reason,
        occurred_at,
        reason in ('hard_bounce', 'soft_bounce_limit', 'invalid_address') as is_bounce
    from state.current_suppressions
    where channel = 'email'
),

-- one row per suppressed address (any scope stops marketing): a bounce suppression names it
-- before any other, then the newest
address_suppression as (
    select
        email,
        bool_or(is_bounce) as is_bounce_suppressed,
        first(reason order by is_bounce desc, occurred_at desc, reason) as suppression_reason
    from email_suppressions
    group by email
),

-- bounces since the address was last lifted, per kind: the same counts feedback uses to suppress
-- at the soft-bounce limit (tasks/schema/60_feedback.sql)
bounce_counts as (
    select * from state.email_bounce_counts
),

patient_rules as (
    select
        patients.*,
        case
            when not patients.email_is_valid then 'invalid'
            when patients.is_archived then 'archived'
            when settings.honour_email_opt_in
                and patients.accepted_email_marketing is distinct from true then 'not_opted_in'
            when settings.active_patient_months is not null
                and patients.last_seen_at
                    < settings.built_at - to_months(settings.active_patient_months) then 'lapsed'
            else 'eligible'
        end as patient_rule
    from patients
    cross join settings
),

-- The patient kept for each address: who qualifies best (by the rules above), then was seen
-- most recently, then has the oldest record, then the lowest patient_id. One sort key a patient,
-- the smallest kept (arg_min compares a struct field by field, a NULL after any value: so
-- `-epoch_us(last_seen_at)` is "most recent first, never seen last"); one aggregate over the
-- addresses instead of numbering every patient with a window, about a third of the list's cost.
best_per_email as (
    select
        email_normalised,
        count(*) as patients_sharing,
        arg_min(patient_id, {
            'rule': list_position(
                ['eligible', 'lapsed', 'not_opted_in', 'archived', 'invalid'], patient_rule
            ),
            'seen': -epoch_us(last_seen_at),
            'created': epoch_us(created_at),
            'patient_id': patient_id
        }) as patient_id
    from patient_rules
    group by email_normalised
),

one_per_email as (
    select patient_rules.*, best_per_email.patients_sharing
    from patient_rules
    inner join best_per_email on best_per_email.patient_id = patient_rules.patient_id
),

-- Whether a lapsed address was ever on the list ('removed', not 'inactive'): only lapsed
-- addresses are looked up, not every address that ever joined. (An address joins only while
-- subscribed, in a build that computed its row: a lapsed row's history never changes unseen.)
previous_members as (
    select distinct member_key as email
    from state.membership_events
    where audience = 'email_marketing_list' and event = 'joined'
        and member_key in (select email_normalised from one_per_email where patient_rule = 'lapsed')
),

with_address as (
    select
        one_per_email.*,
        coalesce(bounce_counts.hard_bounces, 0) as hard_bounces,
        coalesce(bounce_counts.soft_bounces, 0) as soft_bounces,
        coalesce(bounce_counts.spam_complaints, 0) as spam_complaints,
        address_suppression.email is not null as is_suppressed,
        coalesce(address_suppression.is_bounce_suppressed, false) as is_bounce_suppressed,
        address_suppression.suppression_reason,
        previous_members.email is not null as was_on_list,
        settings.soft_bounce_limit
    from one_per_email
    cross join settings
    left join bounce_counts on bounce_counts.email = one_per_email.email_normalised
    left join address_suppression
        on address_suppression.email = one_per_email.email_normalised
    left join previous_members on previous_members.email = one_per_email.email_normalised
),

ruled as (
    select
        *,
        case
            when patient_rule = 'invalid' then 'invalid'
            when hard_bounces > 0 or soft_bounces >= soft_bounce_limit
                or is_bounce_suppressed then 'bounced'
            when is_suppressed or spam_complaints > 0 then 'unsubscribed'
            when patient_rule = 'archived' then 'archived'
            when patient_rule = 'not_opted_in' then 'not_opted_in'
            when patient_rule = 'lapsed' and was_on_list then 'removed'
            when patient_rule = 'lapsed' then 'inactive'
            else 'qualifies'
        end as rule_status
    from with_address
),

capped as (
    select
        ruled.*,
        case
            when rule_status <> 'qualifies' then null
            else row_number() over (
                partition by rule_status = 'qualifies'
                order by
                    case when settings.cap_order = 'most_recent_visit' then last_seen_at end
                        desc nulls last,
                    case when settings.cap_order = 'earliest_created' then created_at end
                        nulls last,
                    patient_id
            )
        end as cap_position,
        settings.list_size_cap,
        settings.active_patient_months
    from ruled
    cross join settings
),

-- With a size cap every address is computed (the cap ranks the whole list), yet only those in
-- scope and those ranked near the cap can have changed: each address in scope moves another
-- address's place by one at most.
changed as (
    select *
    from capped
    where getvariable('changes_since') is null
        or email_normalised in (select email from addresses_in_scope)
        or (cap_position > list_size_cap - (select count(*) from addresses_in_scope)
            and cap_position <= list_size_cap + (select count(*) from addresses_in_scope))
),

final as (
    select
        email_normalised as email,
        patient_id,
        greeting_name,
        first_name,
        last_seen_at,
        patients_sharing,
        soft_bounces,
        case
            when rule_status <> 'qualifies' then rule_status
            when list_size_cap is not null and cap_position > list_size_cap then 'over_cap'
            else 'subscribed'
        end as status,
        case rule_status
            when 'invalid' then 'the email address is not valid'
            when 'bounced' then
                case
                    when hard_bounces > 0 then 'hard bounce'
                    when soft_bounces >= soft_bounce_limit then soft_bounces || ' soft bounces'
                    else 'suppressed: ' || suppression_reason
                end
            when 'unsubscribed' then
                case
                    when is_suppressed then 'suppressed: ' || suppression_reason
                    else 'spam complaint'
                end
            when 'archived' then 'patient archived in Cliniko'
            when 'not_opted_in' then 'accepted_email_marketing is not true in Cliniko'
            when 'removed' then
                'last seen ' || strftime(last_seen_at, '%Y-%m-%d') || ', outside the '
                || active_patient_months || '-month active-patient limit'
            when 'inactive' then
                'last seen ' || strftime(last_seen_at, '%Y-%m-%d') || ', outside the '
                || active_patient_months || '-month active-patient limit'
            else
                case
                    when list_size_cap is not null and cap_position > list_size_cap then
                        'beyond the list size cap of ' || list_size_cap
                    when active_patient_months is null then 'patient (active-patient limit: all)'
                    else 'seen within the last ' || active_patient_months || ' months'
                end
        end as reason
    from changed
),

-- an address in scope that no patient has any more: no patient_id, so its row goes
gone as (
    select email from addresses_in_scope
    where email is not null and email not in (select email from final)
)

select * from final
union all by name
select * from gone
