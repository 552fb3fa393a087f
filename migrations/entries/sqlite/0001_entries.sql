-- Instants are INTEGER microseconds since the Unix epoch (UTC), dates are
-- ISO-8601 TEXT (which sorts by date), ids are 16-byte UUID blobs.
CREATE TABLE entries (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL,
    value       REAL NOT NULL CHECK (value > 0),
    unit        INTEGER NOT NULL CHECK (unit IN (1, 2)),
    recorded_on TEXT NOT NULL,
    note        TEXT NOT NULL DEFAULT '',
    request_id  BLOB,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);

CREATE INDEX entries_by_user_and_day ON entries (user_id, recorded_on, create_time, id);

CREATE UNIQUE INDEX entries_request_id ON entries (user_id, request_id);

CREATE TABLE purged_users (
    user_id   BLOB PRIMARY KEY,
    purged_at INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    name TEXT PRIMARY KEY,
    key  BLOB NOT NULL
);
