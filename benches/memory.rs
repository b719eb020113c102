//! Resident memory of the engine's state per live tracked token and per tracked subject.
//!
//! Feeds an [`Engine`] with the default rules N accepted, geolocated requests, each with a
//! distinct token, and reads VmRSS from /proc/self/status before and after (allocator
//! overhead and hash-table slack included: that is what the process pays). Two runs:
//! `tokens` (N tokens over N/100 subjects: the cost of a token) and `subjects` (N tokens of N
//! distinct subjects: a token plus a subject). The per-rule key cap is raised above N so that
//! nothing is evicted. The token cache is measured on its own by a third run, `cache`: N
//! distinct RS256-shaped tokens (the generator's claims) decoded into a [`TokenCache`] of
//! capacity N — what each decoded token costs while it stays cached. The cache is bounded in
//! bytes (`[engine] token_cache_bytes`, 256 MiB by default), so its total is capped whatever
//! the number of live tokens.
//!
//! `state N` is `subjects` with the default caps (`max_keys_per_rule`, `state_bytes`): what
//! rule state costs at most, once N is past them.
//!
//! `spray N` is the worst case for default settings: the release binary's `tokenwatch replay`
//! (default settings, the default rules, both decoding threads) reads N canonical lines on
//! stdin, each with a distinct token of the maximum size (16 KiB) whose id claims (`jti`,
//! `iss`, `sub`, `kid`, `aud`) are all distinct and at their 1 KiB cap, attested
//! (`authenticated: true`, so every rule tracks it), from distinct networks, all within one
//! window (1 ms apart): `tokenwatch_gen::hostile`'s lines, which `tests/it/memory_spray.rs`
//! also sends (with small budgets, to the debug binary). It prints the process's peak RSS
//! (`/usr/bin/time`'s maximum resident set). The binary is `$TOKENWATCH_BIN`, else
//! `target-rel/release/tokenwatch`.
//!
//! Usage: `memory tokens|subjects|state|cache|spray N [RULES_DIR]`; prints `bytes_per_token
//! tracked_keys rss_bytes events_per_s` (the rate includes building each event's token
//! metadata), or for `spray`: `peak_rss_bytes lines`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokenwatch_core::engine::{Engine, EngineConfig};
use tokenwatch_core::input::{Event, GeoPoint};
use tokenwatch_core::token::{encode_unsigned_parts, RawToken, TokenCache, TokenInfo};
use tokenwatch_gen::hostile::{peak_rss, MaxTokens};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mode = args.first().map(String::as_str).unwrap_or("tokens");
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let rules_dir = args.get(2).cloned().unwrap_or_else(|| "rules".into());
    let rules = Arc::new(tokenwatch_core::rules::load_dir(std::path::Path::new(&rules_dir)).expect("rules"));
    if mode == "cache" {
        return token_cache(n, rules.wanted_claims());
    }
    if mode == "spray" {
        return spray(n, &rules_dir);
    }
    // `state`: the default caps, so that past them the state stops growing.
    let cfg = match mode {
        "state" => EngineConfig::default(),
        _ => EngineConfig {
            max_keys_per_rule: (n as usize) * 2 + 10,
            state_bytes: usize::MAX,
            ..EngineConfig::default()
        },
    };
    let mut engine = Engine::new(rules, cfg);
    let subjects = if mode == "tokens" { (n / 100).max(1) } else { n };
    let t0: i64 = 1_795_910_400_000;
    let mut out = Vec::new();
    let before = rss_bytes();
    let start = std::time::Instant::now();
    for i in 0..n {
        let ts = t0 + (i as i64) / 100; // 100k events per second of event time: all stay live
        let subject = i % subjects;
        let tok = Arc::new(TokenInfo {
            id_is_jti: true,
            token_id: format!("{i:032x}").into(),
            iss: Some("https://idp.example.com".into()),
            sub: Some(format!("user-{subject}").into()),
            subject: format!("https://idp.example.com|user-{subject}").into(),
            alg: Some("RS256".into()),
            kid: None,
            aud: Arc::new([]),
            exp: Some(t0 / 1000 + 3600),
            iat: Some(t0 / 1000 - 60),
            nbf: None,
            unsigned: false,
            // genuine use: every rule, the revoking ones too, tracks the token
            verified: true,
            claims: Box::new([]),
            signature_invalid: false,
            sensitive_claims: Box::default(),
        });
        let ev = Event {
            ts_ms: ts,
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(0x5102_4500u32 + (i as u32 % 200)))),
            method: "GET".into(),
            path: "/api/v1/orders".into(),
            status: Some(200),
            user_agent: "bench".into(),
            token: Some(tok),
            token_in_url: false,
            authenticated: true,
            geo: Some(GeoPoint {
                lat: 51.5,
                lon: -0.09,
                accuracy_km: 10.0,
            }),
            scheme: None,
            second_token: false,
        };
        engine.process(&ev, &mut out);
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let after = rss_bytes();
    let keys = engine.tracked_keys();
    let per = after.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "memory {mode}: {n} tokens, {subjects} subjects, {keys} tracked keys, RSS +{} MiB ({per:.0} B per token; \
         the state budget counts {} MiB)",
        (after - before) >> 20,
        engine.state_heap_bytes() >> 20
    );
    println!("{per:.0} {keys} {after} {:.0}", n as f64 / secs);
}

/// RSS per decoded token held in a [`TokenCache`] of capacity `n`, after `n` distinct tokens.
fn token_cache(n: u64, wanted: Vec<Box<str>>) {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k-2026-11"});
    let sig = [0x5au8; 256];
    let mut cache = TokenCache::new(wanted).with_budget_bytes(usize::MAX);
    let before = rss_bytes();
    let start = std::time::Instant::now();
    for i in 0..n {
        let claims = serde_json::json!({
            "iss": "https://idp.example.com",
            "sub": format!("user-{}", i / 100),
            "aud": ["api://orders", "api://billing"],
            "exp": 1_795_914_000 + i as i64 % 3600,
            "iat": 1_795_910_400 + i as i64 % 3600,
            "jti": format!("{i:032x}"),
            "scope": "orders:read orders:write",
            "azp": "web-client",
        });
        let compact = encode_unsigned_parts(&header, &claims, &sig);
        cache.get(RawToken::new(&compact)).expect("decodes");
    }
    let secs = start.elapsed().as_secs_f64();
    let after = rss_bytes();
    assert_eq!(cache.len() as u64, n, "nothing evicted");
    let per = after.saturating_sub(before) as f64 / n as f64;
    // What the byte budget counts, against what the process paid.
    let counted = cache.heap_bytes() as f64 / n as f64;
    eprintln!(
        "memory cache: {n} decoded tokens, RSS +{} MiB ({per:.0} B per cached token; the budget counts {counted:.0} B)",
        (after - before) >> 20
    );
    println!("{per:.0} {n} {after} {:.0}", n as f64 / secs);
}

/// Peak RSS of `tokenwatch replay` with default settings over `n` lines of distinct
/// maximum-size tokens.
fn spray(n: u64, rules_dir: &str) {
    let bin = std::env::var("TOKENWATCH_BIN").unwrap_or_else(|_| "target-rel/release/tokenwatch".into());
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["replay", "-q", "--format", "canonical", "--rules", rules_dir, "-"]);
    let tokens = MaxTokens::new();
    eprintln!("memory spray: {n} lines, tokens of {} bytes", tokens.get(0).len());
    let start = std::time::Instant::now();
    let peak = peak_rss(&cmd, (0..n).map(|i| tokens.line(i))).expect("tokenwatch replay reads the spray");
    eprintln!(
        "memory spray: peak RSS {} MiB over {n} distinct 16 KiB tokens in {:.0} s",
        peak.bytes >> 20,
        start.elapsed().as_secs_f64()
    );
    println!("{} {n}", peak.bytes);
}
