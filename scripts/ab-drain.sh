#!/usr/bin/env bash
# Two tokenwatch binaries, alternated, draining the same backlog: the A/B that a day's machine
# speed cannot blur (it moved 1.6-1.9x between sessions of one day; BENCHMARKS.md).
#
#   scripts/ab-drain.sh OLD_TOKENWATCH NEW_TOKENWATCH [--runs N] [--partitions P]
#                       [--internal K] [--role local|both] [--events N] [--rules DIR]
#                       [--perf DIR]
#
# Each run starts a fresh tansu broker and redis-server (tansu's in-memory storage slows down
# as it fills), produces the backlog (`tokenwatch gen --format canonical --seed 3`) on P
# partitions keyed at random, runs `tokenwatch run --role ROLE` until `e2e drain` has seen N
# events, and prints events/s and the CPU seconds tokenwatch and the broker used. OLD and NEW
# alternate, N runs each. With --perf DIR, `perf record --call-graph dwarf` attaches to each
# run's tokenwatch 5 s after its start for 3 s and writes DIR/old-1.data, DIR/new-1.data, ...
# (`perf report -i DIR/new-1.data --children --sort sym`). Needs a release build of the bench
# helpers (`CARGO_TARGET_DIR=target-rel cargo build --release --benches`) and
# scripts/test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { sed -n '2,17p' "$0"; exit 2; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
shift 2
RUNS=2 PARTS=6 INTERNAL=6 ROLE=both EVENTS=1000000 RULES=rules PERF=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --partitions) PARTS=$2; shift ;;
    --internal) INTERNAL=$2; shift ;;
    --role) ROLE=$2; shift ;;
    --events) EVENTS=$2; shift ;;
    --rules) RULES=$2; shift ;;
    --perf) PERF=$(realpath "$2"); mkdir -p "$PERF"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# TANSU, E2E and GEO (scripts/ab-setup.sh)
source scripts/ab-setup.sh
RUN_EVENTS=$EVENTS
# WORK, PIDS and their cleanup; fresh_backlog, drain_run, cpu
source scripts/bench-lib.sh

"$NEW" gen --format canonical --events "$EVENTS" --seed 3 -o "$WORK/backlog.log" 2>/dev/null

# $1: label, $2: binary, $3: the label as a file name. Prints one line.
one() {
  local rate before
  fresh_backlog backlog "$PARTS"
  before=$(cpu "$BROKER_PID")
  TW=$2
  if [ -n "$PERF" ]; then
    (sleep 5; pid=$(pgrep -f "^$TW run" | head -1)
     [ -z "$pid" ] || perf record -F 299 --call-graph dwarf,16384 -p "$pid" -o "$PERF/$3.data" -- sleep 3 >/dev/null 2>&1) &
  fi
  rate=$(drain_run backlog ab "$RULES" TOKENWATCH_SHUFFLE__PARTITIONS="$INTERNAL" -- --role "$ROLE")
  echo "$1: $rate events/s; CPU s: tokenwatch $(cat "$WORK/drain.cpu") (start-up included), broker $(echo "$(cpu "$BROKER_PID") - $before" | bc) (while draining)"
}

echo "--role $ROLE, $PARTS gateway partitions, $INTERNAL internal, $EVENTS events, rules $RULES"
for i in $(seq "$RUNS"); do
  one "old ($i)" "$OLD" "old-$i"
  one "new ($i)" "$NEW" "new-$i"
done
