//! Per-event costs on generated traffic (`tokenwatch gen`): each format's parser, token
//! decoding, each rule kind, and the whole pipeline with the default rules.
//!
//! Run: `cargo bench --bench pipeline` (add `-- parse` etc. to pick a group). Figures are per
//! event (criterion's "elem/s" is events per second on one core).
//!
//! Engine and pipeline benches start every iteration from fresh state over the same
//! generated stream, so they include creating per-token state and decoding each distinct
//! token once, as a live stream does; `pipeline/canonical-verify` also verifies each distinct
//! token's signature once (RS256, the test JWKS).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use tokenwatch_core::engine::{Engine, EngineConfig};
use tokenwatch_core::input::{Event, Format, Parser};
use tokenwatch_core::pipeline::{DecodedBatch, Pipeline, PipelineConfig};
use tokenwatch_core::record::{encode_event, partition_for, subject_key, Frame, Origin, Router};
use tokenwatch_core::rules::RuleSet;
use tokenwatch_core::token::{decode, RawToken, TokenCache};
use tokenwatch_core::verify::{Verifier, VerifyConfig};
use tokenwatch_gen::{GenConfig, GenFormat, Generator};

const N: u64 = 50_000;

fn lines(format: GenFormat, n: u64) -> Vec<String> {
    let cfg = GenConfig {
        seed: 7,
        events: Some(n),
        format,
        ..GenConfig::default()
    };
    Generator::new(cfg).map(|g| g.line).collect()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, gf, f) in [
        ("canonical", GenFormat::Canonical, Format::Canonical),
        ("traefik", GenFormat::Traefik, Format::Traefik),
        ("kong", GenFormat::Kong, Format::Kong),
        ("envoy", GenFormat::Envoy, Format::Envoy),
        ("nginx", GenFormat::Nginx, Format::Nginx),
        ("auto-traefik", GenFormat::Traefik, Format::Auto),
    ] {
        let ls = lines(gf, 10_000);
        let parser = Parser::new(f, None).unwrap();
        let mut cache = TokenCache::new(vec![]);
        g.throughput(Throughput::Elements(ls.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0usize;
                for l in &ls {
                    ok += usize::from(parser.parse(l.as_bytes(), &mut cache).is_ok());
                }
                ok
            });
        });
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let ls = lines(GenFormat::Canonical, 2_000);
    let toks: Vec<String> = ls
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let a = v.get("authorization")?.as_str()?;
            Some(a.trim_start_matches("Bearer ").to_string())
        })
        .collect();
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(toks.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| toks.iter().filter(|t| decode(RawToken::new(t), &[]).is_ok()).count());
    });
    let mut cache = TokenCache::new(vec![]);
    g.bench_function("cache_hit", |b| {
        b.iter(|| toks.iter().filter(|t| cache.get(RawToken::new(t)).is_ok()).count());
    });
    g.finish();
}

fn one_rule(id: &str) -> Arc<RuleSet> {
    let all = tokenwatch_core::defaults::rules().unwrap();
    let r = all.rules.iter().find(|r| &*r.id == id).unwrap().clone();
    Arc::new(RuleSet {
        rules: vec![r],
        files: 1,
    })
}

fn rules(c: &mut Criterion) {
    let ls = lines(GenFormat::Canonical, N);
    let parser = Parser::new(Format::Canonical, None).unwrap();
    let mut cache = TokenCache::new(vec![]);
    let geo = tokenwatch_core::defaults::test_geo_db();
    let events: Vec<Event<'_>> = ls
        .iter()
        .filter_map(|l| parser.parse(l.as_bytes(), &mut cache).ok())
        .map(|p| {
            let mut e = p.event;
            if e.geo.is_none() {
                e.geo = e.client_ip.and_then(|ip| geo.locate(ip));
            }
            e
        })
        .collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(events.len() as u64));
    // one default rule of each kind, then all eight
    for (name, set) in [
        ("match/expired-token-accepted", one_rule("expired-token-accepted")),
        ("count/expired-token-attempts", one_rule("expired-token-attempts")),
        ("distinct_count/token-replay", one_rule("token-replay")),
        ("geo_velocity/impossible-travel", one_rule("impossible-travel")),
        ("revoked_use/revoked-token-used", one_rule("revoked-token-used")),
        ("all-default-rules", tokenwatch_core::defaults::rules().unwrap()),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        Engine::new(set.clone(), EngineConfig::default()),
                        Vec::with_capacity(64),
                    )
                },
                |(mut e, mut out)| {
                    for ev in &events {
                        e.process(ev, &mut out);
                        out.clear();
                    }
                    e
                },
                BatchSize::LargeInput,
            );
        });
    }
    g.finish();
}

/// The test JWKS: its RSA key `k1` is the key id the generator's tokens name, so with it each
/// distinct token costs one RS256 verification (which fails: the generator does not sign).
fn test_jwks() -> Option<Arc<Verifier>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let cfg = VerifyConfig {
        jwks: vec![path.into()],
        issuers: Vec::new(),
    };
    Some(Arc::new(Verifier::load(&cfg).unwrap()))
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    for (name, gf, verify) in [
        ("canonical", GenFormat::Canonical, None),
        ("traefik", GenFormat::Traefik, None),
        ("canonical-verify", GenFormat::Canonical, test_jwks()),
    ] {
        let ls = lines(gf, N);
        g.throughput(Throughput::Elements(ls.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let rules = tokenwatch_core::defaults::rules().unwrap();
                    let geo = tokenwatch_core::defaults::test_geo_db();
                    (
                        Pipeline::new(
                            rules,
                            Some(geo),
                            PipelineConfig {
                                verify: verify.clone(),
                                ..PipelineConfig::default()
                            },
                        )
                        .unwrap(),
                        Vec::with_capacity(64),
                    )
                },
                |(mut p, mut out)| {
                    for l in &ls {
                        p.process_line(l.as_bytes(), &mut out);
                        out.clear();
                    }
                    p
                },
                BatchSize::LargeInput,
            );
        });
    }
    g.finish();
}

/// The ingest stage's records of one batch of uses (`--role both`), framed for 6 internal
/// partitions: each record encoded field by field (`encode_event`, its token in full), against
/// the router, which encodes a token's claims once, and whose frames hold each token in full
/// once and refer to it after. Both include what they share (counting each use, the line's
/// tie hash, finding the partition), so the difference is the encoding.
fn shuffle(c: &mut Criterion) {
    let ls = lines(GenFormat::Canonical, N);
    let rules = tokenwatch_core::defaults::rules().unwrap();
    let geo = tokenwatch_core::defaults::test_geo_db();
    let mut p = Pipeline::new(rules.clone(), Some(geo), PipelineConfig::default()).unwrap();
    let mut batch = DecodedBatch::new();
    for l in &ls {
        batch.lines_mut().push(l.as_bytes());
    }
    p.decode_batch(&mut batch);
    let origin = Origin {
        topic: 1,
        partition: 0,
        offset: 0,
        line: 0,
        use_index: 0,
    };
    let mut g = c.benchmark_group("shuffle");
    g.throughput(Throughput::Elements(ls.len() as u64));
    let mut buf = Vec::new();
    let mut frames: Vec<Frame> = (0..6).map(|_| Frame::default()).collect();
    // The bytes of the frames, which then start over (as sent).
    let sent = |frames: &mut [Frame]| -> usize {
        frames
            .iter_mut()
            .map(|f| {
                let n = f.bytes().len();
                f.clear();
                n
            })
            .sum()
    };
    let mut encode_events = || {
        let mut bytes = 0;
        p.batch_uses(&batch, |_, _, ev, tie| {
            if let Some(subject) = subject_key(ev) {
                buf.clear();
                encode_event(ev, origin, tie, &[], &mut buf);
                let f = &mut frames[partition_for(subject.as_bytes(), 6) as usize];
                f.write_or_start_over(|f| f.push(&buf), |full| bytes += full.bytes().len());
            }
        });
        bytes + sent(&mut frames)
    };
    let in_full = encode_events();
    g.bench_function("encode_event", |b| b.iter(&mut encode_events));
    let mut router = Router::new(&rules, Arc::default(), 6, None);
    let mut route = || {
        let mut bytes = 0;
        p.batch_uses(&batch, |_, _, ev, tie| {
            router.route(ev, origin, tie, &mut buf, |_, k, record| {
                let f = &mut frames[k as usize];
                f.write_or_start_over(|f| f.push_event(record), |full| bytes += full.bytes().len());
            });
        });
        bytes + sent(&mut frames)
    };
    let referred = route();
    g.bench_function("route", |b| b.iter(&mut route));
    g.finish();
    // What the broker and the detect stage get: the frames' bytes (before LZ4) per line.
    let per_line = |bytes: usize| bytes as f64 / ls.len() as f64;
    eprintln!(
        "shuffle: {:.1} bytes per line with every token in full, {:.1} with each token once per frame ({:.2}x)",
        per_line(in_full),
        per_line(referred),
        referred as f64 / in_full as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = parse, tokens, rules, pipeline, shuffle
}
criterion_main!(benches);
