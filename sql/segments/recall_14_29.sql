-- Recall band: last visit 14 to 29 days ago, and nothing booked since (no upcoming appointment).
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, last_visit_at.
select patient_id, last_visit_at
from marts.recall_candidates
where days_since_last_visit between 14 and 29
