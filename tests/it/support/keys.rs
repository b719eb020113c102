//! Real tokens for the tests: signed with the committed test keys (tests/fixtures/keys/), whose
//! public halves are in `jwks.json`. Use with `use crate::support::keys;`.
#![allow(dead_code)]

use std::path::PathBuf;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

pub const ISS: &str = "https://idp.example.com";
/// 2026-11-29T00:00:00Z, the time of every test scenario.
pub const T0: i64 = 1_795_910_400;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

/// The JWKS with every test key's public half (kids `k1`, `ec1`, `ec384`, `ed1`).
pub fn jwks() -> PathBuf {
    dir().join("jwks.json")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// A token signed with the test key of `alg`'s family (HS*: a shared secret nobody published).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    use Algorithm::*;
    let key = match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
        ES256 => EncodingKey::from_ec_pem(&pem("ec256.pem")).unwrap(),
        ES384 => EncodingKey::from_ec_pem(&pem("ec384.pem")).unwrap(),
        EdDSA => EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
        HS256 | HS384 | HS512 => EncodingKey::from_secret(b"a shared secret"),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    encode(&h, claims, &key).unwrap()
}

/// An RS256 token of `k1`, the fixtures' key.
pub fn rs256(claims: &serde_json::Value) -> String {
    sign(Algorithm::RS256, Some("k1"), claims)
}

/// Claims of a 15-minute token of `sub` issued at `iat`.
pub fn claims(sub: &str, jti: &str, iat: i64) -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": sub, "jti": jti, "aud": "api", "iat": iat, "exp": iat + 900})
}

/// A forgery: any header and claims, a signature that verifies with no key.
pub fn forged(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    tokenwatch_core::token::encode_unsigned_parts(header, claims, b"junk-signature-that-no-key-made")
}
