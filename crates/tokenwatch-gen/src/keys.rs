//! The generator's signing keys, and the public JWKS that verifies its tokens.
//!
//! Every genuine token the generator mints carries a real signature, so that a verifier
//! (tokenwatch's own, or any JWT library given [`Keys::jwks`]) can tell the genuine tokens
//! from the forged decoys, which reuse a victim's ids under a signature that cannot verify.
//!
//! Two issuers, as a shop with its own identity provider and a partner programme might have:
//! `https://idp.example.com` signs RS256 with a 2,048-bit RSA key (browsers, the mobile app,
//! the CLI), `https://partners.example.com` signs ES256 with a P-256 key (partners' SDKs).
//! Both keys are derived from the seed, so a seed gives the same keys and the same bytes on
//! every run of one build, and [`super::jwks`] gives a seed's public keys without generating
//! any traffic. Each key's `kid` is its RFC 7638 thumbprint.
//!
//! What it costs: an RSA key takes ~0.2-0.5 s to generate, so keys are kept per seed for the
//! life of the process (a handful of seeds at most); a signature is made once per token (RS256
//! ~1.6 ms, ES256 ~0.2 ms in release), never per line.
//!
//! These are **test keys**: anyone who knows the seed can derive the private keys. Never
//! configure a real gateway or verifier to trust them.

use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::rand_core::{CryptoRng, RngCore};
use rsa::traits::PublicKeyParts as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::traffic::ClientKind;

/// The JWS algorithms the generator's issuers sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// Length of a signature in bytes (RSA-2048; P-256 `r || s`).
    pub(crate) fn signature_len(self) -> usize {
        match self {
            Alg::Rs256 => 256,
            Alg::Es256 => 64,
        }
    }
}

pub(crate) struct Issuer {
    pub iss: &'static str,
    pub alg: Alg,
}

pub(crate) const ISSUERS: [Issuer; 2] = [
    Issuer {
        iss: "https://idp.example.com",
        alg: Alg::Rs256,
    },
    Issuer {
        iss: "https://partners.example.com",
        alg: Alg::Es256,
    },
];

/// The issuer (an index into [`ISSUERS`]) of a kind of client's tokens.
pub(crate) fn issuer_for(kind: ClientKind) -> usize {
    match kind {
        ClientKind::Sdk => 1,
        ClientKind::Browser | ClientKind::MobileApp | ClientKind::Cli => 0,
    }
}

enum Secret {
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Ec(p256::ecdsa::SigningKey),
}

struct Key {
    kid: String,
    /// The public JWK, `kid` included.
    jwk: serde_json::Value,
    secret: Secret,
}

/// One signing key per issuer of [`ISSUERS`], in that order.
pub(crate) struct Keys {
    keys: Vec<Key>,
}

/// Seeds whose keys are kept (a few kB each): a run uses one, the tests a few dozen; past
/// this, the oldest is dropped and made again if it is asked for again.
const KEPT_SEEDS: usize = 32;

/// Keys by seed, oldest first.
type Kept = Mutex<Vec<(u64, Arc<Keys>)>>;

impl Keys {
    /// The keys of `seed`, made on first use and then kept.
    pub(crate) fn for_seed(seed: u64) -> Arc<Keys> {
        static KEPT: OnceLock<Kept> = OnceLock::new();
        let kept = KEPT.get_or_init(|| Mutex::new(Vec::new()));
        let find = |v: &[(u64, Arc<Keys>)]| v.iter().find(|(s, _)| *s == seed).map(|(_, k)| k.clone());
        if let Some(k) = kept.lock().ok().and_then(|v| find(&v)) {
            return k;
        }
        // Made outside the lock: another thread may make the same keys meanwhile, which only
        // costs time, since both are the same.
        let made = Arc::new(Keys::derive(seed));
        if let Ok(mut v) = kept.lock() {
            if let Some(k) = find(&v) {
                return k;
            }
            if v.len() >= KEPT_SEEDS {
                v.remove(0);
            }
            v.push((seed, made.clone()));
        }
        made
    }

    fn derive(seed: u64) -> Keys {
        let keys = ISSUERS
            .iter()
            .map(|issuer| {
                let mut stream = HashStream::new(seed, issuer.iss);
                match issuer.alg {
                    Alg::Rs256 => rsa_key(&mut stream),
                    Alg::Es256 => ec_key(&mut stream),
                }
            })
            .collect();
        Keys { keys }
    }

    pub(crate) fn kid(&self, issuer: usize) -> &str {
        &self.keys[issuer].kid
    }

    /// The JWS signature of `input` (`base64url(header) "." base64url(claims)`) with the key
    /// of `issuer`: RSASSA-PKCS1-v1_5 with SHA-256, or ECDSA P-256 `r || s`. Both are
    /// deterministic (RFC 6979 for ECDSA), so the same seed gives the same bytes.
    pub(crate) fn sign(&self, issuer: usize, input: &[u8]) -> Vec<u8> {
        match &self.keys[issuer].secret {
            Secret::Rsa(k) => k.sign(input).to_vec(),
            Secret::Ec(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_vec()
            }
        }
    }

    /// The public keys as a JWK Set: `{"keys": [...]}`.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        json!({ "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The public key of `issuer` alone, as a JWK Set.
    pub(crate) fn jwks_of(&self, issuer: usize) -> serde_json::Value {
        json!({ "keys": [self.keys[issuer].jwk.clone()] })
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK thumbprint of RFC 7638: SHA-256 of the required members, in this exact form.
fn thumbprint(canonical: &str) -> String {
    b64(&Sha256::digest(canonical.as_bytes()))
}

fn rsa_key(stream: &mut HashStream) -> Key {
    // Only a broken random source makes this fail; the stream is SHA-256.
    let private = rsa::RsaPrivateKey::new(stream, 2048).expect("RSA key generation from a hash stream");
    let (n, e) = (b64(&private.n().to_bytes_be()), b64(&private.e().to_bytes_be()));
    let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": n, "e": e});
    Key {
        kid,
        jwk,
        secret: Secret::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(private))),
    }
}

fn ec_key(stream: &mut HashStream) -> Key {
    // 32 bytes are a valid scalar unless they are 0 or at least the group order (odds ~2^-32).
    let secret = loop {
        let mut d = [0u8; 32];
        stream.fill_bytes(&mut d);
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&d) {
            break k;
        }
    };
    let point = secret.verifying_key().to_encoded_point(false);
    let coord = |c: Option<&p256::FieldBytes>| c.map(|c| b64(c)).unwrap_or_default();
    let (x, y) = (coord(point.x()), coord(point.y()));
    let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
    let jwk = json!({"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256", "x": x, "y": y});
    Key {
        kid,
        jwk,
        secret: Secret::Ec(secret),
    }
}

/// SHA-256 in counter mode over (seed, issuer): the deterministic byte stream keys are made
/// from. The xoshiro stream of [`super::rng`] would serve as well for test keys, but a hash
/// makes every bit of the key depend on the whole seed.
struct HashStream {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl HashStream {
    fn new(seed: u64, issuer: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"tokenwatch gen signing key\0");
        h.update(seed.to_le_bytes());
        h.update(issuer.as_bytes());
        HashStream {
            key: h.finalize().into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl RngCore for HashStream {
    fn next_u32(&mut self) -> u32 {
        rsa::rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rsa::rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.key);
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for HashStream {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_its_own_keys_every_time() {
        let (a, b) = (Keys::derive(1), Keys::for_seed(1));
        assert_eq!(a.jwks(), b.jwks());
        assert!(Arc::ptr_eq(&b, &Keys::for_seed(1)));
        let c = Keys::for_seed(2);
        for (i, issuer) in ISSUERS.iter().enumerate() {
            assert_ne!(a.kid(i), c.kid(i));
            assert_eq!(a.sign(i, b"h.p"), b.sign(i, b"h.p"));
            assert_eq!(a.sign(i, b"h.p").len(), issuer.alg.signature_len());
        }
    }

    #[test]
    fn the_jwks_holds_public_members_only() {
        let jwks = Keys::for_seed(1).jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for (k, want) in [("kty", "RSA"), ("alg", "RS256"), ("use", "sig")] {
            assert_eq!(keys[0][k], want);
        }
        for (k, want) in [("kty", "EC"), ("alg", "ES256"), ("crv", "P-256")] {
            assert_eq!(keys[1][k], want);
        }
        assert_eq!(keys[0]["e"], "AQAB");
        // 2,048-bit modulus: 256 bytes, 342 base64url characters.
        assert_eq!(keys[0]["n"].as_str().unwrap().len(), 342);
        assert_eq!(keys[1]["x"].as_str().unwrap().len(), 43);
        for k in keys {
            let members: Vec<&str> = k.as_object().unwrap().keys().map(std::string::String::as_str).collect();
            assert!(
                !members.iter().any(|m| ["d", "p", "q", "dp", "dq", "qi"].contains(m)),
                "{members:?}"
            );
            assert_eq!(k["kid"].as_str().unwrap().len(), 43);
        }
    }

    /// RFC 7638 section 3.1's example key and thumbprint.
    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(thumbprint(&canonical), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
