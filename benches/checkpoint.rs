//! Checkpoint cost at scale: a million live tokens (one request each, each its own subject)
//! through the default rules, then the engine's state snapshotted (what the consume loop
//! stops for: into a new buffer, then into that one again as from the second checkpoint
//! on), framed as a checkpoint (checksum included; beside the loop), decoded and
//! restored into a fresh engine. Prints bytes per tracked key and the times. With
//! `TOKENWATCH_BENCH_REDIS=redis://...`, also the time to write it there (beside the loop).
//!
//! `cargo bench --bench checkpoint` (users: `TOKENWATCH_BENCH_USERS`, default 1,000,000).
//! cargo passes `--bench` to harness-less benches: it is ignored.

use std::sync::Arc;
use std::time::Instant;

use tokenwatch::checkpoint::Checkpoint;
use tokenwatch_core::eventtime::PartitionMark;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};

fn main() {
    let users: u32 = std::env::var("TOKENWATCH_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = Arc::new(tokenwatch_core::rules::load_dir(&root.join("rules")).expect("rules"));
    let geo = tokenwatch_core::geo::GeoDb::open(&root.join("assets/GeoLite2-City-Test.mmdb")).expect("geoip");
    let cfg = PipelineConfig {
        token_cache_bytes: 1 << 30,
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(rules.clone(), Some(geo.fork()), cfg.clone()).expect("pipeline");
    // One request per live token, each token its own subject, from one of a few networks
    // the test database locates: every default rule that keys on the token or the subject
    // holds a key per token.
    let t = Instant::now();
    let mut out = Vec::new();
    let ips = ["81.2.69.142", "89.160.20.112", "2.125.160.216", "216.160.83.56"];
    let t0 = 1_795_910_400i64;
    for i in 0..i64::from(users) {
        let jwt = tokenwatch_core::token::encode_unsigned_parts(
            &serde_json::json!({"alg": "RS256"}),
            &serde_json::json!({"jti": format!("tok-{i}"), "sub": format!("user-{i}"),
                                "iss": "https://idp.example.com", "iat": t0, "exp": t0 + 3600}),
            b"a-signature-that-nobody-checks-here",
        );
        // `authenticated`: the gateway attests the token (the default rules act only on
        // authenticated requests; unsigned tokens would leave no key at all).
        let line = serde_json::json!({"ts": t0 + i / 2_000, "client_ip": ips[i as usize % ips.len()],
            "method": "GET", "path": "/api/v1/products", "status": 200, "authenticated": true,
            "authorization": format!("Bearer {jwt}")})
        .to_string();
        p.process_line(line.as_bytes(), &mut out);
        out.clear();
    }
    let keys = p.engine().tracked_keys();
    eprintln!("fed {} lines in {:.1} s", p.stats.lines, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut state = Vec::new();
    p.engine().snapshot(&mut state);
    let first_s = t.elapsed().as_secs_f64();
    // From the second checkpoint on, the loop snapshots into the previous one's buffer.
    state.clear();
    let t = Instant::now();
    p.engine().snapshot(&mut state);
    let snapshot_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let marks = (0..6)
        .map(|i| PartitionMark {
            topic: "logs".into(),
            partition: i,
            next: 1_000_000,
            applied: Vec::new(),
        })
        .collect();
    let bytes = Checkpoint {
        partitions: marks,
        engine: state,
    }
    .encode();
    let encode_s = t.elapsed().as_secs_f64();
    let write = std::env::var("TOKENWATCH_BENCH_REDIS")
        .ok()
        .map(|url| format!("; Redis write {:.3} s", write_to_redis(&url, &bytes)))
        .unwrap_or_default();

    let mut fresh = Pipeline::new(rules, Some(geo), cfg).expect("pipeline");
    let t = Instant::now();
    let c = Checkpoint::decode(&bytes).expect("decode");
    let report = fresh.engine_mut().restore(&c.engine).expect("restore");
    let restore_s = t.elapsed().as_secs_f64();
    assert!(keys > 0, "the traffic must leave live keys");
    assert_eq!(fresh.engine().tracked_keys(), keys);
    println!(
        "tracked keys {keys} (rules {} kept); checkpoint {} bytes = {:.1} bytes/key; snapshot (the loop's pause) {:.3} s into a new buffer, {:.3} s into the last one's; encode {:.3} s{write}; decode+restore {:.3} s",
        report.rules_kept,
        bytes.len(),
        bytes.len() as f64 / keys as f64,
        first_s,
        snapshot_s,
        encode_s,
        restore_s
    );
}

/// Seconds to write `bytes` as a checkpoint (chunks, head switch) to the Redis at `url`.
fn write_to_redis(url: &str, bytes: &[u8]) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = tokenwatch::sinks::redis::RedisConfig {
            urls: vec![url.to_string()],
            cluster: false,
            key_prefix: "bench:".into(),
            policy: Default::default(),
            stream_maxlen: 1000,
            response_timeout: std::time::Duration::from_secs(60),
            ca_file: None,
        };
        let w = tokenwatch::sinks::redis::RevocationWriter::connect(cfg)
            .await
            .expect("redis");
        let mut store = tokenwatch::checkpoint::CheckpointStore::new("bench:", "checkpoint");
        let t = Instant::now();
        store
            .save(&mut w.handle(), bytes, 0, std::time::Duration::ZERO, true)
            .await
            .expect("write");
        t.elapsed().as_secs_f64()
    })
}
