-- config: materialized=view
-- One row per patient, custom-field section, field and value: the patient's custom_fields as
-- Cliniko sends them (custom_fields.sections[].fields[], each field with type, name, value and
-- options[].selected), so an analyst writes
--     where section = 'Insurance coverage' and field = 'Provider' and value = 'Super Insurance'
-- value: each selected option's name for radio buttons and checkboxes (a field with two boxes
-- ticked is two rows), the text of a text field, and what was typed under "Other" when that is
-- chosen. A field left empty (no option selected, no text) has no row. Patients deleted in
-- Cliniko (or gone at the last reconcile) drop out; archived ones stay, as in marts.patients.
-- section, field, value are as written in Cliniko; *_normalised: lower case, trimmed of any
-- whitespace (line breaks, tabs, no-break spaces too, as triggers trim clinic.yaml's words;
-- trim() takes off spaces only), how triggers compare them. The tokens are Cliniko's stable
-- ids of the section, field and option.
-- A view over staging.patient_custom_field_values (parsed once per change of the patient).
with

values_listed as (
    select patient_id, unnest(custom_values) as v
    from staging.patient_custom_field_values
    where not is_deleted
),

renamed as (
    select
        patient_id,
        v.section as section,
        v.field as field,
        v.value as value,
        v.field_type as field_type,
        lower(regexp_replace(v.section, '^[[:space:]\pZ]+|[[:space:]\pZ]+$', '', 'g'))
            as section_normalised,
        lower(regexp_replace(v.field, '^[[:space:]\pZ]+|[[:space:]\pZ]+$', '', 'g'))
            as field_normalised,
        lower(regexp_replace(v.value, '^[[:space:]\pZ]+|[[:space:]\pZ]+$', '', 'g'))
            as value_normalised,
        v.section_token as section_token,
        v.field_token as field_token,
        v.option_token as option_token
    from values_listed
),

-- A text field holding only whitespace (a line break: Cliniko keeps \r\n) is left empty.
filled as (
    select * from renamed
    where value_normalised <> ''
)

select * from filled
