-- Model builds and membership history: written only by the model runner, inside the build's
-- transaction, so they always describe the models that are in place.

-- One row per build attempt. A successful build's row commits with its models; a failed build
-- rolls everything back and then records its failure here. Planning and sending refuse to run
-- unless the latest row is 'succeeded' (see tasks.models.runner.latest_build).
CREATE TABLE IF NOT EXISTS state.model_builds (
    build_id      VARCHAR PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL,
    status        VARCHAR NOT NULL CHECK (status IN ('succeeded', 'failed')),
    built_at      TIMESTAMPTZ,         -- the clock the models saw (state.build_context.built_at)
    -- Newest raw.* write (synced_at or removed_at) the build read: the next build's incremental
    -- models read only what the sync wrote after it.
    data_high_water TIMESTAMPTZ,
    failed_file   VARCHAR,             -- sql/... file that broke the build (model or data test)
    error         VARCHAR,             -- DuckDB's message or the failing test's row count
    summary       JSON                 -- counts only: rows per model, audience sizes, joins/leaves
);

-- What the models may read about the build in progress: its clock and the clinic's list
-- settings (from clinic.yaml). One row, replaced at the start of each build; models read values
-- from here instead of having user text pasted into SQL. (Incremental models also read
-- getvariable('changes_since') and getvariable('previous_built_at'): see tasks/models/runner.py.)
CREATE TABLE IF NOT EXISTS state.build_context (
    build_id                 VARCHAR NOT NULL,
    built_at                 TIMESTAMPTZ NOT NULL,
    country                  VARCHAR NOT NULL,   -- ISO 3166 alpha-2: how phone numbers are read
    clinic_time_zone         VARCHAR NOT NULL,   -- IANA; for businesses Cliniko sent none for
    active_patient_months    INTEGER,            -- NULL = all patients
    list_size_cap            INTEGER,            -- NULL = no cap
    honour_email_opt_in      BOOLEAN NOT NULL,   -- honour Cliniko's accepted_email_marketing
    cap_order                VARCHAR NOT NULL,   -- which people a cap keeps first
    soft_bounce_limit        INTEGER,            -- this many soft bounces take an address off
    tag_categories           VARCHAR[]           -- trimmed, lower-case: appointments that tag, not visit
);
-- Files made before soft_bounce_limit / tag_categories existed get them (NULL until their next build).
ALTER TABLE state.build_context ADD COLUMN IF NOT EXISTS soft_bounce_limit INTEGER;
ALTER TABLE state.build_context ADD COLUMN IF NOT EXISTS tag_categories VARCHAR[];

-- Every audience the runner has recorded: the two marketing lists and each segment.
CREATE TABLE IF NOT EXISTS state.audiences (
    audience        VARCHAR PRIMARY KEY,   -- 'email_marketing_list' | 'sms_marketing_list' | 'segments.<name>'
    first_build_id  VARCHAR NOT NULL,
    first_built_at  TIMESTAMPTZ NOT NULL,
    retired_at      TIMESTAMPTZ            -- its model was deleted; members dropped without events
);

-- Who is in each audience after the latest successful build: one row per (audience,
-- member_key), which the runner keeps (it adds only members the table does not hold:
-- tasks/models/membership.py). No primary key: keeping its index of every member up to date
-- cost a 5-minute build ~25 ms (bench models); tasks/warehouse.py drops it from older databases.
CREATE TABLE IF NOT EXISTS state.audience_members (
    audience    VARCHAR NOT NULL,
    member_key  VARCHAR NOT NULL,      -- email (email list), E.164 mobile (SMS list), patient_id (segments)
    patient_id  BIGINT,                -- the patient its row names now (a shared address's holder)
    joined_at   TIMESTAMPTZ NOT NULL
);

-- Append-only: who joined or left each audience, and when. Journeys start from these events.
-- 'initial' marks the members an audience had when it was first built: they did not "just
-- join", so journeys must not treat them as entries (no backfill).
-- event_id comes from the sequence alone (nothing else writes it), so it is unique without a
-- primary key: that index holds every event ever, and each build that appends a few hundred
-- paid more for it as they grew (~7 ms a 5-minute build at 5.6 million events, a large
-- clinic's few years; ~1 ms at 580,000). tasks/warehouse.py drops it from older databases.
CREATE SEQUENCE IF NOT EXISTS state.membership_event_seq;

CREATE TABLE IF NOT EXISTS state.membership_events (
    event_id     BIGINT NOT NULL DEFAULT nextval('state.membership_event_seq'),
    build_id     VARCHAR NOT NULL,
    audience     VARCHAR NOT NULL,
    member_key   VARCHAR NOT NULL,
    patient_id   BIGINT,
    event        VARCHAR NOT NULL CHECK (event IN ('joined', 'left')),
    initial      BOOLEAN NOT NULL DEFAULT false,
    occurred_at  TIMESTAMPTZ NOT NULL
);

-- Incremental models remember what they were built from: a changed SQL file (or a setting of
-- state.build_context its SQL reads, e.g. the country, which changes how phones are read, or the
-- tag categories) rebuilds them in full instead of merging onto stale rows.
CREATE TABLE IF NOT EXISTS state.model_fingerprints (
    model        VARCHAR PRIMARY KEY,
    fingerprint  VARCHAR NOT NULL
);

-- The model tables whose rows the build that wrote them proved all distinct (no two rows alike):
-- the next build brings them to their new rows by difference without asking again
-- (tasks/models/tables.py ModelTables). Only builds write model tables.
CREATE TABLE IF NOT EXISTS state.distinct_model_tables (
    model        VARCHAR PRIMARY KEY
);

-- The tables each model and data test file reads, as DuckDB parsed them (key: the file's text and
-- DuckDB's version): the next build's process reads them back instead of parsing every file
-- again (tasks/models/project.py remember_parses). A cache: deleting its rows costs one parse.
CREATE TABLE IF NOT EXISTS state.parsed_sql (
    key          VARCHAR NOT NULL,
    depends_on   VARCHAR[] NOT NULL
);
