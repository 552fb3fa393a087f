CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    weight_unit   SMALLINT NOT NULL CHECK (weight_unit IN (1, 2)),
    create_time   TIMESTAMPTZ NOT NULL,
    update_time   TIMESTAMPTZ NOT NULL
);

-- Emails are stored lower-cased; indexing lower(email) keeps uniqueness
-- case-insensitive even for rows written by hand, and serves login.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Failed logins per account in the current window (SPEC "Security").
CREATE TABLE login_throttle (
    user_id      UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_start TIMESTAMPTZ NOT NULL,
    failures     INTEGER NOT NULL
);

-- Transactional outbox of the cascade: a row is written in the transaction
-- that deletes the user, and delivered to PurgeUserEntries until acknowledged.
CREATE TABLE purge_jobs (
    id                 UUID PRIMARY KEY,
    user_id            UUID NOT NULL,
    request_id         TEXT,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts           INTEGER NOT NULL,
    next_attempt_at    TIMESTAMPTZ NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    completed_at       TIMESTAMPTZ,
    purged_entry_count BIGINT,
    last_error         TEXT
);

-- Serves the claim (pending, by due time) and the queue statistics; done
-- jobs, the bulk of the table over time, stay out of it.
CREATE INDEX purge_jobs_open ON purge_jobs (state, next_attempt_at) WHERE state <> 'done';

-- Keys shared by every replica on this database (page-token signing).
CREATE TABLE signing_keys (
    name TEXT PRIMARY KEY,
    key  BYTEA NOT NULL
);
