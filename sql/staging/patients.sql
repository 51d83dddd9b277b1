-- config: materialized=incremental, key=patient_id
-- One row per Cliniko patient ever synced (archived, merged and deleted ones too), typed.
-- Parsing phones and emails is the costly part of a build, so this model is incremental: each
-- build re-reads only patients the sync wrote since the last build (loaded_at).
-- mobile_e164: the SMS number (PRODUCT.md §2), read in the clinic's country (clinic.yaml
-- `country`): the first phone entry that is a valid mobile, Mobile-typed entries first, then any
-- other entry, each in Cliniko's order; NULL when none is (numbers read before come from
-- state.phone_numbers). mobile_number: that entry's number as typed; when no entry is a valid
-- mobile, the first Mobile-typed entry's, if any (what the front desk should fix).
-- email_is_valid: syntax only (no DNS lookups).
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.patients')
),

build_context as (
    select country from state.build_context
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "archived_at": "TIMESTAMPTZ",
            "deleted_at": "TIMESTAMPTZ", "merged_at": "TIMESTAMPTZ",
            "merged_with_patient": {"links": {"self": "VARCHAR"}},
            "title": "VARCHAR", "first_name": "VARCHAR", "last_name": "VARCHAR",
            "preferred_first_name": "VARCHAR", "email": "VARCHAR", "date_of_birth": "DATE",
            "sex": "VARCHAR", "gender_identity": "VARCHAR", "pronouns": "VARCHAR",
            "patient_phone_numbers": [{"phone_type": "VARCHAR", "number": "VARCHAR"}],
            "accepted_email_marketing": "BOOLEAN", "accepted_sms_marketing": "BOOLEAN",
            "accepted_privacy_policy": "BOOLEAN", "reminder_type": "VARCHAR",
            "receives_confirmation_emails": "BOOLEAN", "time_zone": "VARCHAR",
            "country_code": "VARCHAR", "city": "VARCHAR", "state": "VARCHAR",
            "post_code": "VARCHAR", "occupation": "VARCHAR", "referral_source": "VARCHAR",
            "concession_type": {"links": {"self": "VARCHAR"}}
        }') as p
    from source
),

-- Materialized: the phone CTEs below read it again, and inlined, each would parse the JSON again.
renamed as materialized (
    select
        id as patient_id,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.archived_at as archived_at,
        p.deleted_at as deleted_at,
        removed_at,
        p.merged_at as merged_at,
        cliniko_link_id(p.merged_with_patient.links.self) as merged_into_patient_id,
        cliniko_text(p.title) as title,
        cliniko_text(p.first_name) as first_name,
        cliniko_text(p.last_name) as last_name,
        cliniko_text(p.preferred_first_name) as preferred_first_name,
        cliniko_text(p.email) as email,
        p.date_of_birth as date_of_birth,
        cliniko_text(p.sex) as sex,
        cliniko_text(p.gender_identity) as gender_identity,
        cliniko_text(p.pronouns) as pronouns,
        cliniko_text(
            list_filter(p.patient_phone_numbers, lambda n: lower(trim(n.phone_type)) = 'mobile')[1].number
        ) as first_mobile_entry,
        p.patient_phone_numbers as phone_entries,
        p.accepted_email_marketing as accepted_email_marketing,
        p.accepted_sms_marketing as accepted_sms_marketing,
        p.accepted_privacy_policy as accepted_privacy_policy,
        cliniko_text(p.reminder_type) as reminder_type,
        p.receives_confirmation_emails as receives_confirmation_emails,
        cliniko_text(p.time_zone) as time_zone,
        upper(cliniko_text(p.country_code)) as country_code,
        cliniko_text(p.city) as city,
        cliniko_text(p.state) as state,
        cliniko_text(p.post_code) as post_code,
        cliniko_text(p.occupation) as occupation,
        cliniko_text(p.referral_source) as referral_source_text,
        cliniko_link_id(p.concession_type.links.self) as concession_type_id,
        synced_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
),

-- Numbers already read in this country (state.phone_numbers: by the sync as it wrote the
-- patients, or by an earlier build): looked up instead of parsed again, which is most of a full rebuild's Python time.
-- On an incremental build, only the numbers these patients carry (every number looked up
-- below is one of them): a 5-minute build's few patients then join a few memo rows, not a
-- table of all 100,000 (a full build reads them all, and picking them would cost more).
phone_memo as (
    select number, mobile_e164 from state.phone_numbers
    where country = (select country from build_context)
        and (
            getvariable('changes_since') is null
            or number in (select cliniko_text(unnest(phone_entries).number) from renamed)
        )
),

-- Most patients' SMS number is their first Mobile-typed entry: that one is read for everyone.
-- Each phone-reading CTE is materialized: inlined, DuckDB may copy the function call into a
-- filter above it and parse each number twice.
first_mobile_read as materialized (
    select
        renamed.patient_id,
        renamed.first_mobile_entry as number,
        case
            when phone_memo.number is not null then phone_memo.mobile_e164
            else relay_mobile_e164(renamed.first_mobile_entry, build_context.country)
        end as mobile_e164
    from renamed
    cross join build_context
    left join phone_memo on phone_memo.number = renamed.first_mobile_entry
),

-- Every other entry, only of patients whose first Mobile entry is not a valid mobile (or who
-- have none): few, so a landline beside a valid mobile is never parsed. Materialized, so that
-- this choice is made before the phone function is called.
other_entries as materialized (
    select
        patient_id,
        cliniko_text(entry.number) as number,
        coalesce(lower(trim(entry.phone_type)) = 'mobile', false) as mobile_typed,
        listed
    from (
        select
            patient_id,
            first_mobile_entry,
            unnest(phone_entries) as entry,
            generate_subscripts(phone_entries, 1) as listed
        from renamed
        where patient_id in (select patient_id from first_mobile_read where mobile_e164 is null)
    )
    where cliniko_text(entry.number) is not null
        and cliniko_text(entry.number) is distinct from first_mobile_entry
),

other_read as materialized (
    select
        other_entries.*,
        case
            when phone_memo.number is not null then phone_memo.mobile_e164
            else relay_mobile_e164(other_entries.number, build_context.country)
        end as mobile_e164
    from other_entries
    cross join build_context
    left join phone_memo on phone_memo.number = other_entries.number
),

-- Of those, the first valid mobile: Mobile-typed entries first, then the others, as listed.
other_choice as (
    select
        patient_id,
        first(number order by not mobile_typed, listed) as number,
        first(mobile_e164 order by not mobile_typed, listed) as mobile_e164
    from other_read
    where mobile_e164 is not null
    group by patient_id
),

contacts_checked as (
    select
        renamed.* exclude (first_mobile_entry, phone_entries),
        lower(email) as email_normalised,
        relay_email_is_valid(email) as email_is_valid,
        case
            when first_mobile_read.mobile_e164 is not null then first_mobile_read.number
            else coalesce(other_choice.number, renamed.first_mobile_entry)
        end as mobile_number,
        coalesce(first_mobile_read.mobile_e164, other_choice.mobile_e164) as mobile_e164
    from renamed
    left join first_mobile_read on first_mobile_read.patient_id = renamed.patient_id
    left join other_choice on other_choice.patient_id = renamed.patient_id
)

select * from contacts_checked
