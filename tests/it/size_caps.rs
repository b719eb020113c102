//! No decision is longer than `decision::MAX_DECISION_BYTES`, whatever the request: hostile
//! lines (a path and a user agent near the line limit, written in the characters JSON escapes
//! the longest; id claims at their cap; the `alg: none` token of issue 11 with a 250 KB `jti`)
//! go through the default rules and a `distinct_count` rule over `user_agent`, and every
//! decision's JSON line is measured. A token above `[input] max_token_bytes` is not decoded,
//! and its request still counts as an event.

use crate::common;

use std::sync::Arc;

use serde_json::json;
use tokenwatch_core::decision::{Decision, MAX_DECISION_BYTES, MAX_TEXT_BYTES};
use tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::token::{encode_unsigned_parts, TOKEN_BYTES_RANGE};

const T0: i64 = 1_795_910_400;

/// `n` characters that JSON writes long: control characters (six bytes), quotes and
/// backslashes (two), and a two-byte letter, so a cut must find a character boundary.
fn hostile_text(n: usize) -> String {
    ['\u{1}', '"', '\\', 'é', '\u{1f}', 'a']
        .iter()
        .cycle()
        .take(n)
        .collect()
}

/// An unsigned token, already expired, whose `jti`, `iss` and `sub` are each as long as an
/// id-like claim may be (1 KiB) and all control characters.
fn capped_token(tag: u8) -> String {
    let id = |c: char| -> String {
        std::iter::once(char::from(b'A' + tag))
            .chain(std::iter::repeat_n(c, 1023))
            .collect()
    };
    encode_unsigned_parts(
        &json!({"alg": "none", "kid": id('\u{2}')}),
        &json!({"jti": id('\u{1}'), "iss": id('\u{3}'), "sub": id('\u{4}'), "iat": 0, "exp": 1}),
        b"",
    )
}

/// A canonical line the gateway accepted and attests, the token in the header and in the query.
fn line(ts: i64, ip: &str, method: &str, path: &str, user_agent: &str, token: &str) -> String {
    json!({"ts": T0 + ts, "client_ip": ip, "method": method,
                   "path": format!("{path}?access_token={token}"), "status": 200,
                   "user_agent": user_agent, "authorization": format!("Bearer {token}"),
                   "authenticated": true})
    .to_string()
}

/// The default rules, and a rule that quotes the distinct user agents of a subject.
fn pipeline(cfg: PipelineConfig) -> Pipeline {
    let mut rules = tokenwatch_core::rules::load_dir(&common::root().join("rules")).unwrap();
    let yaml = "rules:\n  - {id: agents, severity: low, action: alert, kind: distinct_count, key: subject, \
                distinct: user_agent, threshold: 3, window: 1h}\n";
    rules
        .rules
        .extend(tokenwatch_core::rules::load_str(std::path::Path::new("agents.yaml"), yaml).unwrap());
    Pipeline::new(Arc::new(rules), Some(common::geo()), cfg).unwrap()
}

fn run(p: &mut Pipeline, lines: &[String]) -> Vec<Decision> {
    let mut out = Vec::new();
    for l in lines {
        p.process_line(l.as_bytes(), &mut out);
    }
    out
}

#[test]
fn no_decision_about_a_hostile_request_exceeds_the_cap() {
    // The largest token cap allowed: the id claims, not the token's size, bound a decision.
    let mut p = pipeline(PipelineConfig {
        max_token_bytes: *TOKEN_BYTES_RANGE.end(),
        ..PipelineConfig::default()
    });
    let (t, other) = (capped_token(0), capped_token(1));
    let method = hostile_text(20_000);
    let mut lines = Vec::new();
    for (i, ip) in ["81.2.69.142", "175.16.199.1", "89.160.20.112"].iter().enumerate() {
        let ua = format!("{i}{}", hostile_text(120_000));
        let path = format!("/{i}/{}", hostile_text(40_000));
        lines.push(line(i as i64 * 600, ip, &method, &path, &ua, &t));
        lines.push(line(i as i64 * 600 + 1, ip, &method, &path, &ua, &other));
    }
    let issue_11 = encode_unsigned_parts(
        &json!({"alg": "none"}),
        &json!({"jti": "j".repeat(250_000), "iss": "i".repeat(140_000), "sub": "s".repeat(140_000)}),
        b"",
    );
    let l = json!({"ts": T0 + 4_000, "client_ip": "81.2.69.142", "method": "GET", "path": "/",
                   "status": 200, "authorization": format!("Bearer {issue_11}"), "authenticated": true});
    lines.push(l.to_string());
    assert!(lines.iter().all(|l| l.len() <= DEFAULT_MAX_LINE));

    let ds = run(&mut p, &lines);
    assert_eq!(p.stats.events, lines.len() as u64, "every line is an event");
    assert_eq!(
        p.stats.token_errors.get("token_too_large"),
        Some(&1),
        "issue 11's token"
    );
    let rules: std::collections::BTreeSet<&str> = ds.iter().map(|d| &*d.rule).collect();
    for r in [
        "unsigned-token",
        "expired-token-accepted",
        "token-in-url",
        "revoked-token-used",
        "agents",
    ] {
        assert!(rules.contains(r), "{r} did not fire: {rules:?}");
    }
    let mut longest = 0;
    for d in &ds {
        let l = d.to_json_line();
        assert!(l.len() <= MAX_DECISION_BYTES, "{}: {} bytes", d.rule, l.len());
        longest = longest.max(l.len());
        for (k, v) in d.evidence.as_object().unwrap() {
            if let Some(s) = v.as_str() {
                assert!(s.len() <= MAX_TEXT_BYTES, "{}: {k} is {} bytes", d.rule, s.len());
            }
        }
    }
    let agents = ds.iter().find(|d| &*d.rule == "agents").unwrap();
    for v in agents.evidence["values"].as_array().unwrap() {
        let v = v["value"].as_str().unwrap();
        assert!(v.len() <= MAX_TEXT_BYTES && v.ends_with(" bytes)"), "{v}");
    }
    let path = ds.iter().find_map(|d| d.evidence["path"].as_str()).unwrap();
    assert!(path.starts_with("/0/\u{1}\"\\é") && path.contains("…("), "{path}");
    eprintln!("longest decision: {longest} bytes of {MAX_DECISION_BYTES}");
}

#[test]
fn a_token_over_the_configured_cap_is_not_decoded_but_its_request_counts() {
    let t = encode_unsigned_parts(
        &json!({"alg": "RS256"}),
        &json!({"sub": "u", "jti": "three-kb", "pad": "p".repeat(2_200)}),
        b"the-signature-segment-of-this-token",
    );
    assert!((2_048..4_096).contains(&t.len()), "{}", t.len());
    let l = json!({"ts": T0, "client_ip": "81.2.69.142", "method": "GET", "path": "/",
                   "status": 200, "authorization": format!("Bearer {t}")})
    .to_string();
    for (cap, decoded) in [(None, true), (Some(2_048), false)] {
        let mut cfg = PipelineConfig::default();
        if let Some(c) = cap {
            cfg.max_token_bytes = c;
        }
        let mut p = pipeline(cfg);
        run(&mut p, std::slice::from_ref(&l));
        assert_eq!(p.stats.events, 1, "{cap:?}");
        let too_large = p.stats.token_errors.get("token_too_large").copied();
        assert_eq!(too_large, (!decoded).then_some(1), "{cap:?}");
    }
    // The same through `replay --config`, from the operator's side.
    let dir = tempfile::tempdir().unwrap();
    let (input, config) = (dir.path().join("in.log"), dir.path().join("tw.toml"));
    std::fs::write(&input, format!("{l}\n")).unwrap();
    std::fs::write(&config, "[input]\nmax_token_bytes = 2048\n").unwrap();
    let out = common::tokenwatch_command()
        .args([
            "replay",
            "-q",
            "--config",
            config.to_str().unwrap(),
            input.to_str().unwrap(),
        ])
        .current_dir(common::root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 events decoded") && err.contains("token_too_large"),
        "{err}"
    );
}
