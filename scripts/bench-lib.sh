# Sourced by scripts/bench.sh and the A/B scripts (ab-drain.sh, ab-latency.sh): a work
# directory removed on exit with every process started, free ports, a fresh tansu and
# redis-server per measurement, and `tokenwatch run` draining a backlog. The functions read,
# when called: TANSU (the broker), E2E (benches/e2e.rs), TW (the tokenwatch binary), GEO,
# RUN_EVENTS.

WORK=$(mktemp -d /tmp/tokenwatch-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (user + system) process $1 has used.
cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

# A fresh broker and Redis for every measurement: tansu's in-memory storage slows down as it
# holds more (measured 2026-12-02, `--role both` draining 1,000,000 lines on 6 partitions:
# 216,744 and 228,826 events/s from a fresh broker, 169,902 and 120,748 from one that also
# held the 2,000,000 messages of bench.sh's rows before), so no measurement inherits
# another's data. Stops the previous pair; sets B, R and BROKER_PID.
SERVER_PIDS=()
fresh() {
  local p
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  SERVER_PIDS=()
  RPORT=$(port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
  PIDS+=($!) SERVER_PIDS+=($!)
  KPORT=$(port)
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  BROKER_PID=$!
  PIDS+=($!) SERVER_PIDS+=($!)
  for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/$RPORT) 2>/dev/null && break
    sleep 0.1
  done
  B=127.0.0.1:$KPORT
  R=redis://127.0.0.1:$RPORT
}

# A fresh broker holding $WORK/backlog.log as topic $1 on $2 partitions (keyed at random).
fresh_backlog() {
  fresh
  "$E2E" produce "$B" "$1" "$WORK/backlog.log" "$2" >/dev/null 2>&1
}

# Runs `tokenwatch run` on a backlog until it has drained RUN_EVENTS events; prints events/s,
# and leaves in $WORK/drain.cpu the CPU seconds tokenwatch used (its start-up included).
# $1: topic, $2: group, $3: rules dir, then NAME=VALUE settings, then -- and extra flags.
drain_run() {
  local topic=$1 group=$2 rules_dir=$3 mport twpid rate
  shift 3
  local envs=() flags=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  flags=("$@")
  mport=$(port)
  env "${envs[@]}" TOKENWATCH_BATCH__MAX_MESSAGES=5000 TOKENWATCH_BATCH__MAX_WAIT=5ms \
    "$TW" run "${flags[@]}" --brokers "$B" --topic "$topic" --group "$group" --redis "$R" \
    --metrics-addr "127.0.0.1:$mport" --alerts none --rules "$rules_dir" --geoip "$GEO" >/dev/null 2>&1 &
  twpid=$!
  PIDS+=($twpid)
  rate=$("$E2E" drain "$mport" "$RUN_EVENTS" 2>/dev/null)
  cpu $twpid >"$WORK/drain.cpu"
  kill $twpid 2>/dev/null || true
  echo "$rate"
}
