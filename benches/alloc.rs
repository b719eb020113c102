//! Heap allocations per event in the steady state, counted by a global allocator: the
//! "no allocation per event" figure of README. Usage: `alloc [EVENTS]` (default 400,000; the
//! second half is counted); prints one line per format:
//! `FORMAT allocs_per_event_serial allocs_per_event_batches events decisions`.

#[path = "../tests/perf_alloc/alloc_count.rs"]
mod alloc_count;

use tokenwatch_core::input::Format;
use tokenwatch_gen::GenFormat;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(400_000);
    for (name, gf, format) in [
        ("canonical", GenFormat::Canonical, Format::Canonical),
        ("traefik", GenFormat::Traefik, Format::Auto),
    ] {
        let m = alloc_count::measure(gf, format, n);
        eprintln!(
            "alloc {name}: {:.4} allocations/event one line at a time, {:.4} in batches of 256 through 2 decoding threads ({} events counted, {} decisions)",
            m.serial, m.batches, m.events, m.decisions
        );
        println!("{name} {:.4} {:.4} {} {}", m.serial, m.batches, m.events, m.decisions);
    }
}
