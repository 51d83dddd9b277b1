-- Mobile numbers already read with phonenumbers, so a build parses only numbers it has not seen
-- (a full rebuild after a SQL change re-reads 100,000 patients but parses none of them again).
-- Written by the sync as it writes the patients (in the same commit: tasks/cliniko/writer.py),
-- and by the model runner inside the build's transaction, so a failed build adds nothing.
-- Holds only the clinic's current country and phonenumbers version: the runner deletes the rest
-- at the start of a build (a number reads differently in another country or with newer
-- metadata). Numbers only, with no link to a patient; staging.patients reads it.
CREATE TABLE IF NOT EXISTS state.phone_numbers (
    number      VARCHAR NOT NULL,   -- a phone entry's number as typed in Cliniko
    country     VARCHAR NOT NULL,   -- ISO 3166 alpha-2 the number was read in (clinic.yaml)
    parser      VARCHAR NOT NULL,   -- phonenumbers version that read it
    mobile_e164 VARCHAR,            -- E.164, or NULL when it is not a valid mobile
    PRIMARY KEY (number, country)
);
