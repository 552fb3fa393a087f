-- The users changes feed (docs/design.md, "Changes feeds"), written by
-- triggers in the transaction that makes each change. SQLite has one writer
-- at a time, so changes commit in the order of their seq; AUTOINCREMENT never
-- reuses a seq, even the highest one after it was removed.
CREATE TABLE user_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 1 created, 2 updated, 3 deleted.
    change_type INTEGER NOT NULL CHECK (change_type IN (1, 2, 3)),
    user_id     BLOB NOT NULL,
    email       TEXT,
    name        TEXT,
    weight_unit INTEGER,
    create_time INTEGER,
    update_time INTEGER,
    -- Microseconds since the Unix epoch.
    change_time INTEGER NOT NULL
);

CREATE INDEX user_changes_by_user ON user_changes (user_id);
CREATE INDEX user_changes_by_time ON user_changes (change_time);

CREATE TRIGGER user_created AFTER INSERT ON users BEGIN
    INSERT INTO user_changes (change_type, user_id, email, name, weight_unit, create_time, update_time, change_time)
    VALUES (1, NEW.id, NEW.email, NEW.name, NEW.weight_unit, NEW.create_time, NEW.update_time, NEW.update_time);
END;

-- A password change or a hash upgrade changes nothing a copy holds.
CREATE TRIGGER user_updated AFTER UPDATE OF email, name, weight_unit ON users BEGIN
    INSERT INTO user_changes (change_type, user_id, email, name, weight_unit, create_time, update_time, change_time)
    VALUES (2, NEW.id, NEW.email, NEW.name, NEW.weight_unit, NEW.create_time, NEW.update_time, NEW.update_time);
END;

-- An erasure: the feed keeps only that the id was deleted.
CREATE TRIGGER user_deleted AFTER DELETE ON users BEGIN
    DELETE FROM user_changes WHERE user_id = OLD.id;
    INSERT INTO user_changes (change_type, user_id, change_time)
    VALUES (3, OLD.id, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;
