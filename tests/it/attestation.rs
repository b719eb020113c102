//! Gateway attestation, per format: the gateway's word that it verified the token counts only
//! for the token on the same line (its logged claims must be that token's: same iss, sub, jti,
//! and exp where both have one), never for a token taken from the URL; a mismatch is
//! unauthenticated and counted.

use crate::common;
use crate::support::keys;

use keys::{claims, forged, ISS, T0};
use serde_json::{json, Value};
use tokenwatch_core::input::mapping::{Mapping, MappingConfig};
use tokenwatch_core::input::{Format, Parser};
use tokenwatch_core::pipeline::PipelineConfig;
use tokenwatch_core::token::TokenCache;

/// A token no key made: only the gateway's word can make it authenticated.
fn token(sub: &str, jti: &str) -> (String, Value) {
    let c = claims(sub, jti, T0);
    (forged(&json!({"alg": "RS256", "kid": "k1"}), &c), c)
}

/// (authenticated, attestation mismatch) of one line.
fn parse(format: Format, mapping: Option<Mapping>, line: &Value) -> (bool, bool) {
    let p = Parser::new(format, mapping).unwrap();
    let mut cache = TokenCache::new(vec![]);
    let text = line.to_string();
    let parsed = p.parse(text.as_bytes(), &mut cache).unwrap();
    assert!(parsed.event.token.is_some(), "{line}");
    (parsed.event.authenticated, parsed.attestation_mismatch)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn canonical_attests_with_its_authenticated_field() {
    let (t, c) = token("alice", "a-1");
    let (_, other) = token("mallory", "m-1");
    let base = json!({"ts": T0, "path": "/a", "status": 200, "authorization": bearer(&t)});
    let with = |extra: Value| {
        let mut l = base.clone();
        l.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        parse(Format::Canonical, None, &l)
    };
    assert_eq!(with(json!({})), (false, false), "no word from the gateway");
    assert_eq!(with(json!({"authenticated": true})), (true, false));
    assert_eq!(with(json!({"authenticated": "true"})), (true, false));
    assert_eq!(with(json!({"authenticated": false})), (false, false));
    assert_eq!(with(json!({"authenticated": "maybe"})), (false, false));
    assert_eq!(with(json!({"authenticated": true, "jwt_claims": c})), (true, false));
    assert_eq!(with(json!({"authenticated": true, "jwt_claims": other})), (false, true));
    // canonical's jwt_claims alone are not the gateway's word
    assert_eq!(with(json!({"jwt_claims": c})), (false, false));
}

#[test]
fn envoy_attests_with_its_verified_payload() {
    let (t, c) = token("alice", "a-1");
    let (_, other) = token("mallory", "m-1");
    let line = |auth: Option<&str>, payload: Option<&Value>| {
        let mut l = json!({"start_time": "2026-11-29T00:00:00Z", "path": "/a", "response_code": 200});
        if let Some(a) = auth {
            l["authorization"] = json!(bearer(a));
        }
        if let Some(p) = payload {
            l["jwt_payload"] = p.clone();
        }
        parse(Format::Envoy, None, &l)
    };
    assert_eq!(
        line(Some(&t), None),
        (false, false),
        "allow_missing_or_failed: no payload"
    );
    assert_eq!(line(Some(&t), Some(&c)), (true, false));
    assert_eq!(
        line(Some(&t), Some(&other)),
        (false, true),
        "the payload of another token"
    );
    assert_eq!(line(None, Some(&c)), (true, false), "the payload alone");
    // same iss/sub/jti but another exp: another token
    let mut later = c.clone();
    later["exp"] = json!(T0 + 1);
    assert_eq!(line(Some(&t), Some(&later)), (false, true));
    // a victim's jti on a forged header, next to the attacker's own verified payload that has no jti
    let (victim, _) = token("victim", "victim-jti");
    let no_jti = json!({"iss": ISS, "sub": "victim", "exp": T0 + 900});
    assert_eq!(line(Some(&victim), Some(&no_jti)), (false, true));
}

#[test]
fn kong_attests_with_jwt_claims_or_an_authenticated_credential() {
    let (t, c) = token("alice", "a-1");
    let (_, other) = token("mallory", "m-1");
    let line = |extra: Value| {
        let mut l = json!({"started_at": T0 * 1000, "client_ip": "198.51.100.7",
            "request": {"method": "GET", "uri": "/a", "headers": {"authorization": bearer(&t)}},
            "response": {"status": 200}});
        l.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        parse(Format::Kong, None, &l)
    };
    assert_eq!(line(json!({})), (false, false));
    assert_eq!(line(json!({"jwt_claims": c})), (true, false));
    assert_eq!(line(json!({"jwt_claims": other})), (false, true));
    assert_eq!(
        line(json!({"authenticated_entity": {"id": "cred-1"}, "consumer": {"username": "alice"}})),
        (true, false)
    );
    // the anonymous consumer of an optional-auth route: no credential
    assert_eq!(line(json!({"consumer": {"username": "anonymous"}})), (false, false));
    assert_eq!(line(json!({"authenticated_entity": null})), (false, false));
}

#[test]
fn a_custom_mapping_attests_through_its_authenticated_path() {
    let cfg: MappingConfig = toml::from_str(
        "ts = \"time\"\nstatus = \"code\"\nauthorization = \"auth\"\njwt_claims = \"claims\"\nauthenticated = \"forward_auth.ok\"\n",
    )
    .unwrap();
    let m = Mapping::compile(&cfg).unwrap();
    let (t, c) = token("alice", "a-1");
    let (_, other) = token("mallory", "m-1");
    let line = |ok: Value, claims: Option<&Value>| {
        let mut l = json!({"time": T0, "code": 200, "auth": bearer(&t), "forward_auth": {"ok": ok}});
        if let Some(c) = claims {
            l["claims"] = c.clone();
        }
        parse(Format::Custom, Some(m.clone()), &l)
    };
    assert_eq!(line(json!(true), None), (true, false));
    assert_eq!(line(json!("yes"), None), (true, false));
    assert_eq!(line(json!("false"), None), (false, false));
    assert_eq!(line(json!(null), None), (false, false));
    assert_eq!(line(json!(true), Some(&c)), (true, false));
    assert_eq!(line(json!(true), Some(&other)), (false, true));
    // a mapping without the path attests nothing
    let plain: MappingConfig = toml::from_str("ts = \"time\"\nauthorization = \"auth\"\n").unwrap();
    let l = json!({"time": T0, "auth": bearer(&t), "forward_auth": {"ok": true}});
    assert_eq!(
        parse(Format::Custom, Some(Mapping::compile(&plain).unwrap()), &l),
        (false, false)
    );
}

#[test]
fn a_token_from_the_url_is_never_attested() {
    let (t, _) = token("alice", "a-1");
    let (u, _) = token("victim", "victim-jti");
    let p = Parser::new(Format::Canonical, None).unwrap();
    let mut cache = TokenCache::new(vec![]);
    // only in the URL, with the gateway's word for the line
    let l = json!({"ts": T0, "status": 200, "authenticated": true, "path": format!("/x?access_token={u}")});
    let text = l.to_string();
    let e = p.parse(text.as_bytes(), &mut cache).unwrap().event;
    assert!(e.token_in_url && !e.authenticated);
    // next to an attested header token: the URL's is another token, unattested
    let l = json!({"ts": T0, "status": 200, "authenticated": true, "authorization": bearer(&t),
                   "path": format!("/x?x={u}")});
    let text = l.to_string();
    let parsed = p.parse(text.as_bytes(), &mut cache).unwrap();
    assert!(parsed.event.authenticated && !parsed.event.token_in_url);
    assert_eq!(&*parsed.url_token.unwrap().token_id, "victim-jti");
}

/// End to end with the default rules and no JWKS: the gateway's attestation alone lets the
/// genuine replay revoke, and forged copies beside it (payload of another token) do not count.
#[test]
fn attested_use_revokes_and_mismatched_attestation_does_not() {
    let mut p = common::pipeline_with(PipelineConfig {
        format: Format::Envoy,
        ..PipelineConfig::default()
    });
    let (bob, bob_claims) = token("bob", "tok-bob-1");
    let (victim, _) = token("victim", "victim-jti");
    let (_, mallory_claims) = token("mallory", "m-1");
    let mut out = Vec::new();
    for (i, ip) in ["198.51.100.7", "203.0.113.9", "192.0.2.44"].iter().enumerate() {
        let ts = format!("2026-11-29T00:0{i}:00Z");
        let genuine = json!({"start_time": ts, "client_ip": ip, "path": "/a", "response_code": 200,
                             "authorization": bearer(&bob), "jwt_payload": bob_claims});
        let fake = json!({"start_time": ts, "client_ip": ip, "path": "/a", "response_code": 200,
                          "authorization": bearer(&victim), "jwt_payload": mallory_claims});
        p.process_line(genuine.to_string().as_bytes(), &mut out);
        p.process_line(fake.to_string().as_bytes(), &mut out);
    }
    let revoked: Vec<_> = out
        .iter()
        .map(|d| (d.rule.to_string(), d.token_id.clone().unwrap()))
        .collect();
    assert_eq!(revoked, vec![("token-replay".to_string(), "tok-bob-1".into())]);
    assert_eq!(p.stats.authenticated, 3);
    assert_eq!(p.stats.attestation_mismatches, 3);
}
