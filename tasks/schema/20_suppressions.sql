-- Suppressions and bounces: what the marketing lists read, and what sending and feedback write.
-- Append-only history: a STOP, an unsubscribe or a bounce adds a 'suppress' row; a START or a
-- fresh opt-in adds a 'lift' row. The current status of an address is its latest row.

CREATE SEQUENCE IF NOT EXISTS state.suppression_seq;

CREATE TABLE IF NOT EXISTS state.suppressions (
    suppression_id BIGINT PRIMARY KEY DEFAULT nextval('state.suppression_seq'),
    channel        VARCHAR NOT NULL CHECK (channel IN ('email', 'sms')),
    address        VARCHAR NOT NULL,   -- email lower-cased and trimmed; phone in E.164
    action         VARCHAR NOT NULL CHECK (action IN ('suppress', 'lift')),
    -- unsubscribed | hard_bounce | soft_bounce_limit | spam_complaint | stop | carrier_opt_out
    -- | invalid_address | manual | opt_in
    reason         VARCHAR NOT NULL,
    -- 'marketing': no marketing; 'all': undeliverable, transactional too (hard bounce, invalid)
    scope          VARCHAR NOT NULL DEFAULT 'marketing' CHECK (scope IN ('marketing', 'all')),
    source         VARCHAR NOT NULL,   -- postmark | twilio | unsubscribe_link | csv_import | send_result | operator
    evidence       VARCHAR,            -- provider id, bounce id, file and line: never message content
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every bounce pulled from the provider, once (keyed on the provider's id): the marketing list
-- counts soft bounces per address from here (marketing_list.soft_bounce_limit of them remove it).
CREATE TABLE IF NOT EXISTS state.email_bounces (
    bounce_id   VARCHAR PRIMARY KEY,
    email       VARCHAR NOT NULL,      -- lower-cased and trimmed
    kind        VARCHAR NOT NULL CHECK (kind IN ('hard', 'soft', 'spam_complaint', 'other')),
    bounced_at  TIMESTAMPTZ NOT NULL,
    source      VARCHAR NOT NULL
);

-- The one reading of the history above: what is suppressed now, per channel, address and scope
-- (the latest row of each decides; a 'lift' ends it). Python and the SQL models read this view,
-- never their own window over state.suppressions.
CREATE OR REPLACE VIEW state.current_suppressions AS
SELECT channel, address, scope, reason, source, evidence, occurred_at
FROM (
    SELECT *, row_number() OVER (PARTITION BY channel, address, scope
                                 ORDER BY occurred_at DESC, suppression_id DESC) AS recency
    FROM state.suppressions
)
WHERE recency = 1 AND action = 'suppress';
