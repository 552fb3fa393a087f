CREATE TABLE entries (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL,
    -- The weight exactly as given; converted only on read.
    value       DOUBLE PRECISION NOT NULL CHECK (value > 0),
    unit        SMALLINT NOT NULL CHECK (unit IN (1, 2)),
    recorded_on DATE NOT NULL,
    note        TEXT NOT NULL DEFAULT '',
    -- AIP-155 request id of the CreateEntry that made the entry.
    request_id  UUID,
    create_time TIMESTAMPTZ NOT NULL,
    update_time TIMESTAMPTZ NOT NULL
);

-- Serves listing in both orders (keyset on the full sort key), date ranges,
-- summaries and the purge of a user.
CREATE INDEX entries_by_user_and_day ON entries (user_id, recorded_on, create_time, id);

-- Idempotent CreateEntry: one entry per (user, request id). NULLs are distinct.
CREATE UNIQUE INDEX entries_request_id ON entries (user_id, request_id);

-- Tombstones of purged users: no entry may be created for them again.
CREATE TABLE purged_users (
    user_id   UUID PRIMARY KEY,
    purged_at TIMESTAMPTZ NOT NULL
);

-- Keys shared by every replica on this database (page-token signing).
CREATE TABLE signing_keys (
    name TEXT PRIMARY KEY,
    key  BYTEA NOT NULL
);
