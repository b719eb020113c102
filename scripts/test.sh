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
# The hashes that checkpoints keep must not depend on how tokenwatch is built: their pinned
# values again, from a build for this machine's CPU (under which ahash's values changed).
RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=target/native cargo test -p tokenwatch-core --lib hash::
cargo run --quiet -- test --rules rules
