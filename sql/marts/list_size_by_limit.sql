-- config: materialized=view
-- How large the email marketing list would be under each active-patient limit (Peptalkr shows
-- this next to each option). Counts addresses that pass every other rule (valid, not bounced or
-- unsubscribed, not archived, opted in when that is honoured), before and after the size cap.
-- Columns: active_patient_limit ('6'|'12'|'18'|'24'|'all'), months (NULL = all), list_size,
--   list_size_after_cap, is_current_setting.
-- A view: five rows over the list, counted when read (`relay models build` prints them)
-- instead of stored again by every 5-minute build.
with

email_marketing_list as (
    select * from marts.email_marketing_list
),

settings as (
    select * from state.build_context
),

limits as (
    select * from (values (6), (12), (18), (24), (null)) as t(months)
),

qualifying as (
    select email, last_seen_at
    from email_marketing_list
    where status in ('subscribed', 'over_cap', 'removed', 'inactive')
),

sizes as (
    select
        coalesce(limits.months::varchar, 'all') as active_patient_limit,
        limits.months,
        count(qualifying.email) as list_size,
        least(count(qualifying.email), coalesce(any_value(settings.list_size_cap), 1e18))::bigint
            as list_size_after_cap,
        limits.months is not distinct from any_value(settings.active_patient_months)
            as is_current_setting
    from limits
    cross join settings
    left join qualifying
        on limits.months is null
        or qualifying.last_seen_at >= settings.built_at - to_months(limits.months)
    group by limits.months
)

select * from sizes
order by months nulls last
