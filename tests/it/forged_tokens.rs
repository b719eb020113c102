//! Only genuine, authenticated use may revoke (issue 9, reproductions 1–5), through the real
//! `tokenwatch replay` and the default rules: forged tokens naming a victim — on a 404, on
//! `/healthz`, as CORS preflights, in the URL next to a valid header, on lines without a
//! status — never revoke anything, with or without a JWKS, while the genuine attack beside them
//! (tokens signed with the test keys, `--jwks`) still revokes.

use crate::common;
use crate::support::keys;

use std::process::Command;

use keys::{claims, forged, rs256, ISS, T0};
use serde_json::{json, Value};

const VICTIM_JTI: &str = "victim-jti-7f3a";

fn line(t: i64, ip: &str, method: &str, path: &str, status: Option<u16>, token: &str) -> String {
    let mut o = json!({"ts": T0 + t, "client_ip": ip, "method": method, "path": path,
                       "authorization": format!("Bearer {token}")});
    if let Some(s) = status {
        o["status"] = json!(s);
    }
    o.to_string()
}

/// `tokenwatch replay --rules rules [extra...] FILE`: the decisions.
fn replay(lines: &[String], extra: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let geo = common::root().join("assets/GeoLite2-City-Test.mmdb");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args([
            "replay",
            "--quiet",
            "--rules",
            "rules",
            "--geoip",
            geo.to_str().unwrap(),
        ])
        .args(extra)
        .arg(&log)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn revocations(ds: &[Value]) -> Vec<&Value> {
    ds.iter()
        .filter(|d| d["action"].as_str().is_some_and(|a| a.starts_with("revoke")))
        .collect()
}

/// Runs the lines without a JWKS and with the test JWKS: no revocation may name the victim;
/// with the JWKS, exactly the `genuine` (rule, token_id) revocations happen.
fn check(lines: &[String], config: &[&str], genuine: &[(&str, &str)]) {
    let jwks = keys::jwks();
    for with_jwks in [false, true] {
        let mut args = config.to_vec();
        if with_jwks {
            args.extend(["--jwks", jwks.to_str().unwrap()]);
        }
        let ds = replay(lines, &args);
        let revoked = revocations(&ds);
        for r in &revoked {
            assert!(
                r["token_id"] != VICTIM_JTI && r["sub"] != "victim",
                "a forged token got its victim revoked (jwks: {with_jwks}): {r}"
            );
        }
        let got: Vec<(String, String)> = revoked
            .iter()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap().into(),
                    r["token_id"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = if with_jwks {
            genuine.iter().map(|(r, t)| (r.to_string(), t.to_string())).collect()
        } else {
            Vec::new()
        };
        assert_eq!(got, want, "jwks: {with_jwks}");
        // and so nobody's next real request is a "use of a revoked token"
        assert!(!ds
            .iter()
            .any(|d| d["rule"] == "revoked-token-used" && d["sub"] == "victim"));
    }
}

#[test]
fn a_forged_expired_token_on_a_404_does_not_revoke() {
    let header = json!({"alg": "RS256", "kid": "k1"});
    let fake = forged(&header, &json!({"jti": VICTIM_JTI, "exp": T0 - 3600}));
    let erin = rs256(&claims("erin", "tok-erin-old", T0 - 7200));
    let lines = [
        line(10, "198.51.100.7", "GET", "/does-not-exist", Some(404), &fake),
        line(20, "216.160.83.57", "GET", "/api/v1/files", Some(200), &erin),
        // the victim's next real request
        line(
            30,
            "198.51.100.9",
            "GET",
            "/api/v1/files",
            Some(200),
            &rs256(&claims("victim", VICTIM_JTI, T0)),
        ),
    ];
    check(&lines, &[], &[("expired-token-accepted", "tok-erin-old")]);
}

#[test]
fn a_forged_subject_on_healthz_from_two_continents_does_not_revoke() {
    let header = json!({"alg": "RS256", "kid": "k1"});
    let fake = forged(&header, &json!({"iss": ISS, "sub": "victim", "jti": "whatever"}));
    let carol = rs256(&claims("carol", "tok-carol-1", T0));
    let lines = [
        line(0, "81.2.69.142", "GET", "/healthz", Some(200), &fake),
        line(5, "175.16.199.5", "GET", "/healthz", Some(200), &fake),
        line(30, "81.2.69.142", "GET", "/api/v1/me", Some(200), &carol),
        line(630, "175.16.199.5", "GET", "/api/v1/me", Some(200), &carol),
    ];
    check(&lines, &[], &[("impossible-travel", "tok-carol-1")]);
}

#[test]
fn forged_copies_of_a_jti_as_cors_preflights_do_not_revoke() {
    let mut lines = Vec::new();
    for (i, ip) in ["198.51.100.7", "203.0.113.9", "192.0.2.44"].iter().enumerate() {
        let fake = forged(
            &json!({"alg": "RS256", "kid": "k1"}),
            &json!({"jti": VICTIM_JTI, "sub": "victim", "iss": ISS, "n": i}),
        );
        lines.push(line(i as i64 * 10, ip, "OPTIONS", "/api/v1/orders", Some(204), &fake));
    }
    let bob = rs256(&claims("bob", "tok-bob-1", T0));
    for (i, ip) in ["198.51.100.7", "203.0.113.9", "192.0.2.44"].iter().enumerate() {
        lines.push(line(100 + i as i64 * 10, ip, "GET", "/api/v1/orders", Some(200), &bob));
    }
    check(&lines, &[], &[("token-replay", "tok-bob-1")]);
}

#[test]
fn a_forged_url_token_next_to_a_valid_header_does_not_revoke() {
    let mallory = rs256(&claims("mallory", "tok-mallory-1", T0));
    let fake = forged(
        &json!({"alg": "RS256", "kid": "k1"}),
        &json!({"jti": VICTIM_JTI, "sub": "victim"}),
    );
    let grace = rs256(&claims("grace", "tok-grace-1", T0));
    let lines = [
        line(
            10,
            "198.51.100.7",
            "GET",
            &format!("/api/orders?x={fake}"),
            Some(200),
            &mallory,
        ),
        json!({"ts": T0 + 20, "client_ip": "214.78.1.20", "method": "GET", "status": 200,
               "path": format!("/api/v1/export?access_token={grace}")})
        .to_string(),
    ];
    check(&lines, &[], &[("token-in-url", "tok-grace-1")]);
}

#[test]
fn lines_without_a_status_are_not_accepted() {
    // A custom mapping whose status path is wrong: no line has a status.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tokenwatch.toml");
    std::fs::write(
        &cfg,
        "[input]\nformat = \"custom\"\n[input.mapping]\nts = \"ts\"\nclient_ip = \"client_ip\"\n\
         path = \"path\"\nstatus = \"http.code\"\nauthorization = \"authorization\"\n",
    )
    .unwrap();
    let header = json!({"alg": "RS256", "kid": "k1"});
    let fake = forged(&header, &json!({"jti": VICTIM_JTI, "exp": T0 - 3600}));
    let erin = rs256(&claims("erin", "tok-erin-old", T0 - 7200));
    let lines = [
        line(10, "198.51.100.7", "GET", "/x", Some(200), &fake),
        line(20, "216.160.83.57", "GET", "/api/v1/files", Some(200), &erin),
    ];
    check(&lines, &["--config", cfg.to_str().unwrap()], &[]);
    // the same lines read with their status: the genuine one revokes
    check(&lines, &[], &[("expired-token-accepted", "tok-erin-old")]);
}
