-- The idempotency index led with user_id, so with stale statistics (a user
-- who just imported years of history reads as a user with one entry)
-- PostgreSQL answered a page by fetching all of that user's rows through it
-- and sorting them. Leading with request_id it serves what it is for, the
-- idempotency lookup and ON CONFLICT (user_id, request_id), and a user's rows
-- are read only in the order of entries_by_user_and_day.
CREATE UNIQUE INDEX entries_request_id_first ON entries (request_id, user_id);
DROP INDEX entries_request_id;
