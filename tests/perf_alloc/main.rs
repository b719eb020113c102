//! No heap allocation per event in the steady state of the hot path (counted, not timed; the
//! figures themselves come from `cargo bench --bench alloc`). See `alloc_count.rs`. A binary of its own:
//! its counting global allocator counts the whole process.

mod alloc_count;

use tokenwatch_core::input::Format;
use tokenwatch_gen::GenFormat;

#[test]
fn steady_state_allocates_almost_nothing_per_event() {
    for (gf, format) in [
        (GenFormat::Canonical, Format::Canonical),
        (GenFormat::Traefik, Format::Auto),
    ] {
        let m = alloc_count::measure(gf, format, 200_000);
        println!(
            "{format:?}: {:.4} allocations/event one line at a time, {:.4} in batches ({} events, {} decisions)",
            m.serial, m.batches, m.events, m.decisions
        );
        assert!(m.serial < 0.05, "{format:?}: {} allocations per event", m.serial);
        assert!(
            m.batches < 0.05,
            "{format:?}: {} allocations per event in batches",
            m.batches
        );
    }
}
