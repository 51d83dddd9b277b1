-- Recall band: last visit 7 to 13 days ago, and nothing booked since (no upcoming appointment).
-- Over every live (not archived) patient; marketing sends reach only those also on a marketing
-- list (the planner joins the list). Columns: patient_id, last_visit_at.
select patient_id, last_visit_at
from marts.recall_candidates
where days_since_last_visit between 7 and 13
