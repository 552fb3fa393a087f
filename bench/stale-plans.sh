#!/usr/bin/env bash
# The plans of ListEntries', SummarizeEntries' and (now) ListEntryChanges'
# statements where statistics
# mislead: 100 users with 200 entries each, analysed, then one user with
# 100,000 entries inserted after the last ANALYZE (a new user importing years
# of history: the statistics know every other user and estimate one row).
# Twice: with the schema and session settings before "a page costs a page"
# (migrations up to 0005, bitmap scans on), and as the services run now.
# Usage: bench/stale-plans.sh [postgres-url] > docs/profiles/stale-plans.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
URL=${1:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
DB=heft_stale_plans
BENCH_URL="${URL%/*}/$DB"
HEAVY=00000000-0000-7000-8000-000000000001
COLS="id, user_id, value, unit, recorded_on, note, create_time, update_time"
q() { psql "$BENCH_URL" -X -q "$@"; }

plans() { # label, migrations (glob), session settings
  psql "$URL" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
  for migration in $2; do q -f "$migration"; done
  q <<SQL
INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
SELECT gen_random_uuid(), ('00000000-0000-7000-8000-' || lpad((i / 200 + 2)::text, 12, '0'))::uuid,
       60 + (i % 400) / 10.0, 1, DATE '1990-01-01' + (i % 12000), '', now(), now()
FROM generate_series(0, 19999) AS i;
VACUUM ANALYZE entries;
INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
SELECT gen_random_uuid(), '$HEAVY', 60 + (i % 400) / 10.0, 1, DATE '1990-01-01' + i / 3, '',
       now() + i * interval '1 microsecond', now()
FROM generate_series(1, 100000) AS i;
SQL
  local cursor
  cursor=$(q -At -c "SELECT format('(%L::date, %L::timestamptz, %L::uuid)', recorded_on, create_time, id)
                     FROM entries WHERE user_id = '$HEAVY' ORDER BY recorded_on, create_time, id OFFSET 50000 LIMIT 1")
  echo "## $1"
  echo
  explain() {
    echo "### $1"
    echo
    echo '```'
    q -c "$3" -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $2" | grep -vE '^\s*$|^SET'
    echo '```'
    echo
  }
  local where="FROM entries WHERE user_id = '$HEAVY'"
  local asc="ORDER BY recorded_on ASC, create_time ASC, id ASC"
  local desc="ORDER BY recorded_on DESC, create_time DESC, id DESC"
  explain "ListEntries, first page" "SELECT $COLS $where $asc LIMIT 101" "$3"
  explain "ListEntries, first page, newest first" "SELECT $COLS $where $desc LIMIT 101" "$3"
  explain "ListEntries, a deep page by token" \
    "SELECT $COLS $where AND (recorded_on, create_time, id) > $cursor $asc LIMIT 101" "$3"
  explain "ListEntries, a deep page by token, newest first" \
    "SELECT $COLS $where AND (recorded_on, create_time, id) < $cursor $desc LIMIT 101" "$3"
  explain "ListEntries, a date range" \
    "SELECT $COLS $where AND recorded_on >= '2000-01-01' AND recorded_on <= '2010-12-31' $asc LIMIT 101" "$3"
  explain "SummarizeEntries, one page of 5,000 after a cursor" \
    "SELECT $COLS $where AND (recorded_on, create_time, id) > $cursor $asc LIMIT 5000" "$3"
  if [ -n "${4:-}" ]; then feed_plans "$3"; fi
}

# ListEntryChanges (migration 0008 on): every entry above has its UPSERTED
# change, the heavy user's written after the last ANALYZE as well.
feed_plans() { # session settings
  q -c "INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
        SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM entries
        WHERE user_id <> '$HEAVY' ORDER BY create_time" \
    -c "VACUUM ANALYZE entry_changes" \
    -c "INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
        SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM entries
        WHERE user_id = '$HEAVY' ORDER BY create_time" >/dev/null
  local middle horizon
  middle=$(q -At -c "SELECT format('(%L::text::xid8, %s)', xid, seq) FROM entry_changes
                     ORDER BY xid, seq OFFSET 60000 LIMIT 1")
  horizon="pg_snapshot_xmin(pg_current_snapshot())"
  local changes="SELECT xid::text::int8 AS xid, seq, change_type, entry_id, user_id, value, unit,
                 recorded_on, note, create_time, update_time, change_time FROM entry_changes"
  local order="ORDER BY entry_changes.xid, seq LIMIT 501"
  explain "ListEntryChanges, everyone's, from the start" \
    "$changes WHERE (xid, seq) > ('0'::xid8, 0) AND xid < $horizon $order" "$1"
  explain "ListEntryChanges, everyone's, a deep page by token" \
    "$changes WHERE (xid, seq) > $middle AND xid < $horizon $order" "$1"
  explain "ListEntryChanges, the heavy user's, from the start" \
    "$changes WHERE user_id = '$HEAVY' AND (xid, seq) > ('0'::xid8, 0) AND xid < $horizon $order" "$1"
  explain "ListEntryChanges, the heavy user's, a deep page by token" \
    "$changes WHERE user_id = '$HEAVY' AND (xid, seq) > $middle AND xid < $horizon $order" "$1"
}

echo "# Plans on stale statistics"
echo
echo "Written by \`bench/stale-plans.sh\`: 100 users with 200 entries each, analysed; then one"
echo "user with 100,000 entries inserted after the last ANALYZE. Each statement is the one the"
echo "entries service runs for the heavy user (the feed's: everyone's, and the heavy user's,"
echo "whose changes were written after the last ANALYZE too)."
echo
plans "Before: migrations 0001-0005, bitmap scans on" \
  "$(ls migrations/entries/postgres/000[1-5]_*.sql | tr '\n' ' ')" "SET enable_bitmapscan = on"
plans "Now: every migration, the services' session settings" \
  "$(ls migrations/entries/postgres/*.sql | tr '\n' ' ')" "SET enable_bitmapscan = off" feed
psql "$URL" -qc "DROP DATABASE $DB WITH (FORCE)"
