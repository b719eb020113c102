#!/usr/bin/env bash
# Two tokenwatch binaries, alternated, draining the same backlog: the A/B that a day's machine
# speed cannot blur (it moved 1.6-1.9x between sessions of one day; BENCHMARKS.md).
#
#   scripts/ab-drain.sh OLD_TOKENWATCH NEW_TOKENWATCH [--runs N] [--partitions P]
#                       [--internal K] [--role local|both] [--events N] [--rules DIR]
#                       [--perf DIR] [--plain]
#
# Each run starts a fresh tansu broker and redis-server (tansu's in-memory storage slows down
# as it fills), produces the backlog (`tokenwatch gen --format canonical --seed 3`) on P
# partitions keyed at random, runs `tokenwatch run --role ROLE` until `e2e drain` has seen N
# events, and prints events/s and the CPU seconds tokenwatch and the broker used. OLD and NEW
# alternate, N runs each. With --perf DIR, `perf record --call-graph dwarf` attaches to each
# run's tokenwatch 5 s after its start for 3 s and writes DIR/old-1.data, DIR/new-1.data, ...
# (`perf report -i DIR/new-1.data --children --sort sym`). With --plain, the plain
# parse-and-decode loop (benches/plain_loop.rs, `taskset -c 0`) runs on the same lines before
# each pair of drains and after the last, and the end prints each binary's median drain
# against the median loop: issue 12's ratio, measured in the same sitting (the machine's speed
# moves within minutes; pass the same binary twice for a ratio alone). Needs a release build
# of the bench helpers (`CARGO_TARGET_DIR=target-rel cargo build --release --benches`) and
# scripts/test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { sed -n '2,21p' "$0"; exit 2; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
shift 2
RUNS=2 PARTS=6 INTERNAL=6 ROLE=both EVENTS=1000000 RULES=rules PERF= PLAIN=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --partitions) PARTS=$2; shift ;;
    --internal) INTERNAL=$2; shift ;;
    --role) ROLE=$2; shift ;;
    --events) EVENTS=$2; shift ;;
    --rules) RULES=$2; shift ;;
    --perf) PERF=$(realpath "$2"); mkdir -p "$PERF"; shift ;;
    --plain) PLAIN=yes ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
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
  echo "$rate" >>"$WORK/rates-${3%-*}"
  echo "$1: $rate events/s; CPU s: tokenwatch $(cat "$WORK/drain.cpu") (start-up included), broker $(echo "$(cpu "$BROKER_PID") - $before" | bc) (while draining)"
}

[ -z "$PLAIN" ] || PLAIN=$(release_bench plain_loop)
# The plain loop on the backlog's lines, one core; prints and keeps its lines/s.
plain() {
  [ -n "$PLAIN" ] || return 0
  local rate
  rate=$(taskset -c 0 "$PLAIN" "$WORK/backlog.log" 2>/dev/null | tail -1)
  echo "$rate" >>"$WORK/rates-loop"
  echo "plain loop: $rate lines/s"
}

echo "--role $ROLE, $PARTS gateway partitions, $INTERNAL internal, $EVENTS events, rules $RULES"
for i in $(seq "$RUNS"); do
  plain
  one "old ($i)" "$OLD" "old-$i"
  one "new ($i)" "$NEW" "new-$i"
done
plain
if [ -n "$PLAIN" ]; then
  python3 - "$WORK" <<'PY'
import statistics, sys
read = lambda k: [float(x) for x in open(f"{sys.argv[1]}/rates-{k}").read().split()]
loop = statistics.median(read("loop"))
for k in ("old", "new"):
    d = statistics.median(read(k))
    print(f"{k}: median drain {d:,.0f} events/s, median plain loop {loop:,.0f} lines/s: {d / loop:.2f}x")
PY
fi
