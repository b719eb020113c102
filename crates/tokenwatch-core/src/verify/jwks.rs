//! JWKS sources: public keys from a file or a URL, read at start and again when a token names a
//! key they do not hold.
//!
//! A JWKS holds public keys only: a symmetric (`oct`) key is refused, since a shared secret is
//! what tokenwatch promises never to need. Each key's own `kty` (and `crv`, and `alg` when it
//! has one) decides which algorithms it verifies, so a token's header can never pick a weaker
//! algorithm for a key (an HS256 token naming an RSA key's `kid` does not verify).
//!
//! Bounds: a JWKS is at most [`MAX_JWKS_BYTES`] and [`MAX_KEYS`] keys; a URL is fetched with a
//! short timeout, and again (on an unknown `kid`) at most once per [`REFETCH_EVERY`]; a file is
//! read again only when its size or modification time changed.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A JWKS larger than this is refused.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;
/// Keys kept from one JWKS.
pub(crate) const MAX_KEYS: usize = 256;
/// The shortest time between two fetches of a JWKS URL for unknown key ids.
pub(crate) const REFETCH_EVERY: Duration = Duration::from_secs(60);
/// How long a JWKS URL may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a JWKS lives: `http(s)://...` is a URL, anything else a file path.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Url(String),
}

impl Location {
    pub fn parse(s: &str) -> Location {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Location::Url(t.to_string())
        } else {
            Location::File(PathBuf::from(t))
        }
    }
}

/// A URL is shown without its user information (a password may be in it).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Url(u) => {
                let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
                let host_end = rest.find('/').unwrap_or(rest.len());
                let rest = match rest[..host_end].rfind('@') {
                    Some(at) => &rest[at + 1..],
                    None => rest,
                };
                write!(f, "{scheme}://{rest}")
            }
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Why a JWKS could not be used. Every message names the JWKS.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS {0}: cannot read: {1}")]
    Read(Location, std::io::Error),
    #[error("JWKS {0}: cannot fetch: {1}")]
    Fetch(Location, String),
    #[error("JWKS {0}: larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge(Location),
    #[error("JWKS {0}: not a JSON Web Key Set (an object with a `keys` list): {1}")]
    Json(Location, String),
    #[error("JWKS {0}: no usable public key (RSA, EC P-256 or P-384, Ed25519); {1} key(s) skipped")]
    NoKeys(Location, usize),
}

/// One public key and the algorithms it verifies.
pub struct Key {
    pub kid: Option<Box<str>>,
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

/// The algorithms a key verifies, decided by the key alone; empty for a key that verifies none
/// (a symmetric key, an encryption key, an unsupported curve).
pub(crate) fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Vec::new();
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![EdDSA],
        // `oct`: a shared secret, which tokenwatch never uses.
        _ => Vec::new(),
    };
    match jwk.common.key_algorithm {
        None => family,
        Some(ka) => match signing_alg(ka) {
            Some(a) if family.contains(&a) => vec![a],
            _ => Vec::new(),
        },
    }
}

fn signing_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm as A;
    Some(match ka {
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document. Keys that cannot verify anything are skipped; none usable is an
/// error.
pub(crate) fn parse(loc: &Location, bytes: &[u8]) -> Result<Vec<Key>, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge(loc.clone()));
    }
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(loc.clone(), e.to_string()))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for v in set.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            skipped += 1;
            continue;
        };
        let algs = key_algorithms(&jwk);
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) if !algs.is_empty() => keys.push(Key {
                kid: jwk.common.key_id.map(Into::into),
                algs,
                key,
            }),
            _ => skipped += 1,
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoKeys(loc.clone(), skipped));
    }
    Ok(keys)
}

/// A file's size and modification time: it is read again when they change.
pub(crate) type Stamp = (u64, Option<SystemTime>);

/// Reads a JWKS from its location; for a file, also its stamp.
pub(crate) fn load(loc: &Location) -> Result<(Vec<Key>, Option<Stamp>), JwksError> {
    match loc {
        Location::File(p) => {
            let bytes = std::fs::read(p).map_err(|e| JwksError::Read(loc.clone(), e))?;
            let stamp = file_stamp(p);
            Ok((parse(loc, &bytes)?, stamp))
        }
        Location::Url(u) => Ok((parse(loc, &fetch(loc, u)?)?, None)),
    }
}

pub(crate) fn file_stamp(p: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()))
}

fn fetch(loc: &Location, url: &str) -> Result<Vec<u8>, JwksError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .into();
    let fail = |e: ureq::Error| JwksError::Fetch(loc.clone(), e.to_string());
    let mut resp = agent.get(url).call().map_err(fail)?;
    resp.body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES as u64 + 1)
        .read_to_vec()
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let l = Location::parse("https://user:secret@idp.example.com/jwks.json");
        assert_eq!(l.to_string(), "https://idp.example.com/jwks.json");
        assert!(matches!(Location::parse("keys/jwks.json"), Location::File(_)));
    }

    #[test]
    fn only_public_signing_keys_are_kept() {
        let loc = Location::parse("t.json");
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "wrong-alg", "alg": "ES384", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "nonsense"}
        ]});
        let keys = parse(&loc, doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert_eq!(keys[0].algs, vec![Algorithm::ES256]);
        let e = parse(&loc, br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "JWKS t.json: no usable public key (RSA, EC P-256 or P-384, Ed25519); 1 key(s) skipped"
        );
        assert!(parse(&loc, b"[]")
            .unwrap_err()
            .to_string()
            .starts_with("JWKS t.json: not a JSON Web Key Set"));
    }
}
