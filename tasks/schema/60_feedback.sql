-- Feedback from the providers (bounces, provider suppressions, SMS replies) and unsubscribes:
-- written only by tasks/feedback.py, each pull in one transaction with its cursor, so a pull
-- that dies halfway leaves nothing half-recorded and the next one reads the same items again.

-- Where each feed last got to. The next pull re-reads a little before it (providers filter by
-- day, some in their own time zone) and the keys below drop what was already taken.
CREATE TABLE IF NOT EXISTS state.feedback_cursors (
    provider    VARCHAR NOT NULL,      -- postmark | twilio | unsubscribe_link
    feed        VARCHAR NOT NULL,      -- bounces | suppressions:<stream> | inbound
    cursor_at   TIMESTAMPTZ,           -- the newest item's own time (provider clock)
    updated_at  TIMESTAMPTZ NOT NULL,
    items       BIGINT NOT NULL DEFAULT 0,   -- new items taken from this feed, ever
    PRIMARY KEY (provider, feed)
);

-- Every provider item taken, once: a Twilio message SID, a digest of a Postmark suppression
-- (stream, address, creation time), an unsubscribe click. Bounces are keyed by
-- state.email_bounces itself. The key is never an address in clear.
CREATE TABLE IF NOT EXISTS state.feedback_items (
    provider     VARCHAR NOT NULL,
    feed         VARCHAR NOT NULL,
    item_key     VARCHAR NOT NULL,
    outcome      VARCHAR NOT NULL,     -- what it did: suppress | lift | ignored | already | unmatched
    occurred_at  TIMESTAMPTZ,
    recorded_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, feed, item_key)
);

-- Which message each bounce was about, for the reports (bounced per trigger/journey/campaign).
CREATE TABLE IF NOT EXISTS state.email_bounce_messages (
    bounce_id            VARCHAR PRIMARY KEY,   -- state.email_bounces.bounce_id
    provider_message_id  VARCHAR,               -- state.messages.provider_message_id
    message_stream       VARCHAR,
    bounce_type          VARCHAR NOT NULL       -- Postmark's Type, e.g. HardBounce, Transient
);

-- The bounces that count for an address: those since its latest lift (a fresh opt-in starts
-- the count again). The email marketing list applies the same rule; feedback reads this view
-- to know when the clinic's marketing_list.soft_bounce_limit is reached.
CREATE OR REPLACE VIEW state.email_bounce_counts AS
WITH last_lift AS (
    SELECT address AS email, max(occurred_at) AS lifted_at
    FROM state.suppressions
    WHERE channel = 'email' AND action = 'lift'
    GROUP BY address
)
SELECT
    b.email,
    count(*) FILTER (WHERE b.kind = 'hard') AS hard_bounces,
    count(*) FILTER (WHERE b.kind = 'soft') AS soft_bounces,
    count(*) FILTER (WHERE b.kind = 'spam_complaint') AS spam_complaints
FROM state.email_bounces b
LEFT JOIN last_lift l ON l.email = b.email
WHERE b.bounced_at > coalesce(l.lifted_at, '-infinity'::TIMESTAMPTZ)
GROUP BY b.email;

-- What became of each SMS the provider accepted (the ledger's `sent` means accepted, no more):
-- Twilio's own status and error code, one row per ledger message, written only by
-- tasks/feedback_delivery.py from the delivery poll or a status callback. A final row (delivered,
-- undelivered, failed, or missing at the provider) never changes again; the rest are polled
-- again, least recently checked first, while they are recent (tasks/feedback_delivery.py says
-- how recent and how many a pull).
CREATE TABLE IF NOT EXISTS state.sms_deliveries (
    message_id           BIGINT PRIMARY KEY,    -- state.messages.message_id
    provider             VARCHAR NOT NULL,      -- twilio
    provider_message_id  VARCHAR NOT NULL,      -- the Message SID
    -- the provider's status: queued | sending | sent | delivered | undelivered | failed
    -- (| missing: the provider no longer has the message)
    status               VARCHAR NOT NULL,
    error_code           VARCHAR,               -- e.g. 30006; its meaning: tasks/providers/twilio.py
    final                BOOLEAN NOT NULL,
    status_at            TIMESTAMPTZ,           -- when the provider says the status was reached
    checked_at           TIMESTAMPTZ NOT NULL,  -- our latest poll or callback about it
    checks               INTEGER NOT NULL DEFAULT 0,
    source               VARCHAR NOT NULL       -- poll | callback: what told us the status
);
