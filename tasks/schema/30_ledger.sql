-- The message ledger: the only way a message leaves. One row per message the system means to send,
-- keyed by a deterministic send key so planning twice plans once. Written only by tasks/messages/ledger.py.
--
--   planned -> sending -> sent | failed | unknown        planned -> cancelled | skipped
--   planned, waiting: a planned row dispatch does not take yet, with its reason: one that can
--     change before the message's moment + grace (`waiting_reason`: no address, archived,
--     reminder preference, off the marketing list...), or one that ends at `next_attempt_at`
--     (frequency cap, quiet hours, a busy provider). It goes when the reason clears before
--     `expires_at`, and is skipped with the reason after (tasks/messages/waiting.py, hold).
--   sending -> planned   (retry later: the provider certainly did not take it)
--   unknown -> sent      (a provider lookup later confirmed it went, or a person did)
--   unknown -> planned   (a person decided to send it again: `relay ledger resolve --resend`)
--   skipped -> planned   (a trigger's skip about time, its appointment moved so that its moment
--     is ahead again: tasks/triggers/reopen.py; never a row once claimed, see `reopened`)
--
-- `sending` is committed just before each request (one claim per request), so a crash leaves
-- evidence on the rows that may have gone, never a silent resend, and the rest stay `planned`.
-- Timestamps are UTC; the address is filled at send time for audit and stays here.

CREATE SEQUENCE IF NOT EXISTS state.message_seq;

CREATE TABLE IF NOT EXISTS state.messages (
    message_id          BIGINT PRIMARY KEY DEFAULT nextval('state.message_seq'),
    send_key            VARCHAR NOT NULL UNIQUE,   -- source kind:name:patient:occasion
    source_kind         VARCHAR NOT NULL CHECK (source_kind IN ('trigger', 'journey', 'campaign')),
    source_name         VARCHAR NOT NULL,
    patient_id          BIGINT NOT NULL,
    appointment_id      BIGINT,
    channel             VARCHAR NOT NULL CHECK (channel IN ('email', 'sms')),
    purpose             VARCHAR NOT NULL CHECK (purpose IN ('transactional', 'marketing')),
    template            VARCHAR NOT NULL,
    due_at              TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ,               -- end of the grace window; later = skipped
    status              VARCHAR NOT NULL DEFAULT 'planned' CHECK (status IN
                            ('planned', 'sending', 'sent', 'failed', 'unknown', 'cancelled', 'skipped')),
    status_reason       VARCHAR,                   -- why, in words without personal data
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ,               -- set when a provider asked us to come back later
    claim_id            VARCHAR,                   -- the dispatch run that set `sending`
    provider            VARCHAR,                   -- outbox | postmark | twilio
    provider_message_id VARCHAR,
    error_code          VARCHAR,
    to_address          VARCHAR,
    content_hash        VARCHAR,                   -- sha256 of what was sent: matches provider records
    planned_at          TIMESTAMPTZ NOT NULL,
    sending_at          TIMESTAMPTZ,
    sent_at             TIMESTAMPTZ,
    failed_at           TIMESTAMPTZ,
    unknown_at          TIMESTAMPTZ,
    cancelled_at        TIMESTAMPTZ,
    skipped_at          TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);

-- A person's decision on an `unknown` message (tasks/messages/ledger.py, resolve): who, when, and
-- what in words; kept when a resent message is later sent.
ALTER TABLE state.messages ADD COLUMN IF NOT EXISTS resolved_by VARCHAR;
ALTER TABLE state.messages ADD COLUMN IF NOT EXISTS resolved_at TIMESTAMPTZ;
ALTER TABLE state.messages ADD COLUMN IF NOT EXISTS resolution VARCHAR;

-- Why a planned message waits (a reason that can change before its moment + grace); NULL: it
-- does not. Kept on a row that was skipped after waiting, as the record of what it waited for.
ALTER TABLE state.messages ADD COLUMN IF NOT EXISTS waiting_reason VARCHAR;

-- Why a skipped message was planned again (tasks/triggers/reopen.py): when, and the skip it
-- undid, in words without personal data; kept after it is sent or skipped again.
ALTER TABLE state.messages ADD COLUMN IF NOT EXISTS reopened VARCHAR;
