#!/usr/bin/env bash
# Two tokenwatch binaries, alternated, each measured for production → revocation delay at a
# steady 50,000 lines/s with both stages (`--role both`) on 1 gateway and 1 internal partition,
# as `scripts/bench.sh`'s latency rows measure it (`e2e latency`, 10 s of probes), each run
# on a fresh tansu broker and redis-server:
#
#   scripts/ab-latency.sh OLD_TOKENWATCH NEW_TOKENWATCH [--runs N]
#
# Prints p50 / p99 / max per run. Needs a release build of the bench helpers
# (`CARGO_TARGET_DIR=target-rel cargo build --release --benches`) and scripts/test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
shift 2
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# TANSU, E2E and GEO (scripts/ab-setup.sh)
source scripts/ab-setup.sh
# WORK, PIDS and their cleanup; port, fresh
source scripts/bench-lib.sh

# $1: label, $2: binary. Prints one line.
one() {
  local topic=live$RANDOM missing p50 p99 pmax probes
  fresh
  "$E2E" produce "$B" "$topic" /dev/null 1 >/dev/null 2>&1 || true
  env TOKENWATCH_SHUFFLE__ROLE=both TOKENWATCH_SHUFFLE__PARTITIONS=1 TOKENWATCH_BATCH__MAX_WAIT=5ms \
    "$2" run --brokers "$B" --topic "$topic" --group "ab-$topic" --redis "$R" --metrics-addr "127.0.0.1:$(port)" \
    --alerts none --rules rules --geoip $GEO >/dev/null 2>&1 &
  local twpid=$!
  PIDS+=($twpid)
  # Warm-up until the consumer group has formed (tansu takes a while) and probes come back.
  for _ in $(seq 15); do
    read -r _ _ _ _ missing < <("$E2E" latency "$B" "$topic" "$R" 50000 2 1 2>/dev/null || echo x x x x 1)
    [ "$missing" = 0 ] && break
  done
  read -r p50 p99 pmax probes missing < <("$E2E" latency "$B" "$topic" "$R" 50000 10 1 2>/dev/null)
  kill $twpid 2>/dev/null || true
  echo "$1: p50 $p50 ms, p99 $p99 ms, max $pmax ms ($probes probes, $missing missing)"
}

echo "--role both, 1 gateway partition, 1 internal, 50,000 lines/s"
for i in $(seq "$RUNS"); do
  one "old ($i)" "$OLD"
  one "new ($i)" "$NEW"
done
