//! Heap allocations per event in the steady state of the hot path, counted by a global
//! allocator (no timing). Shared by `tests/perf_alloc/main.rs` (which asserts a bound) and
//! `benches/alloc.rs` (which prints the figures for README and `scripts/bench.sh`); each
//! includes this file with `#[path]`, and its counting allocator becomes that binary's global
//! allocator.
//!
//! After a warm-up over the first half of a generated stream (token cache, per-key state, batch
//! buffers and GeoIP cache grown), the second half is counted. What remains is per distinct
//! token (decoding it once), per new tracked key, and per decision — never per request.

use std::path::Path;
use std::sync::Arc;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};

use tokenwatch_core::input::Format;
use tokenwatch_core::pipeline::{DecodedBatch, ParallelDecode};
use tokenwatch_gen::{GenConfig, GenFormat, Generator};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
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

/// The default rules and the GeoIP test database, from the crate's root.
fn pipeline(format: Format) -> Pipeline {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = Arc::new(tokenwatch_core::rules::load_dir(&root.join("rules")).unwrap());
    let geo = GeoDb::open(&root.join("assets/GeoLite2-City-Test.mmdb")).unwrap();
    let cfg = PipelineConfig {
        format,
        ..PipelineConfig::default()
    };
    Pipeline::new(rules, Some(geo), cfg).unwrap()
}

/// Allocations per event in the counted half of `n` generated events: one line at a time (as
/// the service does), and in batches through two decoding threads (as `replay` does).
pub struct PerEvent {
    pub events: usize,
    pub serial: f64,
    pub batches: f64,
    pub decisions: usize,
}

pub fn measure(gf: GenFormat, format: Format, n: u64) -> PerEvent {
    let ls = lines(gf, n);
    let (warm, measured) = ls.split_at(ls.len() / 2);

    let mut p = pipeline(format);
    let mut out = Vec::with_capacity(1024);
    for l in warm {
        p.process_line(l.as_bytes(), &mut out);
        out.clear();
    }
    let (decisions, serial) = counted(|| {
        let mut n = 0;
        for l in measured {
            p.process_line(l.as_bytes(), &mut out);
            n += out.len();
            out.clear();
        }
        n
    });

    let mut p = pipeline(format);
    let mut par = ParallelDecode::new(p.decoder(), 2, 2).unwrap();
    let mut spare: Vec<DecodedBatch> = Vec::new();
    let mut run = |lines: &[String], p: &mut Pipeline| {
        for c in lines.chunks(256) {
            let mut b = spare.pop().unwrap_or_default();
            for l in c {
                b.lines_mut().push(l.as_bytes());
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
    let ((), batches) = counted(|| run(measured, &mut p));
    let events = measured.len();
    PerEvent {
        events,
        serial: serial as f64 / events as f64,
        batches: batches as f64 / events as f64,
        decisions,
    }
}
