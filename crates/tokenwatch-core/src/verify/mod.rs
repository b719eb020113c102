//! Evidence: whether a token's signature was checked, by tokenwatch or by the gateway.
//!
//! A revocation acts against a person, so it must rest on evidence that the token is genuine,
//! never on text an attacker can write into a request. Gateways log the Authorization header of
//! requests nobody verified (unmatched routes, CORS preflights, health checks, optional-auth
//! routes), so "the status was not 401" proves nothing. Two facts are computed instead:
//!
//! - `verified`: tokenwatch checked the signature itself with a **public** key of a JWKS
//!   ([`Verifier`]). Each distinct token is verified once: the token cache keeps the result.
//!   `exp`/`nbf` are not part of it (an expired token with a valid signature is verified, and
//!   expired: the rules decide what that means).
//! - `authenticated` ([`crate::input`]): verified, or the gateway attested this very token
//!   (its logged claims match the raw token on the same line).
//!
//! Revoking rules must require `authenticated: true` (checked when rules load).

pub mod jwks;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;

use crate::token::{RawToken, TokenInfo};
use jwks::{JwksError, Key, Location, Stamp};

/// Keys tried for a token without a `kid` (a JWKS normally holds one or two current keys).
const MAX_KEYS_TRIED: usize = 4;

/// The outcome of checking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    /// Keys were there for it, and none verifies it: the signature is invalid.
    Failed,
    /// It cannot be checked: no JWKS for its issuer, or no public-key algorithm (HS*,
    /// `none`, unknown). Nothing is known of its signature.
    Unchecked,
    /// It names a key id no JWKS holds, and the JWKS could not be looked at again just now
    /// (a look is rate-limited): worth checking again once the keys change.
    UnknownKey,
    /// It names a key id that none of its issuer's JWKS holds, read at or after this check:
    /// the issuer does not publish that key. Counted as an invalid signature, and still
    /// checked again on later uses, so a key published late turns it into `Verified`.
    KeyNotPublished,
}

impl Verdict {
    /// The signature is known to be bad: no key verifies it, or its key is not published.
    pub fn invalid(self) -> bool {
        matches!(self, Verdict::Failed | Verdict::KeyNotPublished)
    }

    /// Worth checking again on a later use: the key id is (still) in no JWKS.
    pub fn retry(self) -> bool {
        matches!(self, Verdict::UnknownKey | Verdict::KeyNotPublished)
    }
}

/// What [`Verifier::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// The keys were replaced by what the source holds now.
    Reloaded,
    /// The source was looked at and holds what was read before (a file whose stamp did not
    /// change; a document held in memory).
    Unchanged,
    /// No look: too soon after the last one, another thread is looking, or it failed.
    Skipped,
}

/// One JWKS: its current keys and when it may be read again.
struct Source {
    loc: Location,
    keys: RwLock<Arc<[Key]>>,
    refresh: Mutex<Refresh>,
}

struct Refresh {
    /// The last look for unknown key ids (a file's stamp, a URL's fetch).
    last_check: Option<Instant>,
    stamp: Option<Stamp>,
}

/// How often a JWKS file's stamp is looked at for unknown key ids.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Verifies token signatures with the public keys of one or more JWKS, global or per issuer.
/// Shared by every decoding thread; keys rotate without a restart.
pub struct Verifier {
    global: Vec<Source>,
    by_issuer: HashMap<Box<str>, Vec<Source>>,
    refetch_every: Duration,
    errors: AtomicU64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locs = |v: &[Source]| v.iter().map(|s| s.loc.to_string()).collect::<Vec<_>>();
        f.debug_struct("Verifier")
            .field("global", &locs(&self.global))
            .field("issuers", &self.by_issuer.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where the keys come from: `[verify]` in the config, `--jwks` on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyConfig {
    pub jwks: Vec<String>,
    /// Issuer → its JWKS: a token whose `iss` is listed is verified with these keys only.
    pub issuers: Vec<(String, String)>,
}

impl VerifyConfig {
    pub fn is_empty(&self) -> bool {
        self.jwks.is_empty() && self.issuers.is_empty()
    }
}

impl Verifier {
    /// Reads every JWKS now; one that cannot be read is an error naming it.
    pub fn load(cfg: &VerifyConfig) -> Result<Verifier, JwksError> {
        let source = |s: &str| -> Result<Source, JwksError> {
            let loc = Location::parse(s);
            let (keys, stamp) = jwks::load(&loc)?;
            Ok(Source {
                loc,
                keys: RwLock::new(keys.into()),
                refresh: Mutex::new(Refresh {
                    last_check: None,
                    stamp,
                }),
            })
        };
        let mut by_issuer: HashMap<Box<str>, Vec<Source>> = HashMap::new();
        for (iss, loc) in &cfg.issuers {
            by_issuer.entry(iss.as_str().into()).or_default().push(source(loc)?);
        }
        Ok(Verifier {
            global: cfg.jwks.iter().map(|s| source(s)).collect::<Result<_, _>>()?,
            by_issuer,
            refetch_every: jwks::REFETCH_EVERY,
            errors: AtomicU64::new(0),
        })
    }

    /// A verifier over one JWKS document held in memory (the rule tests' own key), named
    /// `name` in messages and never read again.
    pub fn from_document(name: &str, bytes: &[u8]) -> Result<Verifier, JwksError> {
        Ok(Verifier {
            global: vec![memory_source(name, bytes)?],
            by_issuer: HashMap::new(),
            refetch_every: jwks::REFETCH_EVERY,
            errors: AtomicU64::new(0),
        })
    }

    /// A verifier over JWKS documents held in memory, one per issuer, as `[verify] issuers`
    /// would configure them (the generator's keys); each named `name` in messages.
    pub fn from_issuer_documents(name: &str, issuers: &[(String, String)]) -> Result<Verifier, JwksError> {
        let mut by_issuer: HashMap<Box<str>, Vec<Source>> = HashMap::new();
        for (iss, doc) in issuers {
            let source = memory_source(&format!("{name} for {iss}"), doc.as_bytes())?;
            by_issuer.entry(iss.as_str().into()).or_default().push(source);
        }
        Ok(Verifier {
            global: Vec::new(),
            by_issuer,
            refetch_every: jwks::REFETCH_EVERY,
            errors: AtomicU64::new(0),
        })
    }

    /// The shortest time between fetches of a JWKS URL for unknown key ids (tests shorten it).
    pub fn with_refetch_every(mut self, every: Duration) -> Self {
        self.refetch_every = every;
        self
    }

    /// (issuer, kid) of every key of the per-issuer JWKS, in issuer order.
    pub fn issuer_kids(&self) -> Vec<(Box<str>, Box<str>)> {
        let mut out = Vec::new();
        let mut issuers: Vec<_> = self.by_issuer.iter().collect();
        issuers.sort_by(|a, b| a.0.cmp(b.0));
        for (iss, sources) in issuers {
            for s in sources {
                let Ok(keys) = s.keys.read() else { continue };
                out.extend(keys.iter().filter_map(|k| Some((iss.clone(), k.kid.clone()?))));
            }
        }
        out
    }

    /// JWKS reads and fetches that failed after the start (the last good keys stay in use).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Checks the signature of `raw`, whose decoded header and claims are `info`.
    pub fn verify(&self, raw: RawToken<'_>, info: &TokenInfo) -> Verdict {
        let token = raw.expose();
        let (Some(alg), Some((message, signature))) = (signing_alg(info), token.rsplit_once('.')) else {
            return Verdict::Unchecked;
        };
        if info.unsigned || signature.is_empty() {
            return Verdict::Unchecked;
        }
        let sources = match info.iss.as_deref().and_then(|iss| self.by_issuer.get(iss)) {
            Some(s) => s.as_slice(),
            None => self.global.as_slice(),
        };
        if sources.is_empty() {
            return Verdict::Unchecked;
        }
        let kid = info.kid.as_deref();
        let mut known_kid = false;
        for s in sources {
            match check(s, kid, alg, message, signature) {
                Verdict::Verified => return Verdict::Verified,
                Verdict::Failed => known_kid = true,
                _ => {}
            }
        }
        if known_kid || kid.is_none() {
            return Verdict::Failed;
        }
        self.check_again(sources, kid, alg, message, signature)
    }

    /// A key id nobody holds: the issuer may have rotated its keys, or the `kid` is made up.
    /// Each source is looked at again (rate-limited); if every one was looked at now and
    /// none holds the key, the issuer does not publish it ([`Verdict::KeyNotPublished`]).
    /// Issuers publish a key before they sign with it, so a gateway that accepted such a
    /// token used a key nobody publishes, or none; a JWKS that lags behind the gateway's
    /// copy is the one false alarm, and it clears on a later use once the key appears.
    fn check_again(
        &self,
        sources: &[Source],
        kid: Option<&str>,
        alg: Algorithm,
        message: &str,
        signature: &str,
    ) -> Verdict {
        let mut verdict = Verdict::UnknownKey;
        let mut looked_at_all = true;
        for s in sources {
            match self.refresh(s) {
                Look::Reloaded => match check(s, kid, alg, message, signature) {
                    Verdict::Verified => return Verdict::Verified,
                    Verdict::Failed => verdict = Verdict::Failed,
                    _ => {}
                },
                Look::Unchanged => {}
                Look::Skipped => looked_at_all = false,
            }
        }
        if verdict == Verdict::UnknownKey && looked_at_all {
            Verdict::KeyNotPublished
        } else {
            verdict
        }
    }

    /// Reads a JWKS again when it may have changed: a file whose stamp changed (looked at
    /// once a second at most), a URL not fetched for unknown keys within `refetch_every`.
    fn refresh(&self, s: &Source) -> Look {
        // Another thread refreshing this source: use what it finds next time.
        let Ok(mut r) = s.refresh.try_lock() else {
            return Look::Skipped;
        };
        let every = match s.loc {
            Location::File(_) => self.refetch_every.min(FILE_CHECK_EVERY),
            Location::Url(_) => self.refetch_every,
        };
        if r.last_check.is_some_and(|t| t.elapsed() < every) {
            return Look::Skipped;
        }
        r.last_check = Some(Instant::now());
        if let Location::File(p) = &s.loc {
            let stamp = jwks::file_stamp(p);
            // (A document held in memory has no stamp, then or now.)
            if stamp == r.stamp {
                return Look::Unchanged;
            }
            if stamp.is_none() {
                return Look::Skipped;
            }
            r.stamp = stamp;
        }
        match jwks::load(&s.loc) {
            Ok((keys, _)) => {
                if let Ok(mut k) = s.keys.write() {
                    *k = keys.into();
                }
                tracing::info!(jwks = %s.loc, "JWKS keys reloaded for an unknown key id");
                Look::Reloaded
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "JWKS reload failed; keeping its last good keys");
                Look::Skipped
            }
        }
    }
}

/// A JWKS document held in memory: it has no stamp, so it is never read again, and every look
/// at it finds it unchanged.
fn memory_source(name: &str, bytes: &[u8]) -> Result<Source, JwksError> {
    let loc = Location::File(name.into());
    let keys = jwks::parse(&loc, bytes)?;
    Ok(Source {
        loc,
        keys: RwLock::new(keys.into()),
        refresh: Mutex::new(Refresh {
            last_check: None,
            stamp: None,
        }),
    })
}

/// Checks one source: `UnknownKey` when it holds no key with the token's `kid`.
fn check(s: &Source, kid: Option<&str>, alg: Algorithm, message: &str, signature: &str) -> Verdict {
    let keys = match s.keys.read() {
        Ok(k) => k.clone(),
        Err(_) => return Verdict::Failed,
    };
    let mut candidates = keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .peekable();
    if candidates.peek().is_none() {
        return Verdict::UnknownKey;
    }
    let ok = candidates
        .filter(|k| k.algs.contains(&alg))
        .take(MAX_KEYS_TRIED)
        .any(|k| jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg).unwrap_or(false));
    if ok {
        Verdict::Verified
    } else {
        Verdict::Failed
    }
}

/// The token header's `alg`, when it names a public-key algorithm tokenwatch verifies. It only
/// selects among the algorithms the chosen key allows ([`jwks::key_algorithms`]).
fn signing_alg(info: &TokenInfo) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match info.alg.as_deref()? {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

/// The warning printed once at start when nothing can make an event `authenticated` that
/// tokenwatch knows of: no JWKS, and no custom mapping with an attestation path. (The preset
/// formats attest only when the gateway logs it: envoy's `jwt_payload`, kong's `jwt_claims` or
/// credential, canonical's `authenticated`.)
pub fn evidence_warning(verify: bool, attested_by_mapping: bool) -> Option<String> {
    (!verify && !attested_by_mapping).then(|| {
        "no JWKS configured (--jwks PATH_OR_URL or [verify] jwks in the config): rules that revoke \
         fire only on events whose gateway attests the token (envoy `jwt_payload`, kong \
         `jwt_claims` or an authenticated credential, canonical `authenticated: true`, or an \
         `authenticated` path in [input.mapping]); without either, nothing is revoked and \
         tokenwatch_authenticated_events_total stays 0"
            .to_string()
    })
}
