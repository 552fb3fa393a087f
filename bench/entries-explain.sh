#!/usr/bin/env bash
# Query plans and purge timing of the entries store on PostgreSQL with
# 1,000,000 entries: one user with 100,000, and 900 users with 1,000 each.
# Usage: bench/entries-explain.sh [postgres-url]   (creates and drops heft_explain)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
URL=${1:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
DB=heft_explain
psql "$URL" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
BENCH_URL="${URL%/*}/$DB"
q() { psql "$BENCH_URL" -X -q "$@"; }

for migration in migrations/entries/postgres/*.sql; do q -f "$migration"; done
BIG=00000000-0000-7000-8000-000000000001
q <<SQL
INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
SELECT gen_random_uuid(),
       CASE WHEN i <= 100000 THEN '$BIG'::uuid
            ELSE ('00000000-0000-7000-8000-' || lpad(((i - 100001) / 1000 + 2)::text, 12, '0'))::uuid END,
       60 + (i % 400) / 10.0, 1 + i % 2, DATE '1990-01-01' + (i % 12000), '',
       now() + i * interval '1 microsecond', now()
FROM generate_series(1, 1000000) AS i;
VACUUM ANALYZE entries;
SQL

explain() { echo "--- $1"; q -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) $2" | grep -vE '^\s*$'; }
COLS="id, user_id, value, unit, recorded_on, note, create_time, update_time"
explain "ListEntries, first page of 100 (ascending)" \
  "SELECT $COLS FROM entries WHERE user_id = '$BIG' ORDER BY recorded_on, create_time, id LIMIT 101"
explain "ListEntries, a later page (descending, keyset cursor, date range)" \
  "SELECT $COLS FROM entries WHERE user_id = '$BIG' AND recorded_on >= '1995-01-01' AND recorded_on <= '2010-01-01'
   AND (recorded_on, create_time, id) < ('2005-06-01', now(), '00000000-0000-0000-0000-000000000000')
   ORDER BY recorded_on DESC, create_time DESC, id DESC LIMIT 101"
explain "SummarizeEntries (one year of the big user)" \
  "SELECT $COLS FROM entries WHERE user_id = '$BIG' AND recorded_on >= COALESCE('2000-01-01'::date, '-infinity'::date)
   AND recorded_on <= COALESCE('2000-12-31'::date, 'infinity'::date) ORDER BY recorded_on, create_time, id"
explain "GetEntry" "SELECT $COLS FROM entries WHERE id = (SELECT id FROM entries LIMIT 1)"
explain "PurgeUserEntries for a user with 1,000 entries" \
  "DELETE FROM entries WHERE user_id = '00000000-0000-7000-8000-000000000500'"

# Purge of the 100,000-entry user: one batch of the service's purge (the
# function `purge_entries_batch`, behind its tombstone) against a bare DELETE
# of the same rows, three times each, restoring the rows in between.
q -c "CREATE TABLE big_user AS SELECT * FROM entries WHERE user_id = '$BIG'"
timed() { # label, setup sql, timed sql
  local start end
  q -c "INSERT INTO entries SELECT * FROM big_user ON CONFLICT DO NOTHING" -c "DELETE FROM purged_users" \
    -c "VACUUM ANALYZE entries" -c "$2"
  start=$(date +%s%N); q -o /dev/null -c "$3"; end=$(date +%s%N)
  echo "$1: $(( (end - start) / 1000000 )) ms"
}
for round in 1 2 3; do
  timed "bare DELETE of 100,000 rows      (round $round)" "SELECT 1" "DELETE FROM entries WHERE user_id = '$BIG'"
  timed "purge_entries_batch, 100,000     (round $round)" \
    "INSERT INTO purged_users (user_id, purged_at) VALUES ('$BIG', now())" \
    "SELECT * FROM purge_entries_batch('$BIG', 100000)"
done
psql "$URL" -qc "DROP DATABASE $DB WITH (FORCE)"
