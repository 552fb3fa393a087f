-- A purge runs in committed batches after its tombstone; the running total
-- lives with the tombstone, so a resumed or repeated purge reports the truth.
ALTER TABLE purged_users ADD COLUMN deleted_count INTEGER NOT NULL DEFAULT 0;
