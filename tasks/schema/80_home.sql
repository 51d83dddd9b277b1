-- The database's identity (tasks/home.py): which clinic's state this file is, which lineage
-- (database_id, kept by every backup and restore of it) and which generation: 1 when a tick first
-- claimed the clinic's home, one more each time `relay clinic move` restored it on another
-- machine. A tick compares it with the home recorded on the Prefect server before it plans or
-- sends anything. One row.
CREATE TABLE IF NOT EXISTS state.clinic_identity (
    clinic       VARCHAR PRIMARY KEY,
    database_id  VARCHAR NOT NULL,
    generation   INTEGER NOT NULL,
    machine      VARCHAR NOT NULL,     -- where this generation lives (RELAY_MACHINE)
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- An old copy remembers that the clinic moved past it (tasks/homecopy.py note_superseded): set when
-- this machine saw the home recorded at a newer generation (the move that left this copy behind,
-- a command run here after it). Such a copy never plans or sends again, even if the server's
-- record is later put back to an older one (its database restored from a backup taken before the
-- move): it would send again what the newer generation sent. Cleared when an identity is written
-- (a restore, `relay clinic claim --fresh`).
ALTER TABLE state.clinic_identity ADD COLUMN IF NOT EXISTS superseded_by INTEGER;
ALTER TABLE state.clinic_identity ADD COLUMN IF NOT EXISTS superseded_on VARCHAR;
