//! Heap allocations per event in the steady state of the hot path, counted by a global
//! allocator (no timing). After a warm-up over the first half of a generated stream (token
//! cache, per-key state, batch buffers and GeoIP cache grown), the second half must allocate
//! almost nothing per event: what remains is per distinct token (decoding it once), per new
//! tracked key, and per decision — never per request.
//!
//! Run `cargo test --release --test perf_alloc -- --nocapture` to see the figures.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokenwatch::gen::{GenConfig, GenFormat, Generator};
use tokenwatch::input::Format;
use tokenwatch::pipeline::{DecodedBatch, ParallelDecode};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (r, ALLOCS.load(Ordering::SeqCst))
}

/// Ordinary traffic (no attacks: decisions allocate by design), 1000 users.
fn lines(format: GenFormat, n: u64) -> Vec<String> {
    let cfg = GenConfig {
        seed: 11,
        events: Some(n),
        format,
        attack_rate: 0.0,
        ..GenConfig::default()
    };
    Generator::new(cfg).map(|g| g.line).collect()
}

#[test]
fn steady_state_allocates_almost_nothing_per_event() {
    const N: u64 = 200_000;
    for (gf, format) in [
        (GenFormat::Canonical, Format::Canonical),
        (GenFormat::Traefik, Format::Auto),
    ] {
        let ls = lines(gf, N);
        let (warm, measured) = ls.split_at(ls.len() / 2);

        // One line at a time, as the service does.
        let mut p = common::pipeline(format);
        let mut out = Vec::with_capacity(1024);
        for l in warm {
            p.process_line(l.as_bytes(), &mut out);
            out.clear();
        }
        let (decisions, allocs) = counted(|| {
            let mut n = 0;
            for l in measured {
                p.process_line(l.as_bytes(), &mut out);
                n += out.len();
                out.clear();
            }
            n
        });
        let per_line = allocs as f64 / measured.len() as f64;
        println!(
            "{format:?} process_line: {allocs} allocations over {} events ({per_line:.4}/event), {decisions} decisions",
            measured.len()
        );
        assert!(per_line < 0.05, "{format:?}: {per_line} allocations per event");

        // Batches through the decoding workers, as `replay --threads 2` does.
        let mut p = common::pipeline(format);
        let mut par = ParallelDecode::new(p.decoder(), 2, 2).unwrap();
        let mut spare: Vec<DecodedBatch> = Vec::new();
        let mut run = |lines: &[String], p: &mut tokenwatch::pipeline::Pipeline| {
            for c in lines.chunks(256) {
                let mut b = spare.pop().unwrap_or_default();
                for l in c {
                    b.lines.push(l.as_bytes());
                }
                par.submit(b);
                if par.in_flight() >= 4 {
                    let mut d = par.recv().unwrap();
                    p.apply_batch(&d, &mut out);
                    out.clear();
                    d.clear();
                    spare.push(d);
                }
            }
            while let Some(mut d) = par.recv() {
                p.apply_batch(&d, &mut out);
                out.clear();
                d.clear();
                spare.push(d);
            }
        };
        run(warm, &mut p);
        let ((), allocs) = counted(|| run(measured, &mut p));
        let per_line = allocs as f64 / measured.len() as f64;
        println!(
            "{format:?} batches, 2 decoding threads: {allocs} allocations over {} events ({per_line:.4}/event)",
            measured.len()
        );
        assert!(per_line < 0.05, "{format:?}: {per_line} allocations per event");
    }
}
