# Sourced by the A/B scripts (ab-drain.sh, ab-latency.sh): the broker and redis-server that
# scripts/test-deps.sh installs (TANSU), the e2e helper of a release build of the benches in
# CARGO_TARGET_DIR (E2E), and the test GeoIP database (GEO).
eval "$(scripts/test-deps.sh)"
TANSU=$TOKENWATCH_TEST_TANSU
# every TOKENWATCH_* variable is a setting of the binary: the tests' own must not reach it
unset "${!TOKENWATCH_TEST_@}"
E2E=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/e2e-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -x "$E2E" ] || { echo "no e2e bench helper: run CARGO_TARGET_DIR=target-rel cargo build --release --benches" >&2; exit 2; }
GEO=assets/GeoLite2-City-Test.mmdb
