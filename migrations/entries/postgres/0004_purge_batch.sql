-- One batch of a purge, in one call: a function so that the batch is one
-- round trip and one transaction, and counts what it deleted without
-- materialising the deleted rows (a data-modifying CTE with RETURNING did,
-- and cost as much again as the DELETE itself).
--
-- It counts at most batch_limit + 1 of the user's rows. No more than
-- batch_limit left: a plain DELETE by user_id, as cheap as a bare DELETE, and
-- the purge is complete (READ COMMITTED re-checks a row that a concurrent
-- update moved, and deletes it all the same). More: batch_limit rows, found
-- through the user's index in whatever order is cheapest, deleted by
-- physical address (a TID scan), so the plan cannot become a scan of the
-- whole table. Without a tombstone nothing is deleted and every output is
-- NULL.
CREATE FUNCTION purge_entries_batch(
    target uuid,
    batch_limit bigint,
    OUT deleted bigint,
    OUT total bigint,
    OUT complete boolean
) LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM purged_users WHERE user_id = target) THEN
        RETURN;
    END IF;
    SELECT count(*) <= batch_limit INTO complete
    FROM (SELECT 1 FROM entries WHERE user_id = target LIMIT batch_limit + 1) AS counted;
    IF complete THEN
        DELETE FROM entries WHERE user_id = target;
    ELSE
        DELETE FROM entries
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM entries WHERE user_id = target LIMIT batch_limit));
    END IF;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    UPDATE purged_users SET deleted_count = deleted_count + deleted
    WHERE user_id = target
    RETURNING deleted_count INTO total;
END
$$;
