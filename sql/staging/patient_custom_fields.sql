-- One row per patient, custom-field section, field and value: the patient's custom_fields as
-- Cliniko sends them (custom_fields.sections[].fields[], each field with type, name, value and
-- options[].selected), so an analyst writes
--     where section = 'Insurance coverage' and field = 'Provider' and value = 'Super Insurance'
-- value: each selected option's name for radio buttons and checkboxes (a field with two boxes
-- ticked is two rows), the text of a text field, and what was typed under "Other" when that is
-- chosen. A field left empty (no option selected, no text) has no row. Patients deleted in
-- Cliniko (or gone at the last reconcile) drop out; archived ones stay, as in marts.patients.
-- section, field, value are as written in Cliniko; *_normalised: trimmed, lower case (how
-- triggers compare them). The tokens are Cliniko's stable ids of the section, field and option.
with

source as (
    select id, payload, removed_at from raw.patients
),

parsed as (
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

sections as (
    select patient_id, unnest(p.custom_fields.sections) as section
    from parsed
    where p.deleted_at is null and removed_at is null
        and len(p.custom_fields.sections) > 0
),

fields as (
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
        lower(trim(cliniko_text(section.name))) as section_normalised,
        lower(trim(cliniko_text(field.name))) as field_normalised,
        lower(trim(cliniko_text(value))) as value_normalised,
        cliniko_text(section.token) as section_token,
        cliniko_text(field.token) as field_token,
        option_token
    from (select * from chosen union all select * from typed)
)

select * from renamed
where value is not null and field is not null
