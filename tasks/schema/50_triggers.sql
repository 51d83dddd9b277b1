-- When each trigger went live: written only by the planner (tasks/triggers/plan.py), in the tick's
-- transaction. One row per period a trigger was live with one definition. The open row (ended_at
-- NULL) is the current one; events whose send moment is before its went_live_at never fire, so
-- switching a trigger on (or redefining it) never sends for history. clinic.yaml is not trusted
-- to say when a trigger went live: the first tick that sees it enabled records the moment here.
CREATE TABLE IF NOT EXISTS state.trigger_activations (
    trigger_name     VARCHAR NOT NULL,
    went_live_at     TIMESTAMPTZ NOT NULL,
    fingerprint      VARCHAR NOT NULL,     -- hash of what decides who and when (tasks/triggers/definition.py)
    definition       JSON NOT NULL,        -- the trigger as configured then (no personal data)
    ended_at         TIMESTAMPTZ,          -- switched off, removed or redefined
    ended_reason     VARCHAR,
    PRIMARY KEY (trigger_name, went_live_at)
);

-- The Cliniko ids each name in a trigger's filters and exclusions matched when it went live
-- (tasks/triggers/names.py; written by the planner in the tick's transaction). The trigger's SQL
-- picks rows by these ids from then on, so a rename in Cliniko keeps it on the same rows. One row
-- per name of one activation; a trigger with names has none until they all match.
CREATE TABLE IF NOT EXISTS state.trigger_names (
    trigger_name     VARCHAR NOT NULL,
    went_live_at     TIMESTAMPTZ NOT NULL,  -- the activation (state.trigger_activations) it belongs to
    reference        VARCHAR NOT NULL,      -- where it is written: 'filters.categories', 'exclude.businesses'...
    name             VARCHAR NOT NULL,      -- trimmed, lower-case, as filters compare names
    ids              BIGINT[] NOT NULL,     -- the ids it matched (a category: its appointment types)
    recorded_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (trigger_name, went_live_at, reference, name)
);

-- The names of the triggers' current activations: the ids the candidate SQL is bound with.
CREATE OR REPLACE VIEW state.live_trigger_names AS
SELECT n.trigger_name, n.reference, n.name, n.ids
FROM state.trigger_names n
JOIN state.trigger_activations a USING (trigger_name, went_live_at)
WHERE a.ended_at IS NULL;

-- Appointment types a tag category of clinic.yaml (tag_categories) has named: they stay tags
-- (marts.appointments.is_tag) after their category is renamed in Cliniko. Recorded by each
-- planning tick; a name taken out of tag_categories loses its rows.
CREATE TABLE IF NOT EXISTS state.tag_types (
    tag_category         VARCHAR NOT NULL,  -- trimmed, lower-case, as in state.build_context
    appointment_type_id  BIGINT NOT NULL,
    recorded_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tag_category, appointment_type_id)
);
