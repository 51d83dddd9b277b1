-- One row per Cliniko invoice that stands now (GET /invoices; deleted and hard-deleted ones
-- drop out: Cliniko documents no archived_at for invoices). Amounts come as strings ("50.0") and
-- are read as decimals.
-- status: Cliniko's code, status_description its words: 10 Open, 20 Paid, 30 Closed,
-- 40 Open credit (Cliniko's invoice_status codes). closed_at: when it stopped being open (for a
-- paid invoice, when the payment settled it).
-- is_paid: status 20 (Paid) now. paid_at: when it was paid, closed_at (updated_at if Cliniko
-- sent no closed_at); NULL unless paid. An invoice reopened and paid again gets a later paid_at;
-- triggers key their message on the invoice, so it is thanked once (tasks/triggers/patient_records.py).
-- What the invoice is addressed to (invoice_to, notes, patient_extra_information) is personal
-- and not read.
with

source as (
    select id, payload, synced_at, removed_at from raw.invoices
),

parsed as (
    select
        id,
        synced_at,
        removed_at,
        json_transform(payload, '{
            "number": "BIGINT", "issue_date": "DATE", "status": "INTEGER",
            "status_description": "VARCHAR", "total_amount": "VARCHAR", "tax_amount": "VARCHAR",
            "net_amount": "VARCHAR", "discounted_amount": "VARCHAR",
            "created_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ", "closed_at": "TIMESTAMPTZ",
            "deleted_at": "TIMESTAMPTZ",
            "patient": {"links": {"self": "VARCHAR"}},
            "appointment": {"links": {"self": "VARCHAR"}},
            "business": {"links": {"self": "VARCHAR"}},
            "practitioner": {"links": {"self": "VARCHAR"}}
        }') as p
    from source
),

renamed as (
    select
        id as invoice_id,
        p.number as invoice_number,
        cliniko_link_id(p.patient.links.self) as patient_id,
        cliniko_link_id(p.appointment.links.self) as appointment_id,
        cliniko_link_id(p.business.links.self) as business_id,
        cliniko_link_id(p.practitioner.links.self) as practitioner_id,
        p.issue_date as issue_date,
        p.status as status,
        cliniko_text(p.status_description) as status_description,
        try_cast(cliniko_text(p.total_amount) as decimal(14, 2)) as total_amount,
        try_cast(cliniko_text(p.tax_amount) as decimal(14, 2)) as tax_amount,
        try_cast(cliniko_text(p.net_amount) as decimal(14, 2)) as net_amount,
        try_cast(cliniko_text(p.discounted_amount) as decimal(14, 2)) as discounted_amount,
        p.created_at as created_at,
        p.updated_at as updated_at,
        p.closed_at as closed_at,
        p.status = 20 as is_paid,
        case when p.status = 20 then coalesce(p.closed_at, p.updated_at) end as paid_at,
        p.deleted_at as deleted_at,
        removed_at,
        greatest(synced_at, removed_at) as loaded_at
    from parsed
),

standing as (
    select * exclude (deleted_at, removed_at)
    from renamed
    where deleted_at is null and removed_at is null
)

select * from standing
