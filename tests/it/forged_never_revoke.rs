//! Property: with a JWKS configured and the default rules, tokens whose signatures do not
//! verify — random claims (victims' ids among them), any algorithm and key id, junk signatures
//! or real signatures moved onto other claims, in the header or the URL, with any status
//! (or none), any path and any networks — never revoke anything, and no event counts as
//! authenticated.

use crate::common;
use crate::support::keys;

use std::sync::{Arc, OnceLock};

use jsonwebtoken::Algorithm;
use keys::{ISS, T0};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokenwatch_core::pipeline::PipelineConfig;
use tokenwatch_core::verify::{Verifier, VerifyConfig};

/// Real signatures (each over other claims than the forgery's).
fn real_signatures() -> &'static [String] {
    static SIGS: OnceLock<Vec<String>> = OnceLock::new();
    SIGS.get_or_init(|| {
        [
            (Algorithm::RS256, "k1"),
            (Algorithm::ES256, "ec1"),
            (Algorithm::EdDSA, "ed1"),
        ]
        .iter()
        .map(|(alg, kid)| {
            let t = keys::sign(*alg, Some(kid), &keys::claims("someone", "real", T0));
            t.rsplit('.').next().unwrap().to_string()
        })
        .collect()
    })
}

fn verifier() -> Arc<Verifier> {
    static V: OnceLock<Arc<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        let cfg = VerifyConfig {
            jwks: vec![keys::jwks().to_str().unwrap().into()],
            issuers: Vec::new(),
        };
        Arc::new(Verifier::load(&cfg).unwrap())
    })
    .clone()
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn forged_token() -> impl Strategy<Value = String> {
    let header = (
        pick(&[
            "RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256", "none", "rs256", "",
        ]),
        pick(&["k1", "ec1", "ec384", "ed1", "unknown", ""]),
    );
    let claims = (
        pick(&[ISS, "https://other.example", ""]),
        pick(&["victim", "alice", "bob", ""]),
        pick(&["victim-jti", "tok-bob-1", "j-3", ""]),
        pick(&[T0 - 7200, T0 + 900, 0, 1_000_000_000_000_000]),
        any::<u8>(),
    );
    let sig = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (0..3usize).prop_map(|i| real_signatures()[i].as_bytes().to_vec()),
    ];
    (header, claims, sig).prop_map(|((alg, kid), (iss, sub, jti, exp, n), sig)| {
        let mut h = json!({});
        if !alg.is_empty() {
            h["alg"] = json!(alg);
        }
        if !kid.is_empty() {
            h["kid"] = json!(kid);
        }
        let mut c = json!({"iat": T0 - 60, "n": n});
        for (k, v) in [("iss", iss), ("sub", sub), ("jti", jti)] {
            if !v.is_empty() {
                c[k] = json!(v);
            }
        }
        if exp != 0 {
            c["exp"] = json!(exp);
        }
        let parts = tokenwatch_core::token::encode_unsigned_parts(&h, &c, b"");
        // a moved real signature is kept as its base64url text; junk is encoded
        match std::str::from_utf8(&sig) {
            Ok(s) if real_signatures().iter().any(|r| r == s) => format!("{parts}{s}"),
            _ => tokenwatch_core::token::encode_unsigned_parts(&h, &c, &sig),
        }
    })
}

fn line() -> impl Strategy<Value = (u32, Value)> {
    (
        0u32..600,
        forged_token(),
        pick(&[
            "198.51.100.7",
            "203.0.113.9",
            "192.0.2.44",
            "81.2.69.142",
            "175.16.199.5",
            "216.160.83.57",
            "2001:218::1",
        ]),
        prop_oneof![
            Just(None),
            (100u16..600).prop_map(Some),
            pick(&[200u16, 204, 404, 429, 500]).prop_map(Some)
        ],
        pick(&["GET", "OPTIONS", "POST", "HEAD"]),
        pick(&["/healthz", "/does-not-exist", "/api/v1/orders", "/"]),
        0u8..3,
    )
        .prop_map(|(gap, tok, ip, status, method, path, place)| {
            let mut l = json!({"client_ip": ip, "method": method, "path": path});
            if let Some(s) = status {
                l["status"] = json!(s);
            }
            // header, URL query, or both
            if place != 1 {
                l["authorization"] = json!(format!("Bearer {tok}"));
            }
            if place != 0 {
                l["path"] = json!(format!("{path}?access_token={tok}"));
            }
            (gap, l)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tokens_that_do_not_verify_never_revoke(lines in proptest::collection::vec(line(), 1..40)) {
        let mut p = common::pipeline_with(PipelineConfig {
            verify: Some(verifier()),
            ..PipelineConfig::default()
        });
        let mut out = Vec::new();
        let mut ts = T0;
        for (gap, mut l) in lines {
            ts += i64::from(gap);
            l["ts"] = json!(ts);
            p.process_line(l.to_string().as_bytes(), &mut out);
        }
        let revoked: Vec<_> = out.iter().filter(|d| d.action.as_str().starts_with("revoke")).collect();
        prop_assert!(revoked.is_empty(), "{revoked:?}");
        prop_assert_eq!(p.stats.authenticated, 0);
    }
}
