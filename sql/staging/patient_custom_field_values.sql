-- config: materialized=incremental, key=patient_id
-- One row per patient ever synced: the values of their Cliniko custom fields as a list
-- (custom_values; [] when none), read once per change of the patient.
-- staging.patient_custom_fields is this list one row per value (the view analysts read). Incremental because parsing
-- every patient's custom_fields is the costly part: about 12 s for 100,000 patients on the
-- shared 2-core machine, too slow to repeat on every 5-minute build.
-- is_deleted: deleted in Cliniko, or gone at the last reconcile.
with

-- On an incremental build, only what the sync wrote since the last good build (sql/README.md).
source as (
    select * from raw_changes('raw.patients')
),

-- Materialized, like the CTEs after it: read by several CTEs below, and inlined each would parse
-- the JSON again.
parsed as materialized (
    select
        id as patient_id,
        removed_at,
        json_transform(payload, '{
            "deleted_at": "TIMESTAMPTZ",
            "custom_fields": {"sections": [{
                "name": "VARCHAR", "token": "VARCHAR",
                "fields": [{
                    "name": "VARCHAR", "type": "VARCHAR", "token": "VARCHAR", "value": "VARCHAR",
                    "options": [{"name": "VARCHAR", "token": "VARCHAR", "selected": "BOOLEAN"}],
                    "other": {"enabled": "BOOLEAN", "selected": "BOOLEAN", "value": "VARCHAR"}
                }]
            }]}
        }') as p
    from source
),

sections as materialized (
    select patient_id, unnest(p.custom_fields.sections) as section
    from parsed
    where len(p.custom_fields.sections) > 0
),

fields as materialized (
    select patient_id, section, unnest(section.fields) as field
    from sections
),

-- Radio buttons and checkboxes: every selected option, and "Other" with its text when chosen.
chosen as (
    select patient_id, section, field, option.name as value, option.token as option_token
    from (select patient_id, section, field, unnest(field.options) as option from fields)
    where coalesce(option.selected, false)
    union all
    select patient_id, section, field, field.other.value as value, null as option_token
    from fields
    where coalesce(field.other.selected, false)
),

-- Text fields (and any field carrying a value instead of options).
typed as (
    select patient_id, section, field, field.value as value, null as option_token
    from fields
    where cliniko_text(field.value) is not null
),

renamed as (
    select
        patient_id,
        cliniko_text(section.name) as section,
        cliniko_text(field.name) as field,
        cliniko_text(value) as value,
        cliniko_text(field.type) as field_type,
        cliniko_text(section.token) as section_token,
        cliniko_text(field.token) as field_token,
        option_token
    from (select * from chosen union all select * from typed)
),

listed as (
    select
        patient_id,
        list({
            'section': section, 'field': field, 'value': value, 'field_type': field_type,
            'section_token': section_token, 'field_token': field_token,
            'option_token': option_token
        }) as custom_values
    from renamed
    where value is not null and field is not null
    group by patient_id
),

-- Every patient the sync wrote: one whose fields were all cleared gets [] (so the old values go).
patients as (
    select
        parsed.patient_id,
        parsed.p.deleted_at is not null or parsed.removed_at is not null as is_deleted,
        coalesce(listed.custom_values, []) as custom_values
    from parsed
    left join listed on listed.patient_id = parsed.patient_id
)

select * from patients
