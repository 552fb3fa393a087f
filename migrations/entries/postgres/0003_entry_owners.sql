-- One row per user who owns entries: CreateEntry takes a share lock on it
-- (FOR SHARE … WHERE NOT purged) in the same statement as its INSERT, and
-- the purge's tombstone sets `purged` under the exclusive row lock. One
-- round trip per create instead of a transaction around an advisory lock.
CREATE TABLE entry_owners (
    user_id UUID PRIMARY KEY,
    purged  BOOLEAN NOT NULL DEFAULT false
);

INSERT INTO entry_owners (user_id)
SELECT DISTINCT user_id FROM entries
ON CONFLICT (user_id) DO NOTHING;

INSERT INTO entry_owners (user_id, purged)
SELECT user_id, true FROM purged_users
ON CONFLICT (user_id) DO UPDATE SET purged = true;
