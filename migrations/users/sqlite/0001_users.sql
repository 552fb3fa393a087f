-- Instants are INTEGER microseconds since the Unix epoch (UTC); ids are
-- 16-byte UUID blobs.
CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    weight_unit   INTEGER NOT NULL CHECK (weight_unit IN (1, 2)),
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL
);

CREATE UNIQUE INDEX users_email_key ON users (email COLLATE NOCASE);

CREATE TABLE login_throttle (
    user_id      BLOB PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL
);

CREATE TABLE purge_jobs (
    id                 BLOB PRIMARY KEY,
    user_id            BLOB NOT NULL,
    request_id         TEXT,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts           INTEGER NOT NULL,
    next_attempt_at    INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    completed_at       INTEGER,
    purged_entry_count INTEGER,
    last_error         TEXT
);

-- Serves the claim (pending, by due time) and the queue statistics; done
-- jobs, the bulk of the table over time, stay out of it.
CREATE INDEX purge_jobs_open ON purge_jobs (state, next_attempt_at) WHERE state <> 'done';

CREATE TABLE signing_keys (
    name TEXT PRIMARY KEY,
    key  BLOB NOT NULL
);
