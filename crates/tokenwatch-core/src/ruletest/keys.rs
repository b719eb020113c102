//! The rule tests' own signing key: tokens in test files are written as claims and signed
//! here, so nobody ever pastes a real token into a test file.
//!
//! The key is a throw-away RSA key shipped with the source (`test-signing-key.pem`), trusted
//! by nothing but rule tests: signature verification, when it runs in a rule test, is handed
//! [`jwks`] and nothing else. `forged: true` in a test gives a token with the right header and
//! claims and a signature this key never made.

use std::collections::HashMap;

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::token::encode_unsigned_parts;

const PEM: &[u8] = include_bytes!("test-signing-key.pem");

/// The `kid` of the test key, in every signed test token's header.
pub(crate) const KID: &str = "tokenwatch-rule-tests";

fn key() -> EncodingKey {
    EncodingKey::from_rsa_pem(PEM).expect("the shipped rule-test key is a valid RSA key")
}

/// The public JWKS that verifies the tokens of rule tests: the one set of keys a signature
/// check must trust while `tokenwatch test` runs.
pub fn jwks() -> JwkSet {
    let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::RS256).expect("an RSA key has a public JWK");
    jwk.common.key_id = Some(KID.into());
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    JwkSet { keys: vec![jwk] }
}

/// The verifier that trusts exactly [`jwks`], built once: rule tests' signed tokens are
/// `verified` (so revoking rules may fire on them), forged ones are not.
pub fn verifier() -> std::sync::Arc<crate::verify::Verifier> {
    static V: std::sync::OnceLock<std::sync::Arc<crate::verify::Verifier>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let doc = serde_json::to_vec(&jwks()).expect("a JWKS serializes");
        std::sync::Arc::new(
            crate::verify::Verifier::from_document("<rule tests' key>", &doc).expect("the rule tests' JWKS is valid"),
        )
    })
    .clone()
}

/// How a test token is signed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Signature {
    /// RS256 with the test key.
    Valid,
    /// RS256 header, a signature of the right length that the key never made.
    Forged,
    /// `alg: none` and an empty signature segment.
    Unsigned,
    /// Another `alg` (`alg: HS256`, `alg: XS256`): HS256/384/512 are signed with a test
    /// secret (which no JWKS can verify: a symmetric key is no public key), anything else gets
    /// a signature of arbitrary bytes.
    Other(String),
}

/// The shared secret of `alg: HS*` test tokens.
const HMAC_SECRET: &[u8] = b"tokenwatch-rule-tests-hmac-secret";

/// Signs claims, once per distinct (claims, signature) pair: RSA signing is the slow part of
/// building a test, and cases reuse tokens.
pub struct Signer {
    key: EncodingKey,
    done: HashMap<(String, Signature), String>,
}

impl Default for Signer {
    fn default() -> Self {
        Signer {
            key: key(),
            done: HashMap::new(),
        }
    }
}

impl Signer {
    pub fn sign(&mut self, claims: &serde_json::Value, how: Signature) -> String {
        let memo = (claims.to_string(), how.clone());
        if let Some(t) = self.done.get(&memo) {
            return t.clone();
        }
        let token = match how {
            Signature::Other(alg) => other_alg(&alg, claims),
            Signature::Unsigned => {
                encode_unsigned_parts(&serde_json::json!({"alg": "none", "typ": "JWT"}), claims, b"")
            }
            Signature::Valid | Signature::Forged => {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(KID.into());
                let t = jsonwebtoken::encode(&header, claims, &self.key).expect("JSON claims always sign");
                if how == Signature::Forged {
                    forge(&t)
                } else {
                    t
                }
            }
        };
        self.done.insert(memo, token.clone());
        token
    }
}

/// A token of any other `alg`, with the test key id.
fn other_alg(alg: &str, claims: &serde_json::Value) -> String {
    let hs = match alg {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        _ => None,
    };
    match hs {
        Some(a) => {
            let mut header = Header::new(a);
            header.kid = Some(KID.into());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(HMAC_SECRET))
                .expect("JSON claims always sign")
        }
        None => encode_unsigned_parts(
            &serde_json::json!({"alg": alg, "typ": "JWT", "kid": KID}),
            claims,
            b"a-signature-of-an-unregistered-algorithm",
        ),
    }
}

/// The same header and claims with a signature of the same length made of other bytes.
fn forge(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').unwrap_or((token, ""));
    let fake: String = sig.chars().map(|c| if c == 'A' { 'B' } else { 'A' }).collect();
    format!("{signed}.{fake}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};
    use serde_json::json;

    fn verify(token: &str) -> bool {
        let set = jwks();
        let jwk = set.find(KID).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).is_ok()
    }

    #[test]
    fn signed_tokens_verify_with_the_published_jwks_and_forged_ones_do_not() {
        let mut s = Signer::default();
        let claims = json!({"jti": "t1", "sub": "alice"});
        let good = s.sign(&claims, Signature::Valid);
        assert!(verify(&good));
        let forged = s.sign(&claims, Signature::Forged);
        assert_eq!(forged.len(), good.len());
        assert_eq!(forged.rsplit_once('.').unwrap().0, good.rsplit_once('.').unwrap().0);
        assert!(!verify(&forged));
        let unsigned = s.sign(&claims, Signature::Unsigned);
        assert!(unsigned.ends_with('.') && !verify(&unsigned));
        // decoded by tokenwatch as the same token id
        let info = crate::token::decode(crate::token::RawToken::new(&good), &[]).unwrap();
        assert_eq!(&*info.token_id, "t1");
        assert_eq!(info.kid.as_deref(), Some(KID));
    }
}
