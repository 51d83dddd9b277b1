-- The owner's weekly report (flows/report.py): one row per clinic and week, so a retry or a second
-- run that week never emails twice. Not a patient message: not in state.messages. Written only by
-- tasks/owner_report.py, with the ledger's rule for a send in doubt:
--
--   sending -> sent | failed | unknown,  sending -> (row deleted: the provider certainly did not
--   take it, so the next run sends it again)
--
-- `sending` is committed just before the request; a run that finds a row still `sending` asks the
-- provider (by send key) whether it has it, exactly as dispatch does for patient messages: found =
-- sent, certainly absent = sent again, in doubt = `unknown`, never resent without a person.
CREATE TABLE IF NOT EXISTS state.owner_reports (
    send_key             VARCHAR PRIMARY KEY,          -- report:<clinic>:<first day of the week>
    clinic               VARCHAR NOT NULL,
    week_start           DATE NOT NULL,                -- clinic-local first day of the week reported
    week_end             DATE NOT NULL,                -- its last day
    status               VARCHAR NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'unknown')),
    status_reason        VARCHAR,                      -- words, no personal data
    provider             VARCHAR NOT NULL,
    provider_message_id  VARCHAR,
    content_hash         VARCHAR,
    attempts             INTEGER NOT NULL DEFAULT 1,
    sending_at           TIMESTAMPTZ NOT NULL,
    sent_at              TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL,
    UNIQUE (clinic, week_start)
);
