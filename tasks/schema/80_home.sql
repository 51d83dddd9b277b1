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
