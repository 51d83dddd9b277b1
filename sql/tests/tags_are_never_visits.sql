-- A tag (an appointment of clinic.yaml's tag_categories, seed 000) is never a visit and never
-- an appointment that counts: no visit flag, no care flag, no sequence number.
select appointment_kind, appointment_id
from marts.appointments
where is_tag and (is_visit or is_care or sequence_number is not null)
