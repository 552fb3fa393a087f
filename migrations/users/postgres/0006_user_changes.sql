-- The users changes feed (docs/design.md, "Changes feeds"). Every change is
-- written by a trigger in the transaction that makes it, with the id of that
-- transaction: a reader serves only changes below the oldest transaction
-- still in flight (pg_snapshot_xmin), ordered by (xid, seq), so a change that
-- commits late is never skipped.
CREATE TABLE user_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- 1 created, 2 updated, 3 deleted.
    change_type SMALLINT NOT NULL CHECK (change_type IN (1, 2, 3)),
    user_id     UUID NOT NULL,
    -- The user after the change (created, updated); NULL for a deletion.
    email       TEXT,
    name        TEXT,
    weight_unit SMALLINT,
    create_time TIMESTAMPTZ,
    update_time TIMESTAMPTZ,
    change_time TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX user_changes_in_order ON user_changes (xid, seq);
-- The erasure of a deleted user's earlier changes.
CREATE INDEX user_changes_by_user ON user_changes (user_id);

CREATE FUNCTION record_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- An erasure: the feed keeps only that the id was deleted.
        DELETE FROM user_changes WHERE user_id = OLD.id;
        INSERT INTO user_changes (change_type, user_id) VALUES (3, OLD.id);
    ELSE
        INSERT INTO user_changes (change_type, user_id, email, name, weight_unit, create_time, update_time)
        VALUES (CASE TG_OP WHEN 'INSERT' THEN 1 ELSE 2 END,
                NEW.id, NEW.email, NEW.name, NEW.weight_unit, NEW.create_time, NEW.update_time);
    END IF;
    RETURN NULL;
END
$$;

-- A password change or a hash upgrade changes nothing a copy holds.
CREATE TRIGGER user_changes_feed
    AFTER INSERT OR DELETE OR UPDATE OF email, name, weight_unit ON users
    FOR EACH ROW EXECUTE FUNCTION record_user_change();
