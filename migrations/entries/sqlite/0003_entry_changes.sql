-- The entries changes feed (docs/design.md, "Changes feeds"), written by
-- triggers in the transaction that makes each change. SQLite has one writer
-- at a time, so changes commit in the order of their seq; AUTOINCREMENT never
-- reuses a seq, even the highest one after it was removed.
CREATE TABLE entry_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 1 upserted, 2 deleted, 3 user purged.
    change_type INTEGER NOT NULL CHECK (change_type IN (1, 2, 3)),
    entry_id    BLOB,
    user_id     BLOB NOT NULL,
    value       REAL,
    unit        INTEGER,
    recorded_on TEXT,
    note        TEXT,
    create_time INTEGER,
    update_time INTEGER,
    -- Microseconds since the Unix epoch.
    change_time INTEGER NOT NULL
);

CREATE INDEX entry_changes_by_user ON entry_changes (user_id, seq);

CREATE TRIGGER entry_inserted AFTER INSERT ON entries BEGIN
    INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time, change_time)
    VALUES (1, NEW.id, NEW.user_id, NEW.value, NEW.unit, NEW.recorded_on, NEW.note, NEW.create_time, NEW.update_time, NEW.update_time);
END;

CREATE TRIGGER entry_updated AFTER UPDATE ON entries BEGIN
    INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time, change_time)
    VALUES (1, NEW.id, NEW.user_id, NEW.value, NEW.unit, NEW.recorded_on, NEW.note, NEW.create_time, NEW.update_time, NEW.update_time);
END;

-- A purged user's entries go without a change each: the purge is one
-- USER_PURGED change, added by the batch that completes it.
CREATE TRIGGER entry_deleted AFTER DELETE ON entries
WHEN NOT EXISTS (SELECT 1 FROM purged_users WHERE user_id = OLD.user_id) BEGIN
    INSERT INTO entry_changes (change_type, entry_id, user_id, change_time)
    VALUES (2, OLD.id, OLD.user_id, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;

-- Whether the purge of a user has added its USER_PURGED change (so that a
-- repeated purge adds none).
ALTER TABLE purged_users ADD COLUMN change_recorded INTEGER NOT NULL DEFAULT 0;
