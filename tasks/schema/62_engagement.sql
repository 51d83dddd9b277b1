-- Email engagement and test sends (tasks/engagement.py, relay/cli/test_send.py).

-- Each open and click Postmark reported for a message it tracked, once (the key is a digest of
-- the kind, the message id, the time and, for a click, the link). Counts only: the message id,
-- the time and whether Postmark called it the first open; never the recipient, the link or the
-- client. Written by tasks/engagement.py in one transaction with the feed's cursor.
CREATE TABLE IF NOT EXISTS state.email_engagement (
    event_key            VARCHAR PRIMARY KEY,
    kind                 VARCHAR NOT NULL CHECK (kind IN ('open', 'click')),
    provider_message_id  VARCHAR NOT NULL,      -- state.messages.provider_message_id
    message_stream       VARCHAR,
    occurred_at          TIMESTAMPTZ NOT NULL,  -- Postmark's ReceivedAt of the open or click
    first_open           BOOLEAN,               -- opens: Postmark's FirstOpen; clicks: NULL
    recorded_at          TIMESTAMPTZ NOT NULL
);

-- `relay test-send`: a trigger's message rendered for a real patient and sent to a staff
-- address, marked [TEST]. Never in state.messages (it is not the patient's message); the staff
-- address only as a digest.
CREATE TABLE IF NOT EXISTS state.test_sends (
    sent_at              TIMESTAMPTZ NOT NULL,
    trigger_name         VARCHAR NOT NULL,
    patient_id           BIGINT NOT NULL,
    channel              VARCHAR NOT NULL,
    to_digest            VARCHAR NOT NULL,
    provider             VARCHAR NOT NULL,
    outcome              VARCHAR NOT NULL,      -- sent | failed | retry | unknown
    provider_message_id  VARCHAR
);
