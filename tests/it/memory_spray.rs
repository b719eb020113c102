//! Memory stays within the byte budgets when an attacker sprays the largest tokens tokenwatch
//! decodes (issue 11, finding 1): the real `tokenwatch replay`, with `[engine]
//! token_cache_bytes` and `state_bytes` at 8 MiB each, reads 12,000 distinct 16 KiB tokens
//! whose id claims are all distinct and at their 1 KiB cap (`tokenwatch_gen::hostile`, the
//! lines of the `memory spray` bench), and its peak RSS stays under a bound made of the
//! budgets and the peak of a short run of the same binary (so nothing here is particular to
//! one machine). Holding them all, as a cache capped by count did, costs ≈ 8.4 KiB per token:
//! ≈ 100 MiB here. The same spray with the cache budget out of the way is run too, and must
//! break the bound, so that the test keeps showing what it claims.

use crate::common;

use std::path::Path;

use tokenwatch_gen::hostile::{peak_rss, MaxTokens};

const MIB: u64 = 1 << 20;

/// `[engine] token_cache_bytes` and `state_bytes` of the bounded run, each.
const BUDGET: u64 = 8 * MIB;

/// Distinct tokens sprayed: enough that holding them all (≈ 100 MiB) dwarfs the budgets.
const SPRAY: u64 = 12_000;

/// Lines of the run whose peak is the base: the binary with its threads started and every code
/// path of the spray touched, its cache and state still small (≈ 1.7 MiB).
const BASE_LINES: u64 = 200;

/// What the process may pay beyond the heap the budgets count: allocator slack (the counted
/// heap is within 2–6 % of RSS, BENCHMARKS.md) and the decoding threads' lines in flight.
const HEADROOM: u64 = 12 * MIB;

/// Peak RSS of `tokenwatch replay` (two decoding threads, the default rules) over the first
/// `n` lines of the spray, with `token_cache_bytes` at `cache` and `state_bytes` at
/// [`BUDGET`]. Checks that every token was decoded: an undecoded token costs nothing, and a
/// spray of them would prove nothing.
fn replay(dir: &Path, n: u64, cache: u64) -> u64 {
    let config = dir.join(format!("engine-{cache}.toml"));
    std::fs::write(
        &config,
        format!("[engine]\ntoken_cache_bytes = {cache}\nstate_bytes = {BUDGET}\n"),
    )
    .unwrap();
    let mut cmd = common::tokenwatch_command();
    cmd.args(["replay", "-q", "--format", "canonical", "--threads", "2", "--rules"])
        .arg(common::root().join("rules"))
        .arg("--config")
        .arg(&config)
        .arg("-");
    let tokens = MaxTokens::new();
    let peak = peak_rss(&cmd, (0..n).map(|i| tokens.line(i))).expect("tokenwatch replay reads the spray");
    assert!(
        peak.stderr.contains(&format!("{n} lines read, {n} events decoded")) && !peak.stderr.contains("undecodable"),
        "every token of the spray is decoded: {}",
        peak.stderr
    );
    eprintln!(
        "memory_spray: {n} tokens, token_cache_bytes {cache}: peak RSS {} MiB",
        peak.bytes / MIB
    );
    peak.bytes
}

#[test]
fn a_spray_of_maximum_size_tokens_stays_within_the_byte_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let base = replay(dir.path(), BASE_LINES, BUDGET);
    let bound = base + 2 * BUDGET + HEADROOM;
    let bounded = replay(dir.path(), SPRAY, BUDGET);
    assert!(
        bounded <= bound,
        "{SPRAY} distinct maximum-size tokens took {} MiB, over the {} MiB of a {BASE_LINES}-line run \
         plus 8 MiB of token cache, 8 MiB of rule state and {} MiB of headroom",
        bounded / MIB,
        base / MIB,
        HEADROOM / MIB
    );
    // The budget out of the way (the cache holds every token, as a count cap let it): the
    // same spray must break the bound, or the bound would hold whatever the budget did.
    let unbounded = replay(dir.path(), SPRAY, 1 << 40);
    assert!(
        unbounded > bound,
        "without the cache budget the spray took {} MiB, within the {} MiB bound: the test no longer \
         tells a bounded cache from an unbounded one",
        unbounded / MIB,
        bound / MIB
    );
}
