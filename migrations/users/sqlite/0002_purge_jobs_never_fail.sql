-- A purge job is never given up on: there is no 'failed' state any more.
-- Jobs an earlier version parked as failed are due again at once. SQLite
-- cannot alter a CHECK constraint, so the table is rebuilt.
CREATE TABLE purge_jobs_next (
    id                 BLOB PRIMARY KEY,
    user_id            BLOB NOT NULL,
    request_id         TEXT,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    attempts           INTEGER NOT NULL,
    next_attempt_at    INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    completed_at       INTEGER,
    purged_entry_count INTEGER,
    last_error         TEXT
);

INSERT INTO purge_jobs_next
SELECT id, user_id, request_id,
       CASE WHEN state = 'failed' THEN 'pending' ELSE state END,
       attempts,
       CASE WHEN state = 'failed' THEN 0 ELSE next_attempt_at END,
       created_at,
       CASE WHEN state = 'failed' THEN NULL ELSE completed_at END,
       purged_entry_count, last_error
FROM purge_jobs;

DROP TABLE purge_jobs;
ALTER TABLE purge_jobs_next RENAME TO purge_jobs;

CREATE INDEX purge_jobs_open ON purge_jobs (state, next_attempt_at) WHERE state <> 'done';
CREATE INDEX purge_jobs_by_user ON purge_jobs (user_id);
CREATE INDEX purge_jobs_by_age ON purge_jobs (created_at, id);
CREATE INDEX purge_jobs_by_state_and_age ON purge_jobs (state, created_at, id);
