# Sourced by the A/B scripts (ab-drain.sh, ab-latency.sh): the broker and redis-server that
# scripts/test-deps.sh installs (TANSU), the e2e helper of a release build of the benches in
# CARGO_TARGET_DIR (E2E; release_bench finds the others), and the test GeoIP database (GEO).
eval "$(scripts/test-deps.sh)"
TANSU=$TOKENWATCH_TEST_TANSU
# every TOKENWATCH_* variable is a setting of the binary: the tests' own must not reach it
unset "${!TOKENWATCH_TEST_@}"
# $1: a bench target's name. Prints the newest release build of it, or fails the script.
release_bench() {
  local exe
  exe=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
  [ -x "$exe" ] || { echo "no $1 bench: run CARGO_TARGET_DIR=target-rel cargo build --release --benches" >&2; exit 2; }
  echo "$exe"
}
E2E=$(release_bench e2e)
GEO=assets/GeoLite2-City-Test.mmdb
