#!/usr/bin/env bash
# Flamegraphs of heft-entries under the benchmark's GetEntry, ListEntries and
# CreateEntry phases (perf at 999 Hz for 8 s of each, DWARF call graphs).
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno), and
# the benchmark's build: cargo build --profile dist --workspace
# Usage: bench/profile.sh [out-dir]   (default docs/profiles; the folded
# stacks stay in a temporary directory, printed at the end)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-docs/profiles}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG=$WORK/bench.log
target/dist/heft-bench --phases get,list,create --entries 300000 --duration-secs 12 --report - \
  >/dev/null 2>"$LOG" &
BENCH=$!

wait_for() {
  until grep -q "$1" "$LOG"; do
    kill -0 "$BENCH" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 1
  done
}

record() { # phase, file stem
  wait_for "phase: $1"
  sleep 3 # past the warm-up
  local pid
  pid=$(pgrep -n -f target/dist/heft-entries)
  perf record -q -F 999 --call-graph dwarf,16384 -p "$pid" -o "$WORK/$2.data" -- sleep 8
}

# The recordings first: turning one into stacks outlasts the next phase.
record GetEntry get-entry
record ListEntries list-entries
record CreateEntry create-entry
wait "$BENCH"
for stem in get-entry list-entries create-entry; do
  perf script -i "$WORK/$stem.data" 2>/dev/null | inferno-collapse-perf >"$WORK/$stem.folded"
  inferno-flamegraph --minwidth 1.5 --title "heft-entries, ${stem} under heft-bench" \
    <"$WORK/$stem.folded" >"$OUT/$stem.svg"
  rm "$WORK/$stem.data"
done
echo "wrote $OUT/{get-entry,list-entries,create-entry}.svg; folded stacks in $WORK"
