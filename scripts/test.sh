#!/usr/bin/env bash
# The test command of README: installs what the tests need, then runs every check CI runs.
# (The benchmarks are type-checked by clippy --all-targets; their release build, a second full
# build of every dependency with thin LTO, is left to scripts/bench.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(scripts/test-deps.sh)
eval "$deps"
export TOKENWATCH_TEST_REDIS_SERVER TOKENWATCH_TEST_PROMTOOL TOKENWATCH_TEST_TANSU
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
cargo run --quiet -- test --rules rules
