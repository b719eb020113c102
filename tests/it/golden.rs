//! Golden tests: each gateway format's fixture through the default rules, with the test JWKS
//! (the fixtures' tokens are signed with its key `k1`), gives exactly the committed decisions.
//! Set TOKENWATCH_BLESS=1 to rewrite the expected files after a deliberate change, then review
//! the diff.

use crate::common;
use crate::support::keys;

use std::sync::Arc;

use tokenwatch_core::input::Format;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::verify::{Verifier, VerifyConfig};

fn verifier() -> Option<Arc<Verifier>> {
    let cfg = VerifyConfig {
        jwks: vec![keys::jwks().to_str().unwrap().into()],
        issuers: Vec::new(),
    };
    Some(Arc::new(Verifier::load(&cfg).unwrap()))
}

/// The default rules, the GeoIP test database and the test JWKS.
fn pipeline(format: Format) -> Pipeline {
    common::pipeline_with(PipelineConfig {
        format,
        verify: verifier(),
        ..PipelineConfig::default()
    })
}

const FORMATS: &[(&str, Format)] = &[
    ("canonical", Format::Canonical),
    ("traefik", Format::Traefik),
    ("kong", Format::Kong),
    ("envoy", Format::Envoy),
    ("nginx", Format::Nginx),
];

fn render(ds: &[tokenwatch_core::decision::Decision]) -> String {
    ds.iter()
        .map(tokenwatch_core::decision::Decision::to_json_line)
        .collect()
}

#[test]
fn every_format_matches_its_golden_decisions() {
    for (name, format) in FORMATS {
        let mut p = pipeline(*format);
        let got = render(&common::run_file(&mut p, &common::fixture(&format!("{name}.log"))));
        let golden = common::fixture(&format!("{name}.decisions.jsonl"));
        if std::env::var_os("TOKENWATCH_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(got, want, "{name}: decisions differ from {}", golden.display());
        // and the counters: 2 unparsable lines, 1 line of no known format (explicit formats
        // report it as missing its timestamp), 1 undecodable token
        let s = &p.stats;
        assert_eq!(s.skipped.get("invalid_json"), Some(&2), "{name}: {:?}", s.skipped);
        assert_eq!(s.skipped_total(), 3, "{name}: {:?}", s.skipped);
        assert_eq!(s.token_errors.get("token_not_three_segments"), Some(&1), "{name}");
    }
}

#[test]
fn auto_detection_gives_the_same_decisions_as_the_explicit_format() {
    for (name, format) in FORMATS {
        let path = common::fixture(&format!("{name}.log"));
        let explicit = render(&common::run_file(&mut pipeline(*format), &path));
        let mut auto = pipeline(Format::Auto);
        assert_eq!(render(&common::run_file(&mut auto, &path)), explicit, "{name}");
        assert_eq!(auto.stats.skipped.get("unknown_format"), Some(&1), "{name}");
    }
}

#[test]
fn all_formats_describe_the_same_requests_and_agree() {
    let canonical = render(&common::run_file(
        &mut pipeline(Format::Auto),
        &common::fixture("canonical.log"),
    ));
    for (name, _) in &FORMATS[1..] {
        let other = render(&common::run_file(
            &mut pipeline(Format::Auto),
            &common::fixture(&format!("{name}.log")),
        ));
        assert_eq!(other, canonical, "{name} disagrees with canonical");
    }
}

#[test]
fn the_fixture_scenario_fires_every_default_rule() {
    let ds = common::run_file(&mut pipeline(Format::Auto), &common::fixture("canonical.log"));
    let fired = |rule: &str, id: &str| ds.iter().any(|d| &*d.rule == rule && d.token_id.as_deref() == Some(id));
    assert!(fired("token-replay", "tok-bob-1"));
    assert!(fired("revoked-token-used", "tok-bob-1"));
    assert!(fired("impossible-travel", "tok-carol-1"));
    assert!(fired("revoked-token-used", "tok-carol-1"));
    assert!(fired("expired-token-attempts", "tok-dave-old"));
    assert!(fired("expired-token-accepted", "tok-erin-old"));
    assert!(fired("unsigned-token", "tok-frank-1"));
    assert!(fired("token-in-url", "tok-grace-1"));
    assert!(fired("excessive-lifetime", "tok-heidi-1"));
    // near misses stay silent
    assert!(
        !ds.iter().any(|d| d.token_id.as_deref() == Some("tok-ivan-1")),
        "two networks and forged copies"
    );
    // exactly one decision per expected firing
    assert_eq!(ds.len(), 9, "{}", render(&ds));
    let travel = ds.iter().find(|d| &*d.rule == "impossible-travel").unwrap();
    assert_eq!(travel.not_before, Some(1_795_910_400 + 1230));
    assert_eq!(travel.subject.as_deref(), Some("https://idp.example.com|carol"));
}

#[test]
fn gateways_that_log_only_claims() {
    let ds = common::run_file(&mut pipeline(Format::Auto), &common::fixture("claims-only.log"));
    // kong (custom_fields_by_lua) and envoy (jwt_authn payload): the same expired token,
    // accepted; one id derived from iss|sub|iat|exp, so it fires once.
    assert_eq!(ds.len(), 1, "{}", render(&ds));
    assert_eq!(&*ds[0].rule, "expired-token-accepted");
    assert!(ds[0].token_id.as_deref().unwrap().starts_with("claims:"));
    assert_eq!(ds[0].sub.as_deref(), Some("mallory"));
}

/// `canonical.log` reshaped into a gateway of our own invention (nested objects, a header name
/// with a dot, a numeric-string status, a location of its own), read with `--format custom`
/// through a user mapping, gives exactly the canonical decisions.
#[test]
fn a_custom_mapping_end_to_end_gives_the_canonical_decisions() {
    use serde_json::{json, Value};
    use tokenwatch_core::input::mapping::{Mapping, MappingConfig};

    let text = std::fs::read_to_string(common::fixture("canonical.log")).unwrap();
    let mut reshaped = String::new();
    let mut n = 0;
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) if o.contains_key("ts") => {
                let g = |k: &str| o.get(k).cloned().unwrap_or(Value::Null);
                let status = o.get("status").map(|s| json!(s.to_string()));
                let v = json!({
                    "time": g("ts"),
                    "peer": {"ip": g("client_ip")},
                    "http": {
                        "method": g("method"), "url": g("path"), "code": status,
                        "headers": {"user-agent": g("user_agent"), "x.auth": g("authorization")}
                    }
                });
                reshaped.push_str(&v.to_string());
                n += 1;
            }
            // bad lines stay bad
            _ => reshaped.push_str(line),
        }
        reshaped.push('\n');
    }
    assert!(n > 20, "{n}");
    let cfg: MappingConfig = toml::from_str(
        r#"
        ts = "time"
        client_ip = "peer.ip"
        method = "http.method"
        path = "$.http.url"
        status = "http.code"
        user_agent = "http.headers.user-agent"
        authorization = "/http/headers/x.auth"
        "#,
    )
    .unwrap();
    let mut p = common::pipeline_with(PipelineConfig {
        format: Format::Custom,
        mapping: Some(Mapping::compile(&cfg).unwrap()),
        verify: verifier(),
        ..PipelineConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.log");
    std::fs::write(&path, reshaped).unwrap();
    let got = render(&common::run_file(&mut p, &path));
    let want = std::fs::read_to_string(common::fixture("canonical.decisions.jsonl")).unwrap();
    assert_eq!(got, want);
    assert_eq!(p.stats.skipped.get("invalid_json"), Some(&2), "{:?}", p.stats.skipped);
    assert_eq!(p.stats.token_errors.get("token_not_three_segments"), Some(&1));
}

/// Without a JWKS (and no gateway attestation in the fixtures), the same requests revoke
/// nothing: the alerts remain, every revocation (and so every use of a revoked token) goes.
#[test]
fn without_a_jwks_the_fixtures_revoke_nothing() {
    for (name, format) in FORMATS {
        let mut p = common::pipeline(*format);
        let got = common::run_file(&mut p, &common::fixture(&format!("{name}.log")));
        let with_jwks = common::run_file(&mut pipeline(*format), &common::fixture(&format!("{name}.log")));
        let alerts = |ds: &[tokenwatch_core::decision::Decision]| -> Vec<String> {
            ds.iter()
                .filter(|d| d.action == tokenwatch_core::rules::Action::Alert && &*d.rule != "revoked-token-used")
                .map(|d| format!("{} {:?}", d.rule, d.token_id))
                .collect()
        };
        assert!(
            got.iter()
                .all(|d| d.action == tokenwatch_core::rules::Action::Alert && &*d.rule != "revoked-token-used"),
            "{name}: {}",
            render(&got)
        );
        assert_eq!(alerts(&got), alerts(&with_jwks), "{name}");
        assert_eq!(got.len(), 3, "{name}: {}", render(&got));
        assert_eq!(p.stats.authenticated, 0, "{name}");
    }
}

/// The posture rules (issue 14) in every format that logs the scheme: the configuration
/// (`[verify] issuers`, `[audiences]`, `[posture]`) goes through the service's own config
/// loading, and each posture rule fires exactly once, on the request made to trigger it.
#[test]
fn posture_rules_fire_in_every_format_that_logs_the_scheme() {
    let loaded = tokenwatch::config::Config::load(&common::fixture("posture/tokenwatch.toml")).unwrap();
    let want_fired = [
        ("weak-algorithm", "tok-hs-1"),
        ("unknown-issuer-accepted", "tok-partner-1"),
        ("audience-mismatch", "tok-aud-1"),
        ("invalid-signature-accepted", "tok-forged-1"),
        ("sensitive-claims", "tok-pii-1"),
        ("token-over-http", "tok-http-1"),
        ("stale-signing-key", "tok-olga-2"),
    ];
    for (name, format) in FORMATS {
        let cfg = PipelineConfig {
            format: *format,
            ..loaded.pipeline().unwrap()
        };
        let mut p = common::pipeline_with(cfg);
        let ds = common::run_file(&mut p, &common::fixture(&format!("posture/{name}.log")));
        let posture: Vec<(&str, &str)> = ds
            .iter()
            .filter(|d| want_fired.iter().any(|(r, _)| **r == *d.rule))
            .map(|d| (&*d.rule, d.token_id.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            posture, want_fired,
            "{name}: the posture findings, in the order of the requests"
        );
        let got = render(&ds);
        let golden = common::fixture(&format!("posture/{name}.decisions.jsonl"));
        if std::env::var_os("TOKENWATCH_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(got, want, "{name}: decisions differ from {}", golden.display());
    }
}
