-- A paid invoice says when it was paid: invoice_paid triggers are timed from paid_at (closed_at,
-- else updated_at). A row here means Cliniko sent a paid invoice with neither: such invoices
-- would never be thanked, so the build holds staging.invoices (and what reads it) instead.
select invoice_id, status
from staging.invoices
where is_paid and paid_at is null
