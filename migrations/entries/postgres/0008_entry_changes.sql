-- The entries changes feed (docs/design.md, "Changes feeds"). Each write adds
-- its change in the same statement (a data-modifying CTE), with the id of its
-- transaction: a reader serves only changes below the oldest transaction
-- still in flight (pg_snapshot_xmin), ordered by (xid, seq), so a change that
-- commits after a later-numbered one is never skipped.
-- No primary key: seq is unique by construction, and an index no reader
-- uses would cost every write.
CREATE TABLE entry_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- 1 upserted, 2 deleted, 3 user purged.
    change_type SMALLINT NOT NULL CHECK (change_type IN (1, 2, 3)),
    -- NULL for a user's purge.
    entry_id    UUID,
    user_id     UUID NOT NULL,
    -- The entry after an upsert; NULL otherwise.
    value       DOUBLE PRECISION,
    unit        SMALLINT,
    recorded_on DATE,
    note        TEXT,
    create_time TIMESTAMPTZ,
    update_time TIMESTAMPTZ,
    change_time TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A page of the whole feed, and the retention's oldest rows.
CREATE INDEX entry_changes_in_order ON entry_changes (xid, seq);
-- A page of one user's changes, and the purge of them.
CREATE INDEX entry_changes_by_user ON entry_changes (user_id, xid, seq);

-- Whether the purge of a user has added its USER_PURGED change (so that a
-- repeated purge adds none), without reading the user's removed changes.
ALTER TABLE purged_users ADD COLUMN change_recorded BOOLEAN NOT NULL DEFAULT false;

-- A purge batch also removes up to twice batch_limit of the user's earlier
-- changes (an entry has one or two, as a rule); the purge is complete only
-- when none is left, and the batch that completes it adds the user's one
-- USER_PURGED change. In that transaction
-- it sorts after every change of the user a reader can ever be served: a
-- write to one of the user's entries either committed before this batch's
-- statements (its change is removed here) or waited for it (and found no
-- entry). Otherwise as in 0005.
CREATE OR REPLACE FUNCTION purge_entries_batch(
    target uuid,
    batch_limit bigint,
    OUT deleted bigint,
    OUT total bigint,
    OUT complete boolean
) LANGUAGE plpgsql SET enable_bitmapscan = on AS $$
DECLARE
    deleted_before bigint;
    swept bigint;
    few_changes boolean;
BEGIN
    SELECT deleted_count INTO deleted_before FROM purged_users WHERE user_id = target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF deleted_before = 0 THEN
        SELECT count(*) <= batch_limit INTO complete
        FROM (SELECT 1 FROM entries WHERE user_id = target LIMIT batch_limit + 1) AS counted;
    ELSE
        complete := false;
    END IF;
    IF complete THEN
        DELETE FROM entries WHERE user_id = target;
        GET DIAGNOSTICS deleted = ROW_COUNT;
    ELSE
        DELETE FROM entries
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM entries WHERE user_id = target LIMIT batch_limit));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        IF deleted < batch_limit THEN
            DELETE FROM entries WHERE user_id = target;
            GET DIAGNOSTICS swept = ROW_COUNT;
            deleted := deleted + swept;
            complete := true;
        END IF;
    END IF;
    -- As for the entries: no more changes left than a batch removes, all of
    -- them at once by user_id, as cheap as a bare DELETE; more, a batch of
    -- them by address.
    SELECT count(*) <= 2 * batch_limit INTO few_changes
    FROM (SELECT 1 FROM entry_changes WHERE user_id = target LIMIT 2 * batch_limit + 1) AS counted;
    IF few_changes THEN
        DELETE FROM entry_changes WHERE user_id = target AND change_type <> 3;
    ELSE
        DELETE FROM entry_changes
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM entry_changes
            WHERE user_id = target AND change_type <> 3 LIMIT 2 * batch_limit));
        complete := false;
    END IF;
    IF complete THEN
        WITH first AS (
            UPDATE purged_users SET change_recorded = true
            WHERE user_id = target AND NOT change_recorded RETURNING user_id)
        INSERT INTO entry_changes (change_type, user_id) SELECT 3, user_id FROM first;
    END IF;
    UPDATE purged_users SET deleted_count = deleted_count + deleted
    WHERE user_id = target
    RETURNING deleted_count INTO total;
END
$$;
