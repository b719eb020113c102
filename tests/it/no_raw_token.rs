//! The raw token must never leave the decoder: not in decisions, not in the summary, not in
//! error messages. Every output of a replay over every fixture, and of a `run` of the binary
//! (stderr, alert lines, /metrics, Redis), is scanned for every token's signature and payload
//! segments.

use crate::common;
use crate::run_bin;

use std::process::Command;

#[test]
fn no_output_of_a_replay_contains_any_token() {
    let dir = std::fs::read_dir(common::root().join("tests/fixtures")).unwrap();
    let mut files: Vec<_> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(files.len() >= 6);
    let geo = common::root().join("assets/GeoLite2-City-Test.mmdb");
    let mut checked = 0;
    for f in &files {
        let input = std::fs::read_to_string(f).unwrap();
        let tokens = common::jwts_in(&input);
        for args in [vec!["replay"], vec!["replay", "--geoip", geo.to_str().unwrap()]] {
            let out = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
                .args(&args)
                .arg(f)
                .current_dir(common::root())
                .output()
                .unwrap();
            assert!(out.status.success());
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stdout.is_empty() || f.ends_with("claims-only.log"));
            for t in &tokens {
                let parts: Vec<&str> = t.split('.').collect();
                for seg in [parts[1], parts[2]] {
                    if seg.len() >= 8 {
                        assert!(
                            !all.contains(seg),
                            "{}: a token segment appears in the output",
                            f.display()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 50, "checked {checked} segments");
}

#[test]
fn decisions_and_debug_output_hold_no_token() {
    // In-process: Debug of every parsed event and every decision.
    use tokenwatch_core::input::{Format, Parser};
    use tokenwatch_core::token::TokenCache;
    let parser = Parser::new(Format::Auto, None).unwrap();
    let mut cache = TokenCache::new(vec![]);
    for name in ["canonical.log", "traefik.log", "kong.log", "envoy.log", "nginx.log"] {
        let text = std::fs::read_to_string(common::fixture(name)).unwrap();
        for line in text.lines() {
            let tokens = common::jwts_in(line);
            let shown = match parser.parse(line.as_bytes(), &mut cache) {
                // path and user agent are the request's own; the token in a URL query is the
                // one thing a parsed event may echo, so look at the rest
                Ok(p) => format!("{:?} {:?} {:?}", p.event.token, p.url_token, p.token_errors),
                Err(e) => format!("{e:?}"),
            };
            for t in tokens {
                let sig = t.rsplit('.').next().unwrap();
                if sig.len() >= 8 {
                    assert!(!shown.contains(sig));
                }
            }
        }
    }
    let ds = common::run_file(&mut common::pipeline(Format::Auto), &common::fixture("canonical.log"));
    let dbg = format!("{ds:?}");
    for t in common::jwts_in(&std::fs::read_to_string(common::fixture("canonical.log")).unwrap()) {
        let payload = t.split('.').nth(1).unwrap();
        assert!(!dbg.contains(payload));
    }
}

#[test]
fn no_output_of_run_contains_any_token_and_json_logs_are_json() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    // Generated traffic with attacks, in the hour before the fixtures' event time, then the
    // fixtures (with their malformed lines).
    let generated = tokenwatch_gen::GenConfig {
        seed: 11,
        events: Some(3_000),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        malformed_rate: 0.01,
        start_ms: 1_795_910_400_000 - 3_600_000,
        ..Default::default()
    };
    let mut lines: Vec<String> = tokenwatch_gen::Generator::new(generated).map(|g| g.line).collect();
    for name in ["canonical.log", "traefik.log", "kong.log", "envoy.log", "nginx.log"] {
        lines.extend(common::fixture_lines(name));
    }
    let tokens = common::jwts_in(&lines.join("\n"));
    assert!(tokens.len() > 1_000, "{}", tokens.len());
    common::produce(&brokers, "logs", &lines);

    // The fixtures' tokens are signed with the test key of this JWKS, the generated ones with
    // the generator's keys for seed 11: both revoke.
    let jwks = common::root().join("tests/fixtures/keys/jwks.json");
    let gen_jwks = common::gen_jwks_file(11);
    let args = [
        "--log-format",
        "json",
        "--jwks",
        jwks.to_str().unwrap(),
        "--jwks",
        gen_jwks.to_str().unwrap(),
    ];
    let mut tw = run_bin::start(&brokers, &redis.url(), "no-token", &args, &[]);
    let metrics = tw.wait_metrics("every line to be read", 120, |b| run_bin::seen(b) == lines.len() as u64);
    tw.signal("TERM");
    assert_eq!(tw.wait_exit(30).code(), Some(0), "{}", tw.stderr());

    let stderr = tw.stderr();
    let mut messages = 0;
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
        messages += 1;
    }
    assert!(messages >= 2, "{stderr}");
    let alerts = std::fs::read_to_string(&tw.alerts).unwrap();
    // (the generated traffic's and the fixtures' decisions: 19 with this seed)
    assert!(alerts.lines().count() >= 15, "{alerts}");

    // Everything tokenwatch wrote to Redis: keys, values, feed entries.
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(keys.len() >= 10, "{keys:?}");
    let mut stored = keys.join("\n");
    for k in &keys {
        let kind: String = redis::cmd("TYPE").arg(k).query(&mut c).unwrap();
        let v: redis::Value = match kind.as_str() {
            "stream" => redis::cmd("XRANGE").arg(k).arg("-").arg("+").query(&mut c).unwrap(),
            _ => redis::cmd("GET").arg(k).query(&mut c).unwrap(),
        };
        stored.push_str(&format!("\n{v:?}"));
    }

    let mut checked = 0;
    for t in &tokens {
        let parts: Vec<&str> = t.split('.').collect();
        for seg in [parts[1], parts[2]] {
            if seg.len() < 8 {
                continue;
            }
            for (what, text) in [
                ("stderr", &stderr),
                ("alerts", &alerts),
                ("/metrics", &metrics),
                ("redis", &stored),
            ] {
                assert!(!text.contains(seg), "a token segment appears in {what}");
            }
            checked += 1;
        }
    }
    assert!(checked > 1_000, "checked {checked} segments");
}
