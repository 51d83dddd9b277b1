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
