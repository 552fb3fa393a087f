-- A purge job is never given up on: there is no 'failed' state any more.
-- Jobs an earlier version parked as failed are due again at once.
UPDATE purge_jobs
SET state = 'pending', next_attempt_at = now(), completed_at = NULL
WHERE state = 'failed';

ALTER TABLE purge_jobs DROP CONSTRAINT purge_jobs_state_check;
ALTER TABLE purge_jobs ADD CONSTRAINT purge_jobs_state_check CHECK (state IN ('pending', 'done'));

-- GetPurgeJob (by user) and ListPurgeJobs (oldest first, optionally by state).
CREATE INDEX purge_jobs_by_user ON purge_jobs (user_id);
CREATE INDEX purge_jobs_by_age ON purge_jobs (created_at, id);
CREATE INDEX purge_jobs_by_state_and_age ON purge_jobs (state, created_at, id);
