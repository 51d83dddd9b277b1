-- Journeys and campaigns: what the marketing planner knows and must keep. Written only by
-- tasks/marketing/journeys.py and tasks/marketing/campaigns.py, inside transactions that also insert the ledger rows
-- the progress stands for, so a crash rolls both back together (no step repeated or skipped).

-- One row per journey the configuration has had. live_from is the go-live moment: entry events
-- before it never enrol anyone (a journey created today does not backfill last year's entries).
-- entry_cursor is the last membership event (or, for date entries, the moment) already considered,
-- so each entry event is decided exactly once.
CREATE TABLE IF NOT EXISTS state.journeys (
    journey          VARCHAR PRIMARY KEY,
    live_from        TIMESTAMPTZ NOT NULL,
    event_cursor     BIGINT NOT NULL DEFAULT 0,      -- state.membership_events.event_id
    moment_cursor    TIMESTAMPTZ NOT NULL,           -- date entries: anniversaries up to here done
    removed_at       TIMESTAMPTZ,                    -- gone from clinic.yaml; back = live again
    last_run_at      TIMESTAMPTZ NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS state.journey_enrolment_seq;

-- One row per time a patient entered a journey. occasion names the entry (the membership event,
-- or the anniversary's year), so the same entry can never enrol twice.
CREATE TABLE IF NOT EXISTS state.journey_enrolments (
    enrolment_id  BIGINT PRIMARY KEY DEFAULT nextval('state.journey_enrolment_seq'),
    journey       VARCHAR NOT NULL,
    patient_id    BIGINT NOT NULL,
    occasion      VARCHAR NOT NULL,               -- 'event:<event_id>' | 'date:<year>'
    entered_at    TIMESTAMPTZ NOT NULL,           -- when the entry happened (event or anniversary)
    enrolled_at   TIMESTAMPTZ NOT NULL,
    status        VARCHAR NOT NULL CHECK (status IN ('active', 'completed', 'exited')),
    exit_reason   VARCHAR,                        -- words without personal data
    next_step     INTEGER NOT NULL DEFAULT 0,     -- index into the journey's steps
    next_at       TIMESTAMPTZ NOT NULL,           -- when next_step is due
    finished_at   TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (journey, patient_id, occasion)
);

-- Every step an enrolment went through, once: (enrolment, step) is the key, like the ledger's.
CREATE TABLE IF NOT EXISTS state.journey_steps (
    enrolment_id  BIGINT NOT NULL,
    step          INTEGER NOT NULL,
    kind          VARCHAR NOT NULL CHECK (kind IN ('send', 'wait', 'condition')),
    outcome       VARCHAR NOT NULL,               -- queued | skipped | waited | passed | failed
    detail        VARCHAR,                        -- why (skipped, failed); no personal data
    message_id    BIGINT,                         -- state.messages row of a queued send
    happened_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (enrolment_id, step)
);

-- One row per campaign an operator confirmed. audience_frozen_at is set in the same transaction
-- that puts the audience into the ledger (keys campaign:<name>:<patient>:once), so a campaign is
-- frozen once, and a second confirmation is refused.
CREATE TABLE IF NOT EXISTS state.campaigns (
    campaign            VARCHAR PRIMARY KEY,
    segment             VARCHAR NOT NULL,          -- as configured when it was confirmed
    channel             VARCHAR NOT NULL,
    template            VARCHAR NOT NULL,
    confirmation_id     VARCHAR NOT NULL,
    confirmed_at        TIMESTAMPTZ NOT NULL,
    confirmed_audience  INTEGER NOT NULL,          -- the size the operator saw
    send_at             TIMESTAMPTZ NOT NULL,      -- UTC; when the audience is frozen and sent
    audience_frozen_at  TIMESTAMPTZ,
    audience_size       INTEGER,                   -- messages queued at the freeze
    cancelled_at        TIMESTAMPTZ
);

-- What the operator confirmed is what goes, whatever clinic.yaml says later: the throttle and the
-- audience rule are recorded with the segment, channel and template (tasks/marketing/campaigns.py).
ALTER TABLE state.campaigns ADD COLUMN IF NOT EXISTS per_minute INTEGER;
ALTER TABLE state.campaigns ADD COLUMN IF NOT EXISTS audience_rule VARCHAR;

-- The enrolment's name in its send keys (journey:<name>:<patient>:<entry_key>:s<step>), from
-- what it is, never from a counter of this file: 'n<k>' for the patient's k-th entry into the
-- journey, 'y<year>' for a date entry's anniversary. The same clinic planned on another
-- database (a restored backup, a second machine) names the same message the same way.
-- Enrolments made before this column keep the key they were made with ('e<enrolment_id>'), so
-- a message already queued or sent under it is recognised as the same message after the upgrade.
ALTER TABLE state.journey_enrolments ADD COLUMN IF NOT EXISTS entry_key VARCHAR;
UPDATE state.journey_enrolments SET entry_key = 'e' || enrolment_id WHERE entry_key IS NULL;
