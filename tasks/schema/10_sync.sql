-- Sync state: written only by the sync, in the same transaction as the raw rows it describes.

-- One watermark per (resource, path): the largest updated_at committed so far.
CREATE TABLE IF NOT EXISTS state.sync_watermarks (
    resource    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    watermark   TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (resource, path)
);

-- Records Cliniko sent that we could not load, with why. The sync goes on without them; a later
-- good copy of the same record clears its entry.
CREATE TABLE IF NOT EXISTS state.quarantine (
    resource     VARCHAR NOT NULL,
    record_key   VARCHAR NOT NULL,
    reason       VARCHAR NOT NULL,
    payload      VARCHAR,
    first_seen   TIMESTAMPTZ NOT NULL,
    last_seen    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (resource, record_key)
);

-- One row per sync or reconciliation run: counts only, never personal data.
CREATE TABLE IF NOT EXISTS state.sync_runs (
    run_id       VARCHAR PRIMARY KEY,
    kind         VARCHAR NOT NULL,          -- 'incremental' | 'reconcile' | 'partial' (fast lane)
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    status       VARCHAR NOT NULL,          -- 'running' | 'completed' | 'failed' | 'interrupted'
                                            -- (its process stopped: set when the next starts)
    summary      JSON,
    error        VARCHAR
);
