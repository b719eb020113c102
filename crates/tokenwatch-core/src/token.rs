//! Token decoding: from a compact JWT (or a gateway's decoded claims) to [`TokenInfo`].
//!
//! Decoding needs no key: it reads the header and the claims the way any holder of the token
//! can. With a JWKS configured, the cache also verifies each distinct token's signature once,
//! with public keys only ([`crate::verify`]), and keeps the result in `TokenInfo::verified`. The raw token only ever lives inside
//! [`RawToken`], whose `Debug` prints nothing of it, and only while it is decoded; what
//! survives is [`TokenInfo`], which holds claims and a `token_id` but never the token itself.
//!
//! Tokens repeat across many requests, so [`TokenCache`] decodes each distinct token once and
//! hands out the shared result. It keys the cache by a randomly seeded 128-bit hash of the
//! token, so the cache does not keep the token either.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::heap::{alloc_bytes, table_bytes, table_growth};
use crate::verify::{Verdict, Verifier};

/// A compact JWT exactly as it appeared in the log. Printing it prints nothing of the token.
#[derive(Clone, Copy)]
pub struct RawToken<'a>(&'a str);

impl<'a> RawToken<'a> {
    /// Wraps a compact token; surrounding whitespace is removed.
    pub fn new(s: &'a str) -> Self {
        RawToken(s.trim())
    }

    /// Extracts the token from an `Authorization` header value: `Bearer <jwt>`, scheme
    /// case-insensitive. Other schemes (Basic, ...) carry no JWT.
    pub fn from_authorization(header: &'a str) -> Option<Self> {
        let h = header.trim();
        let (scheme, rest) = h.split_once(|c: char| c.is_ascii_whitespace())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let t = rest.trim();
        (!t.is_empty()).then_some(RawToken(t))
    }

    /// The token text. Only decoding code, and the generator's oracle (which needs to tell
    /// its own tokens apart), call this; nothing that logs, stores or reports does.
    pub fn expose(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for RawToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawToken(<redacted>)")
    }
}

/// Why a token could not be decoded. The messages never quote the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("token does not have three dot-separated segments")]
    NotThreeSegments,
    #[error("token header is not valid base64url")]
    HeaderBase64,
    #[error("token payload is not valid base64url")]
    PayloadBase64,
    #[error("token header is not a JSON object")]
    HeaderJson,
    #[error("token payload is not a JSON object")]
    PayloadJson,
    #[error("token is longer than [input] max_token_bytes")]
    TooLarge,
    #[error("an id-like claim (jti, iss, sub, kid, alg, aud) is longer than {MAX_ID_CLAIM_BYTES} bytes")]
    ClaimTooLarge,
}

/// By default, a compact token longer than this is not decoded (`token_too_large`): real
/// tokens are a few KiB at most, and decoding (base64, JSON) is work an attacker could make
/// large. Configurable as `[input] max_token_bytes`, within [`TOKEN_BYTES_RANGE`].
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The values `[input] max_token_bytes` may take: below 1 KiB real RS256 tokens with a few
/// claims would not decode; above 64 KiB no gateway forwards the header anyway.
pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=64 * 1024;
/// An id-like claim (`jti`, `iss`, `sub`, `kid`, `alg`, each `aud`) longer than this makes the
/// token undecodable (`claim_too_large`): such text ends up in state, decisions and Redis values.
pub(crate) const MAX_ID_CLAIM_BYTES: usize = 1024;

impl DecodeError {
    /// A short stable name for counters and summaries.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::NotThreeSegments => "token_not_three_segments",
            DecodeError::HeaderBase64 => "token_header_bad_base64",
            DecodeError::PayloadBase64 => "token_payload_bad_base64",
            DecodeError::HeaderJson => "token_header_not_json",
            DecodeError::PayloadJson => "token_payload_not_json",
            DecodeError::TooLarge => "token_too_large",
            DecodeError::ClaimTooLarge => "claim_too_large",
        }
    }
}

/// What tokenwatch knows about a token: its id and claims, never the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// `jti` when it is a non-empty string, otherwise `sha256:` + 32 hex digits of the token.
    pub token_id: Box<str>,
    /// `token_id` is the token's own `jti` (attacker-shaped text until verified), not a hash.
    pub id_is_jti: bool,
    // Issuer, subject, algorithm, key id and audience repeat across the tokens of a user or an
    // issuer: shared (`Arc`), and interned by [`TokenCache`], so that a cached token pays for
    // its own id and dates, not for copies of the same strings.
    pub iss: Option<Arc<str>>,
    pub sub: Option<Arc<str>>,
    /// `iss|sub`, or the token_id for a token without `sub`.
    pub subject: Arc<str>,
    pub alg: Option<Arc<str>>,
    pub kid: Option<Arc<str>>,
    pub aud: Arc<[Box<str>]>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    /// `alg` is `none` in any letter case, or the signature segment is empty.
    pub unsigned: bool,
    /// tokenwatch checked the signature with a public key of a configured JWKS
    /// ([`crate::verify`]); false without a JWKS, for claims logged by a gateway, and for HS*.
    pub verified: bool,
    /// Claims that the loaded rules refer to by name (`claim.NAME`), as strings or numbers.
    pub claims: Box<[(Box<str>, ClaimValue)]>,
    /// A JWKS held keys for it and none verified it ([`Verdict::Failed`]), or its `kid` is in
    /// none of its issuer's JWKS read after it was seen ([`Verdict::KeyNotPublished`]): a
    /// forged or tampered token, not merely one tokenwatch cannot check.
    pub signature_invalid: bool,
    /// The names of its claims that match `[posture] sensitive_claims` (names only, bounded:
    /// [`crate::posture::MAX_SENSITIVE_NAMES`]).
    pub sensitive_claims: Box<[Box<str>]>,
}

#[cfg(test)]
impl TokenInfo {
    /// A genuine RS256 token of `https://idp` with id `jti` and subject `sub`, no times, for
    /// unit tests: each changes the fields it is about with `..TokenInfo::test_token(..)`.
    pub(crate) fn test_token(jti: &str, sub: &str) -> TokenInfo {
        TokenInfo {
            id_is_jti: true,
            token_id: jti.into(),
            iss: Some("https://idp".into()),
            sub: Some(sub.into()),
            subject: format!("https://idp|{sub}").into(),
            alg: Some("RS256".into()),
            kid: None,
            aud: Arc::new([]),
            exp: None,
            iat: None,
            nbf: None,
            unsigned: false,
            verified: true,
            claims: Box::new([]),
            signature_invalid: false,
            sensitive_claims: Box::default(),
        }
    }
}

/// A scalar claim value kept for rules that filter on custom claims.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
}

impl TokenInfo {
    /// `exp - iat` in seconds, when both are present. Dates are range-limited when decoded
    /// ([`MAX_NUMERIC_DATE`]), and the subtraction saturates all the same, so a hostile pair
    /// can never wrap into a short (or negative) lifetime.
    pub fn lifetime(&self) -> Option<i64> {
        Some(self.exp?.saturating_sub(self.iat?))
    }

    /// The id of this token in the Redis blocklist: the first 32 hex digits of
    /// SHA-256(`iss` 0x00 `jti`) when the token has a string `jti`, else its `sha256:` /
    /// `claims:` id. Fixed length and hex (or one fixed prefix): no claim an attacker writes
    /// can shape a key name, and a `jti` is scoped by its issuer.
    pub fn token_revocation_key(&self) -> Box<str> {
        if self.id_is_jti {
            scoped_key(self.iss.as_deref().unwrap_or(""), &self.token_id)
        } else {
            self.token_id.clone()
        }
    }

    /// The id of this token's subject in the Redis blocklist: the first 32 hex digits of
    /// SHA-256(`iss` 0x00 `sub`), with the token id standing in for a missing `sub` (as in
    /// `subject`). Unlike `iss|sub`, no two (iss, sub) pairs share it.
    pub(crate) fn subject_revocation_key(&self) -> Box<str> {
        scoped_key(
            self.iss.as_deref().unwrap_or(""),
            self.sub.as_deref().unwrap_or(&self.token_id),
        )
    }

    /// A claim kept for the rules, by name.
    pub fn claim(&self, name: &str) -> Option<&ClaimValue> {
        self.claims.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "lenient_str")]
    alg: Option<Box<str>>,
    #[serde(default, deserialize_with = "lenient_str")]
    kid: Option<Box<str>>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "lenient_str")]
    iss: Option<Box<str>>,
    #[serde(default, deserialize_with = "lenient_str")]
    sub: Option<Box<str>>,
    /// Only a string is an id: a numeric `jti` is not, by the token_id rule.
    #[serde(default, deserialize_with = "string_only")]
    jti: Option<Box<str>>,
    #[serde(default, deserialize_with = "lenient_num")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "lenient_num")]
    iat: Option<i64>,
    #[serde(default, deserialize_with = "lenient_num")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "lenient_aud")]
    aud: Vec<Box<str>>,
}

/// Decodes a compact JWT of at most [`DEFAULT_MAX_TOKEN_BYTES`]. `wanted_claims` names the
/// extra claims the rules use.
pub fn decode(raw: RawToken<'_>, wanted_claims: &[Box<str>]) -> Result<TokenInfo, DecodeError> {
    decode_capped(raw, wanted_claims, DEFAULT_MAX_TOKEN_BYTES)
}

/// [`decode`], refusing a token longer than `max_bytes` (`token_too_large`) before any work.
pub fn decode_capped(
    raw: RawToken<'_>,
    wanted_claims: &[Box<str>],
    max_bytes: usize,
) -> Result<TokenInfo, DecodeError> {
    let token = raw.expose();
    if token.len() > max_bytes {
        return Err(DecodeError::TooLarge);
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DecodeError::NotThreeSegments);
    };
    let header_bytes = b64(h).ok_or(DecodeError::HeaderBase64)?;
    let payload_bytes = b64(p).ok_or(DecodeError::PayloadBase64)?;
    // serde would also accept a JSON array for a struct; a JOSE header and a claims set are
    // objects.
    if !is_object(&header_bytes) {
        return Err(DecodeError::HeaderJson);
    }
    if !is_object(&payload_bytes) {
        return Err(DecodeError::PayloadJson);
    }
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| DecodeError::HeaderJson)?;
    let claims: Claims = serde_json::from_slice(&payload_bytes).map_err(|_| DecodeError::PayloadJson)?;
    if !ids_fit(&header, &claims) {
        return Err(DecodeError::ClaimTooLarge);
    }
    let extra = if wanted_claims.is_empty() {
        Vec::new()
    } else {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&payload_bytes).map_err(|_| DecodeError::PayloadJson)?;
        pick_claims(&map, wanted_claims)
    };
    let token_id = match claims.jti {
        Some(ref j) if !j.is_empty() => j.clone(),
        _ => hashed_id("sha256:", &[token.as_bytes()]),
    };
    Ok(build(header, claims, token_id, sig.is_empty(), extra))
}

/// Whether every id-like claim fits [`MAX_ID_CLAIM_BYTES`].
fn ids_fit(h: &Header, c: &Claims) -> bool {
    let fits = |s: &Option<Box<str>>| s.as_deref().is_none_or(|s| s.len() <= MAX_ID_CLAIM_BYTES);
    fits(&h.alg)
        && fits(&h.kid)
        && fits(&c.iss)
        && fits(&c.sub)
        && fits(&c.jti)
        && c.aud.iter().all(|a| a.len() <= MAX_ID_CLAIM_BYTES)
}

/// Builds token metadata from a gateway that logs decoded claims (and maybe the header)
/// instead of the token. Without `jti`, the id is `claims:` + the first 32 hex digits of
/// SHA-256 over `iss|sub|iat|exp` (absent parts empty, numbers in decimal), so that the same
/// token gets the same id on every line.
pub(crate) fn from_claims(
    header: Option<&serde_json::Value>,
    claims: &serde_json::Value,
    wanted_claims: &[Box<str>],
) -> Option<TokenInfo> {
    let map = claims.as_object()?;
    let c = Claims::deserialize(claims).ok()?;
    let h = header
        .and_then(|h| Header::deserialize(h).ok())
        .unwrap_or(Header { alg: None, kid: None });
    // Logged claims with an oversized id are no token to act on, as for a decoded token.
    if !ids_fit(&h, &c) {
        return None;
    }
    let token_id = match c.jti {
        Some(ref j) if !j.is_empty() => j.clone(),
        _ => {
            let num = |n: Option<i64>| n.map(|v| v.to_string()).unwrap_or_default();
            let key = format!(
                "{}|{}|{}|{}",
                c.iss.as_deref().unwrap_or(""),
                c.sub.as_deref().unwrap_or(""),
                num(c.iat),
                num(c.exp)
            );
            hashed_id("claims:", &[key.as_bytes()])
        }
    };
    let extra = pick_claims(map, wanted_claims);
    // A gateway that logged claims accepted a token it could parse; only an explicit
    // `alg: none` marks it unsigned.
    Some(build(h, c, token_id, false, extra))
}

fn build(h: Header, c: Claims, token_id: Box<str>, empty_sig: bool, extra: Vec<(Box<str>, ClaimValue)>) -> TokenInfo {
    let unsigned = empty_sig || h.alg.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("none"));
    let subject: Arc<str> = match c.sub {
        Some(ref s) => format!("{}|{}", c.iss.as_deref().unwrap_or(""), s).into(),
        None => (*token_id).into(),
    };
    TokenInfo {
        id_is_jti: c.jti.as_deref().is_some_and(|j| !j.is_empty()),
        token_id,
        iss: c.iss.map(Arc::from),
        sub: c.sub.map(Arc::from),
        subject,
        alg: h.alg.map(Arc::from),
        kid: h.kid.map(Arc::from),
        aud: c.aud.into(),
        exp: c.exp,
        iat: c.iat,
        nbf: c.nbf,
        unsigned,
        verified: false,
        claims: extra.into_boxed_slice(),
        signature_invalid: false,
        sensitive_claims: Box::default(),
    }
}

fn pick_claims(map: &serde_json::Map<String, serde_json::Value>, wanted: &[Box<str>]) -> Vec<(Box<str>, ClaimValue)> {
    wanted
        .iter()
        .filter_map(|name| {
            let v = match map.get(&**name)? {
                serde_json::Value::String(s) => ClaimValue::Str(s.as_str().into()),
                serde_json::Value::Number(n) => ClaimValue::Num(n.as_f64()?),
                serde_json::Value::Bool(b) => ClaimValue::Bool(*b),
                _ => return None,
            };
            Some((name.clone(), v))
        })
        .collect()
}

/// A revocation key: the first 32 lowercase hex digits of SHA-256(`iss` 0x00 `id`), where `id`
/// is a `jti` or a `sub` (absent `iss`: empty). Gateways compute the same to check a token.
pub fn scoped_key(iss: &str, id: &str) -> Box<str> {
    hashed_id("", &[iss.as_bytes(), &[0], id.as_bytes()])
}

/// `prefix` + the first 32 lowercase hex digits of SHA-256 over the concatenated parts.
fn hashed_id(prefix: &str, parts: &[&[u8]]) -> Box<str> {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    for b in &digest[..16] {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    s.into()
}

fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

pub(crate) fn b64(seg: &str) -> Option<Vec<u8>> {
    // Some issuers pad their segments; the standard says not to, but tokens in the wild do.
    URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()
}

/// True when `s` looks like a compact JWT: three base64url segments (the last may be empty)
/// and a header that starts like a JSON object (`eyJ` is base64url for `{"`). Used to find
/// tokens in URL query strings without decoding every parameter.
pub fn looks_like_jwt(s: &str) -> bool {
    if !s.starts_with("eyJ") {
        return false;
    }
    let mut dots = 0;
    for b in s.bytes() {
        match b {
            b'.' => dots += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'=' => {}
            _ => return false,
        }
    }
    dots == 2
}

/// `text` with every compact-JWT-looking run replaced by `<jwt sha256:HEX>` (HEX: the first
/// 32 hex digits of SHA-256 over the run, which for a token without a string `jti` is its
/// token_id). A run starts at `eyJ` and spans base64url characters, `=` and dots; it is a
/// token when it holds at least two dots. Borrowed, and cheap, when there is nothing to hide.
///
/// Used on every event text that a rule can store or a decision can quote (the request path,
/// and string values kept by `distinct_count`), so a token sent where it should not be is
/// never echoed.
pub(crate) fn redact_jwts(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let is_tok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'.');
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = memchr::memmem::find(&b[i..], b"eyJ") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && is_tok(b[end]) {
            end += 1;
        }
        let run = &text[start..end];
        if run.bytes().filter(|&c| c == b'.').count() >= 2 {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            o.push('<');
            o.push_str(&hashed_id("jwt sha256:", &[run.as_bytes()]));
            o.push('>');
            copied = end;
        }
        i = end.max(start + 1);
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// The request path as rules and decisions see it: without its query string (or fragment),
/// and with any JWT in it redacted ([`redact_jwts`]).
pub(crate) fn clean_path(path: &str) -> std::borrow::Cow<'_, str> {
    let end = memchr::memchr2(b'?', b'#', path.as_bytes()).unwrap_or(path.len());
    redact_jwts(&path[..end])
}

/// Finds the JWTs carried in the query string of a request path (`/x?access_token=eyJ...`).
pub fn tokens_in_query(path: &str) -> impl Iterator<Item = RawToken<'_>> {
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split('#').next().unwrap_or("");
    query.split('&').filter_map(|pair| {
        let v = pair.split_once('=').map(|(_, v)| v)?;
        looks_like_jwt(v).then(|| RawToken::new(v))
    })
}

/// A randomly keyed 128-bit hash of a whole token, in one pass ([`crate::hash::Keys::wide`]).
///
/// Every request's token is hashed to find it in the cache, so this runs once per line over
/// ~900 bytes; its keys are secret and per process, so that an attacker who does not know
/// them cannot aim two tokens at one cache entry.
#[derive(Clone)]
pub(crate) struct TokenHasher {
    keys: crate::hash::Keys,
}

impl TokenHasher {
    pub fn new() -> Self {
        TokenHasher {
            keys: crate::hash::Keys::from_seeds(crate::hash::random_seeds()),
        }
    }

    pub fn hash(&self, t: &[u8]) -> u128 {
        self.keys.wide(t)
    }
}

impl Default for TokenHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The cache's keys are already keyed hashes: use their bits as they are.
#[derive(Default)]
pub(crate) struct U128Id(u64);

impl std::hash::Hasher for U128Id {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }
}

/// A map keyed by [`TokenHasher`] hashes.
pub(crate) type IdMap<V> = HashMap<u128, V, std::hash::BuildHasherDefault<U128Id>>;

/// Decodes (and, with a [`Verifier`], verifies) each distinct token once. Bounded in bytes:
/// when the heap it holds (entries, their strings, the tables; [`TokenCache::heap_bytes`])
/// would pass its budget, it is cleared (tokens are short-lived and the live set refills it
/// within seconds), which keeps the hot path free of LRU upkeep. A count cap would not bound
/// memory: a token's claims can be 1,000 times larger than a typical one's.
pub struct TokenCache {
    /// With whether to verify it again: its key id was in no JWKS yet (keys rotate).
    map: IdMap<(Arc<TokenInfo>, bool)>,
    errors: IdMap<DecodeError>,
    /// `[engine] token_cache_bytes` (this cache's share of it, for a fork).
    budget_bytes: usize,
    /// The heap of the entries of `map` beyond the table itself ([`entry_heap_bytes`]).
    entry_bytes: usize,
    hasher: TokenHasher,
    wanted_claims: Box<[Box<str>]>,
    shared: Interner,
    verifier: Option<Arc<Verifier>>,
    /// Longer tokens are not decoded (`[input] max_token_bytes`).
    max_token_bytes: usize,
    /// Which claim names are sensitive (`[posture]`); `None`: none are looked for.
    posture: Option<Arc<crate::posture::Posture>>,
}

/// `[engine] token_cache_bytes` by default.
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 256 << 20;

/// The heap one cached token holds by itself: the shared allocation and the strings that are
/// its own. Issuer, subject, algorithm, key id and audience are counted by the [`Interner`],
/// once per distinct value.
fn entry_heap_bytes(t: &TokenInfo) -> usize {
    let claims: usize = t
        .claims
        .iter()
        .map(|(name, v)| {
            alloc_bytes(name.len())
                + match v {
                    ClaimValue::Str(s) => alloc_bytes(s.len()),
                    ClaimValue::Num(_) | ClaimValue::Bool(_) => 0,
                }
        })
        .sum();
    // the `Arc`'s two counters and the struct; the id; the claims' slice and their strings
    alloc_bytes(2 * std::mem::size_of::<usize>() + std::mem::size_of::<TokenInfo>())
        + alloc_bytes(t.token_id.len())
        + alloc_bytes(t.claims.len() * std::mem::size_of::<(Box<str>, ClaimValue)>())
        + claims
}

/// One copy of each issuer, subject, algorithm, key id and audience list among the cached
/// tokens (README's memory rows give what a cached token costs). Emptied with the cache.
#[derive(Default)]
struct Interner {
    strs: std::collections::HashSet<Arc<str>>,
    auds: std::collections::HashSet<Arc<[Box<str>]>>,
    /// The heap of the distinct strings and audience lists (the sets' tables aside).
    bytes: usize,
}

impl Interner {
    fn str(&mut self, s: &mut Arc<str>) {
        match self.strs.get(&**s) {
            Some(known) => *s = known.clone(),
            None => {
                self.bytes += alloc_bytes(2 * std::mem::size_of::<usize>() + s.len());
                self.strs.insert(s.clone());
            }
        }
    }

    fn opt(&mut self, s: &mut Option<Arc<str>>) {
        if let Some(s) = s {
            self.str(s);
        }
    }

    fn share(&mut self, t: &mut TokenInfo) {
        self.opt(&mut t.iss);
        self.opt(&mut t.sub);
        self.opt(&mut t.alg);
        self.opt(&mut t.kid);
        self.str(&mut t.subject);
        match self.auds.get(&*t.aud) {
            Some(known) => t.aud = known.clone(),
            None => {
                let each = std::mem::size_of::<Box<str>>();
                let strs: usize = t.aud.iter().map(|a| alloc_bytes(a.len())).sum();
                self.bytes += alloc_bytes(2 * std::mem::size_of::<usize>() + t.aud.len() * each) + strs;
                self.auds.insert(t.aud.clone());
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.bytes
            + table_bytes(self.strs.capacity(), std::mem::size_of::<Arc<str>>())
            + table_bytes(self.auds.capacity(), std::mem::size_of::<Arc<[Box<str>]>>())
    }
}

impl TokenCache {
    /// An empty cache of [`DEFAULT_TOKEN_CACHE_BYTES`].
    pub fn new(wanted_claims: Vec<Box<str>>) -> Self {
        TokenCache {
            map: IdMap::default(),
            errors: IdMap::default(),
            budget_bytes: DEFAULT_TOKEN_CACHE_BYTES,
            entry_bytes: 0,
            hasher: TokenHasher::new(),
            wanted_claims: wanted_claims.into_boxed_slice(),
            shared: Interner::default(),
            verifier: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            posture: None,
        }
    }

    /// Holds at most `bytes` of heap ([`TokenCache::heap_bytes`]) instead of
    /// [`DEFAULT_TOKEN_CACHE_BYTES`].
    pub fn with_budget_bytes(mut self, bytes: usize) -> Self {
        self.budget_bytes = bytes;
        self.forget();
        self
    }

    /// Refuses tokens longer than `max_bytes` (`token_too_large`) instead of
    /// [`DEFAULT_MAX_TOKEN_BYTES`]. Forgets what was decoded, which may no longer hold.
    pub fn with_max_token_bytes(mut self, max_bytes: usize) -> Self {
        if max_bytes != self.max_token_bytes {
            self.max_token_bytes = max_bytes;
            self.forget();
            self.errors = IdMap::default();
        }
        self
    }

    /// Verifies each distinct token's signature once, with these keys.
    pub fn with_verifier(mut self, verifier: Option<Arc<Verifier>>) -> Self {
        self.verifier = verifier;
        self
    }

    /// An empty cache for the same rules and keys, with its own hash keys and a `1/parts`
    /// share of the byte budget (for one of `parts` worker threads: together they hold no
    /// more than the budget).
    pub fn fork(&self, parts: usize) -> Self {
        TokenCache::new(self.wanted_claims.to_vec())
            .with_verifier(self.verifier.clone())
            .with_max_token_bytes(self.max_token_bytes)
            .with_budget_bytes(self.budget_bytes / parts.max(1))
            .with_posture(self.posture.clone())
    }

    /// Drops every decoded token and the strings they shared, and frees the tables.
    fn forget(&mut self) {
        self.map = IdMap::default();
        self.shared = Interner::default();
        self.entry_bytes = 0;
    }

    /// The heap this cache holds: decoded tokens with their own strings, the shared strings,
    /// and the tables (as allocated, slack included), plus allocator overhead per allocation.
    /// Kept within the budget; README's memory rows show it against measured RSS.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u128, (Arc<TokenInfo>, bool))>();
        let error = std::mem::size_of::<(u128, DecodeError)>();
        self.entry_bytes
            + table_bytes(self.map.capacity(), entry)
            + table_bytes(self.errors.capacity(), error)
            + self.shared.heap_bytes()
    }

    /// Looks for the sensitive claim names of this posture in each distinct token.
    pub fn with_posture(mut self, posture: Option<Arc<crate::posture::Posture>>) -> Self {
        self.posture = posture;
        self
    }

    pub fn posture(&self) -> Option<&crate::posture::Posture> {
        self.posture.as_deref()
    }

    /// Changes the claims kept for rules (after a rule reload); forgets what was decoded.
    pub(crate) fn set_wanted_claims(&mut self, wanted: Vec<Box<str>>) {
        if *self.wanted_claims != *wanted {
            self.wanted_claims = wanted.into_boxed_slice();
            self.forget();
        }
    }

    pub fn wanted_claims(&self) -> &[Box<str>] {
        &self.wanted_claims
    }

    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.verifier.as_ref()
    }

    /// Decodes `raw`, or returns the shared result of an earlier decode of the same token.
    pub fn get(&mut self, raw: RawToken<'_>) -> Result<Arc<TokenInfo>, DecodeError> {
        let key = self.hasher.hash(raw.expose().as_bytes());
        if let Some((info, retry)) = self.map.get_mut(&key) {
            // Its key id was unknown: the JWKS may have it now (its re-reads are rate-limited).
            if let (true, Some(v)) = (*retry, &self.verifier) {
                let verdict = v.verify(raw, info);
                let verified = verdict == Verdict::Verified;
                if (verified, verdict.invalid()) != (info.verified, info.signature_invalid) {
                    let mut again = (**info).clone();
                    again.verified = verified;
                    again.signature_invalid = verdict.invalid();
                    *info = Arc::new(again);
                }
                *retry = verdict.retry();
            }
            return Ok(info.clone());
        }
        if let Some(e) = self.errors.get(&key) {
            return Err(*e);
        }
        match decode_capped(raw, &self.wanted_claims, self.max_token_bytes) {
            Ok(mut info) => {
                self.make_room(&info);
                self.shared.share(&mut info);
                if let Some(p) = self.posture.as_deref().filter(|p| p.has_sensitive_patterns()) {
                    info.sensitive_claims = crate::posture::payload_sensitive_names(raw, p);
                }
                let retry = self.verifier.as_ref().is_some_and(|v| verify(v, raw, &mut info));
                let info = Arc::new(info);
                self.entry_bytes += entry_heap_bytes(&info);
                self.map.insert(key, (info.clone(), retry));
                Ok(info)
            }
            Err(e) => {
                // Undecodable tokens get a sixteenth of the budget: they are cheap to refuse
                // again.
                let error = std::mem::size_of::<(u128, DecodeError)>();
                if table_bytes(self.errors.len() + 1, error) > self.budget_bytes / 16 {
                    self.errors = IdMap::default();
                }
                self.errors.insert(key, e);
                Err(e)
            }
        }
    }

    /// Starts over when `info`, with its strings (if none is shared yet) and a table grown
    /// for it, would take the cache past its budget.
    fn make_room(&mut self, info: &TokenInfo) {
        let entry = std::mem::size_of::<(u128, (Arc<TokenInfo>, bool))>();
        let own = |s: &Option<Arc<str>>| s.as_deref().map_or(0, |s| alloc_bytes(s.len() + 16));
        let shared =
            own(&info.iss) + own(&info.sub) + own(&info.alg) + own(&info.kid) + alloc_bytes(info.subject.len() + 16);
        let aud: usize = info.aud.iter().map(|a| alloc_bytes(a.len() + 16)).sum();
        let growth = table_growth(self.map.len(), self.map.capacity(), entry);
        let adds = entry_heap_bytes(info) + shared + aud + growth;
        if self.heap_bytes() + adds > self.budget_bytes {
            self.forget();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Sets `info.verified` and `info.signature_invalid`; true when the token's key id was in no
/// JWKS (worth trying again: the key may be published later).
fn verify(v: &Verifier, raw: RawToken<'_>, info: &mut TokenInfo) -> bool {
    let verdict = v.verify(raw, info);
    info.verified = verdict == Verdict::Verified;
    info.signature_invalid = verdict.invalid();
    verdict.retry()
}

// ---- lenient claim parsing: real tokens carry odd types; a wrong type means "absent" ----

fn lenient_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Box<str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.into()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string().into()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string().into()))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// A NumericDate beyond ±10^15 s (some 30 million years) is no date: it is treated as
/// absent, whether written as an integer, a float or a string. The bound keeps every sum and
/// difference of dates, and their conversion to milliseconds, far from `i64` overflow.
pub const MAX_NUMERIC_DATE: i64 = 1_000_000_000_000_000;

/// A string, or absent for any other type (`jti`: only a string is an id).
fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s.into()),
        _ => None,
    })
}

fn lenient_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok((v.unsigned_abs() <= MAX_NUMERIC_DATE as u64).then_some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok((v <= MAX_NUMERIC_DATE as u64).then_some(v as i64))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            let v = v.floor();
            Ok((v.is_finite() && v.abs() <= MAX_NUMERIC_DATE as f64).then_some(v as i64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.trim()
                .parse::<f64>()
                .ok()
                .and_then(|f| self.visit_f64::<E>(f).ok().flatten()))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

fn lenient_aud<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Box<str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Box<str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.into()])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = a.next_element::<serde_json::Value>()? {
                if let serde_json::Value::String(s) = v {
                    out.push(s.into());
                }
            }
            Ok(out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V)
}

/// Builds a compact token from header and claims JSON with the given signature segment.
/// For tests, benches and the traffic generator: the signature is random-looking bytes, not a
/// real signature, because tokenwatch never checks one.
pub fn encode_unsigned_parts(header: &serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap_or_default());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let s = URL_SAFE_NO_PAD.encode(sig);
    format!("{h}.{p}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// README's key-schema test vectors are what tokenwatch computes, so a gateway author who
    /// implements the README gets the keys tokenwatch writes.
    #[test]
    fn readme_revocation_key_vectors() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let section = &readme[readme.find("Test vectors (a test checks").expect("vectors section")..];
        let mut n = 0;
        for row in section.lines().skip(4).take_while(|l| l.starts_with('|')) {
            let cells: Vec<String> = row
                .split(" | ")
                .map(|c| {
                    c.trim_matches(|ch| ch == '|' || ch == ' ' || ch == '`')
                        .replace("\\|", "|")
                })
                .collect();
            let [kind, iss, id, key] = &cells[..] else {
                panic!("row {row}")
            };
            let iss = if iss == "(none)" { "" } else { iss };
            let claims = match kind.as_str() {
                "token" => json!({"iss": iss, "jti": id, "sub": "someone"}),
                _ => json!({"iss": iss, "sub": id}),
            };
            let mut claims = claims;
            if iss.is_empty() {
                claims.as_object_mut().unwrap().remove("iss");
            }
            let t = encode_unsigned_parts(&json!({"alg": "RS256"}), &claims, b"sig");
            let info = decode(RawToken::new(&t), &[]).unwrap();
            let computed = match kind.as_str() {
                "token" => format!("tokenwatch:revoked:tok:{}", info.token_revocation_key()),
                _ => format!("tokenwatch:revoked:sub:{}", info.subject_revocation_key()),
            };
            assert_eq!(&computed, key, "{row}");
            n += 1;
        }
        assert_eq!(n, 5, "all five vectors read");
    }

    /// The hostile token of issue 11 (alg none, a 250 KB jti, 140 KB iss and sub) and a token
    /// past 16 KiB are not decoded, so nothing downstream holds or prints their claims; ids up
    /// to 1 KiB are.
    #[test]
    fn oversized_tokens_and_id_claims_are_not_decoded() {
        let dec = |claims: serde_json::Value| {
            let t = encode_unsigned_parts(&json!({"alg": "none"}), &claims, b"");
            decode(RawToken::new(&t), &[])
        };
        let big = |n: usize| "x".repeat(n);
        let hostile = json!({"jti": big(250_000), "iss": big(140_000), "sub": big(140_000)});
        assert_eq!(dec(hostile), Err(DecodeError::TooLarge));
        assert_eq!(dec(json!({"sub": big(13_000)})), Err(DecodeError::TooLarge));
        for claim in ["jti", "iss", "sub"] {
            assert_eq!(
                dec(json!({claim: big(1_025)})),
                Err(DecodeError::ClaimTooLarge),
                "{claim}"
            );
            assert!(dec(json!({claim: big(1_024)})).is_ok(), "{claim}");
        }
        assert_eq!(dec(json!({"aud": ["a", big(2_000)]})), Err(DecodeError::ClaimTooLarge));
        let t = encode_unsigned_parts(&json!({"alg": "RS256", "kid": big(1_100)}), &json!({}), b"s");
        assert_eq!(decode(RawToken::new(&t), &[]), Err(DecodeError::ClaimTooLarge));
        assert_eq!(DecodeError::TooLarge.reason(), "token_too_large");
        assert_eq!(DecodeError::ClaimTooLarge.reason(), "claim_too_large");
        assert!(from_claims(None, &json!({"sub": big(2_000)}), &[]).is_none());
    }

    #[test]
    fn revocation_keys_are_fixed_length_and_scoped() {
        let tok = |claims: serde_json::Value| {
            let t = encode_unsigned_parts(&json!({"alg": "RS256"}), &claims, b"sig");
            decode(RawToken::new(&t), &[]).unwrap()
        };
        let hostile = "a\n*\0".repeat(250); // the longest id a token may carry (1 KiB)
        let a = tok(json!({"iss": "https://idp|auth0", "sub": "abc", "jti": hostile}));
        let b = tok(json!({"iss": "https://idp", "sub": "auth0|abc", "jti": hostile}));
        assert_eq!(a.subject, b.subject, "the readable subject is ambiguous...");
        assert_ne!(
            a.subject_revocation_key(),
            b.subject_revocation_key(),
            "...its key is not"
        );
        assert_ne!(
            a.token_revocation_key(),
            b.token_revocation_key(),
            "jti scoped by issuer"
        );
        for k in [a.token_revocation_key(), a.subject_revocation_key()] {
            assert_eq!(k.len(), 32);
            assert!(k.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        // a jti that looks like a hashed id is still a jti: hashed, never taken as a key
        let c = tok(json!({"jti": "sha256:0123456789abcdef0123456789abcdef"}));
        assert_eq!(c.token_revocation_key().len(), 32);
        let d = tok(json!({"sub": "x"}));
        assert!(d.token_revocation_key().starts_with("sha256:"));
    }

    fn tok(h: serde_json::Value, c: serde_json::Value) -> String {
        encode_unsigned_parts(&h, &c, b"signature-bytes-here")
    }

    #[test]
    fn jti_is_the_token_id() {
        let t = tok(
            json!({"alg":"RS256"}),
            json!({"jti":"abc","sub":"u1","iss":"https://idp"}),
        );
        let info = decode(RawToken::new(&t), &[]).unwrap();
        assert_eq!(&*info.token_id, "abc");
        assert_eq!(&*info.subject, "https://idp|u1");
        assert!(!info.unsigned);
    }

    #[test]
    fn token_id_without_jti_is_sha256_of_the_compact_token() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u1"}));
        let info = decode(RawToken::new(&format!("  {t} ")), &[]).unwrap();
        let digest = Sha256::digest(t.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&*info.token_id, format!("sha256:{hex}"));
        assert_eq!(info.token_id.len(), "sha256:".len() + 32);
        // empty iss when absent
        assert_eq!(&*info.subject, "|u1");
    }

    #[test]
    fn empty_jti_falls_back_to_hash_and_missing_sub_uses_token_id() {
        let t = tok(json!({"alg":"RS256"}), json!({"jti":""}));
        let info = decode(RawToken::new(&t), &[]).unwrap();
        assert!(info.token_id.starts_with("sha256:"));
        assert_eq!(*info.subject, *info.token_id);
    }

    #[test]
    fn aud_string_or_list_and_float_dates() {
        let t = tok(
            json!({"alg":"RS256"}),
            json!({"aud":"a","exp":1700000000.7,"iat":1699990000}),
        );
        let info = decode(RawToken::new(&t), &[]).unwrap();
        assert_eq!(&*info.aud, &["a".into()] as &[Box<str>]);
        assert_eq!(info.exp, Some(1700000000));
        assert_eq!(info.lifetime(), Some(10000));
        let t = tok(json!({"alg":"RS256"}), json!({"aud":["a","b",3],"exp":"17"}));
        let info = decode(RawToken::new(&t), &[]).unwrap();
        assert_eq!(info.aud.len(), 2);
        assert_eq!(info.exp, Some(17));
        assert_eq!(info.iat, None);
    }

    #[test]
    fn odd_claim_types_are_tolerated() {
        let t = tok(
            json!({"alg":"RS256","kid":7}),
            json!({"sub":{"x":1},"iss":null,"exp":true,"jti":["x"]}),
        );
        let info = decode(RawToken::new(&t), &[]).unwrap();
        assert_eq!(info.sub, None);
        assert_eq!(info.exp, None);
        assert_eq!(info.kid.as_deref(), Some("7"));
        assert!(info.token_id.starts_with("sha256:"));
    }

    #[test]
    fn unsigned_tokens() {
        for alg in ["none", "NONE", "nOnE"] {
            let t = tok(json!({"alg":alg}), json!({"sub":"u"}));
            assert!(decode(RawToken::new(&t), &[]).unwrap().unsigned, "{alg}");
        }
        let t = encode_unsigned_parts(&json!({"alg":"RS256"}), &json!({"sub":"u"}), b"");
        assert!(t.ends_with('.'));
        assert!(decode(RawToken::new(&t), &[]).unwrap().unsigned);
    }

    #[test]
    fn decode_errors_by_reason() {
        let e = |s: &str| decode(RawToken::new(s), &[]).unwrap_err();
        assert_eq!(e("abc"), DecodeError::NotThreeSegments);
        assert_eq!(e("a.b.c.d"), DecodeError::NotThreeSegments);
        assert_eq!(e("!!.eyJ9.x"), DecodeError::HeaderBase64);
        assert_eq!(e("eyJhIjoxfQ.!!.x"), DecodeError::PayloadBase64);
        assert_eq!(e("bm90anNvbg.eyJhIjoxfQ.x"), DecodeError::HeaderJson);
        assert_eq!(e("eyJhIjoxfQ.bm90anNvbg.x"), DecodeError::PayloadJson);
        // an array is JSON but not a claims object
        assert_eq!(e("eyJhIjoxfQ.WzFd.x"), DecodeError::PayloadJson);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert!(RawToken::from_authorization("bearer abc.def.ghi").is_some());
        assert!(RawToken::from_authorization("BEARER   abc.def.ghi ").is_some());
        assert!(RawToken::from_authorization("Basic dXNlcjpwdw==").is_none());
        assert!(RawToken::from_authorization("Bearer").is_none());
        assert_eq!(
            RawToken::from_authorization("Bearer  x.y.z ").unwrap().expose(),
            "x.y.z"
        );
    }

    #[test]
    fn debug_of_raw_token_hides_it() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u"}));
        let shown = format!("{:?}", RawToken::new(&t));
        assert!(!shown.contains(&t[..10]));
    }

    #[test]
    fn finds_tokens_in_query() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u"}));
        let path = format!("/cb?state=1&access_token={t}&x=eyJnotatoken");
        let found: Vec<_> = tokens_in_query(&path).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expose(), t);
        assert_eq!(tokens_in_query("/no/query").count(), 0);
        assert_eq!(tokens_in_query(&format!("/p#access_token={t}")).count(), 0);
    }

    #[test]
    fn claims_only_ids_are_stable_and_documented() {
        let c = json!({"iss":"i","sub":"s","iat":10,"exp":20});
        let a = from_claims(None, &c, &[]).unwrap();
        let b = from_claims(None, &c, &[]).unwrap();
        assert_eq!(a.token_id, b.token_id);
        let digest = Sha256::digest(b"i|s|10|20");
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&*a.token_id, format!("claims:{hex}"));
        let h = json!({"alg":"none"});
        assert!(from_claims(Some(&h), &c, &[]).unwrap().unsigned);
        assert!(from_claims(None, &json!("x"), &[]).is_none());
    }

    #[test]
    fn a_numeric_jti_is_not_the_token_id() {
        for jti in [json!(12345), json!(0), json!(-7), json!(1.5), json!(true), json!(["a"])] {
            let t = tok(json!({"alg":"RS256"}), json!({"jti": jti, "sub":"u"}));
            let info = decode(RawToken::new(&t), &[]).unwrap();
            let digest = Sha256::digest(t.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&*info.token_id, format!("sha256:{hex}"), "jti {jti}");
        }
        // claims only: a numeric jti is no jti either, so the documented claims: id applies
        let c = json!({"jti": 42, "iss":"i","sub":"s","iat":10,"exp":20});
        let digest = Sha256::digest(b"i|s|10|20");
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&*from_claims(None, &c, &[]).unwrap().token_id, format!("claims:{hex}"));
        let c = json!({"jti": "j-1", "iss":"i","sub":"s"});
        assert_eq!(&*from_claims(None, &c, &[]).unwrap().token_id, "j-1");
    }

    #[test]
    fn out_of_range_dates_are_absent_whatever_their_type() {
        let dates = |c: serde_json::Value| {
            let i = decode(RawToken::new(&tok(json!({"alg":"RS256"}), c)), &[]).unwrap();
            (i.exp, i.iat, i.nbf, i.lifetime())
        };
        let max = MAX_NUMERIC_DATE;
        assert_eq!(
            dates(json!({"exp": i64::MAX, "iat": -1, "nbf": i64::MIN})),
            (None, Some(-1), None, None)
        );
        assert_eq!(dates(json!({"exp": u64::MAX, "iat": 1e300})), (None, None, None, None));
        assert_eq!(
            dates(json!({"exp": max, "iat": -max})),
            (Some(max), Some(-max), None, Some(2 * max))
        );
        assert_eq!(dates(json!({"exp": max + 1, "iat": -max - 1})).0, None);
        assert_eq!(dates(json!({"exp": -max - 1})).0, None);
        assert_eq!(dates(json!({"exp": "9223372036854775807"})).0, None);
        assert_eq!(dates(json!({"exp": 1e15 + 2.0})).0, None);
        assert_eq!(dates(json!({"exp": -1.5})).0, Some(-2));
        // the claims-only path reads dates the same way
        let c = json!({"sub":"s","exp": i64::MAX, "iat": i64::MIN});
        let info = from_claims(None, &c, &[]).unwrap();
        assert_eq!((info.exp, info.iat), (None, None));
        // and a lifetime never wraps, however the struct was built
        let mut info = info;
        (info.exp, info.iat) = (Some(i64::MAX), Some(-1));
        assert_eq!(info.lifetime(), Some(i64::MAX));
    }

    #[test]
    fn redaction_hides_every_jwt_and_keeps_the_rest() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u"}));
        let unsigned = encode_unsigned_parts(&json!({"alg":"none"}), &json!({"sub":"u"}), b"");
        let sig = t.rsplit('.').next().unwrap();
        assert!(matches!(redact_jwts("/api/v1/orders"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(redact_jwts("eyJ only.one"), "eyJ only.one");
        let text = format!("/reset/{t}/x?a={unsigned}&b={t}.");
        let r = redact_jwts(&text);
        assert!(!r.contains(sig) && !r.contains(&t[..20]) && !r.contains("eyJ"), "{r}");
        let digest = Sha256::digest(t.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            r.starts_with(&format!("/reset/<jwt sha256:{hex}>/x?a=<jwt sha256:")),
            "{r}"
        );
        let full = format!("/reset/{t}/confirm?access_token={t}#frag");
        assert_eq!(clean_path(&full), format!("/reset/<jwt sha256:{hex}>/confirm"));
        assert!(matches!(clean_path("/a/b?q=1"), std::borrow::Cow::Borrowed("/a/b")));
        assert_eq!(
            clean_path("eyJeyJ.eyJ.x"),
            format!("<{}>", hashed_id("jwt sha256:", &[b"eyJeyJ.eyJ.x"]))
        );
    }

    #[test]
    fn token_hash_sees_every_byte_and_the_length() {
        let h = TokenHasher::new();
        let base: Vec<u8> = (0..100u8).map(|i| b'A' + i % 26).collect();
        let mut seen = std::collections::HashSet::new();
        for len in 0..base.len() {
            assert!(seen.insert(h.hash(&base[..len])), "length {len}");
        }
        assert!(seen.insert(h.hash(b"\0")) && seen.insert(h.hash(b"\0\0")));
        for i in 0..base.len() {
            let mut t = base.clone();
            t[i] ^= 1;
            assert!(seen.insert(h.hash(&t)), "byte {i}");
        }
        assert_eq!(h.hash(&base), h.hash(&base));
        assert_ne!(h.hash(&base), TokenHasher::new().hash(&base));
    }

    #[test]
    fn cache_decodes_once_and_keeps_wanted_claims() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u","tenant":"acme","lvl":3}));
        let mut c = TokenCache::new(vec!["tenant".into(), "lvl".into(), "nope".into()]);
        let a = c.get(RawToken::new(&t)).unwrap();
        let b = c.get(RawToken::new(&t)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.claim("tenant"), Some(&ClaimValue::Str("acme".into())));
        assert_eq!(a.claim("lvl"), Some(&ClaimValue::Num(3.0)));
        assert_eq!(a.claim("nope"), None);
        assert_eq!(c.get(RawToken::new("x.y")).unwrap_err(), DecodeError::NotThreeSegments);
    }

    #[test]
    fn the_token_size_cap_is_the_caches_own() {
        let t = tok(json!({"alg":"RS256"}), json!({"sub":"u","pad":"p".repeat(2_300)}));
        assert!((2_048..4_096).contains(&t.len()), "{}", t.len());
        assert!(TokenCache::new(vec![]).get(RawToken::new(&t)).is_ok());
        let mut small = TokenCache::new(vec![]).with_max_token_bytes(2_048);
        assert_eq!(small.get(RawToken::new(&t)).unwrap_err(), DecodeError::TooLarge);
        assert_eq!(small.fork(1).get(RawToken::new(&t)).unwrap_err(), DecodeError::TooLarge);
        assert_eq!(
            decode_capped(RawToken::new(&t), &[], t.len()).unwrap().sub.as_deref(),
            Some("u")
        );
    }

    #[test]
    fn cached_tokens_of_one_user_share_their_strings() {
        let h = json!({"alg": "RS256", "kid": "k1"});
        let claims = |jti: &str| json!({"iss": "https://idp", "sub": "u1", "aud": ["a", "b"], "jti": jti});
        let (t1, t2) = (tok(h.clone(), claims("one")), tok(h, claims("two")));
        let mut c = TokenCache::new(vec![]);
        let (a, b) = (c.get(RawToken::new(&t1)).unwrap(), c.get(RawToken::new(&t2)).unwrap());
        assert_ne!(a.token_id, b.token_id);
        assert!(Arc::ptr_eq(&a.subject, &b.subject));
        assert!(Arc::ptr_eq(a.iss.as_ref().unwrap(), b.iss.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.alg.as_ref().unwrap(), b.alg.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&a.aud, &b.aud));
        // A full cache starts over, and so do the shared strings: nothing grows without bound.
        let mut one = TokenCache::new(vec![]);
        one.get(RawToken::new(&t1)).unwrap();
        let mut small = TokenCache::new(vec![]).with_budget_bytes(one.heap_bytes() + 40);
        small.get(RawToken::new(&t1)).unwrap();
        small.get(RawToken::new(&t2)).unwrap();
        assert_eq!(small.len(), 1);
        assert!(small.shared.strs.len() <= 5);
    }

    /// The finding: a count cap let 1,500 tokens with 100 KB claims hold 449 MB. Tokens
    /// of the maximum size, with every id claim at its 1 KiB cap and a 5.5 KiB claim the rules
    /// keep, stay within the byte budget, and the accounting counts at least their strings.
    #[test]
    fn the_cache_holds_no_more_heap_than_its_byte_budget() {
        let budget = 2 << 20;
        let mut c = TokenCache::new(vec!["blob".into()]).with_budget_bytes(budget);
        let big = |i: usize| {
            let id = |p: &str| format!("{p}{i:08}{}", "x".repeat(1_000));
            tok(
                json!({"alg": "RS256", "kid": id("k")}),
                json!({"iss": id("i"), "sub": id("s"), "jti": id("j"), "aud": [id("a")], "blob": "b".repeat(5_500)}),
            )
        };
        let t = big(0);
        assert!(t.len() <= DEFAULT_MAX_TOKEN_BYTES, "{}", t.len());
        c.get(RawToken::new(&t)).unwrap();
        let strings = 6 * 1_009 + 5_500;
        assert!(c.heap_bytes() >= strings, "{} < {strings}", c.heap_bytes());
        let mut most = 0;
        for i in 1..2_000 {
            c.get(RawToken::new(&big(i))).unwrap();
            assert!(c.heap_bytes() <= budget, "token {i}: {} > {budget}", c.heap_bytes());
            most = most.max(c.len());
        }
        // about budget / 15 KiB of them at a time, not all 2,000
        assert!((50..=budget / strings).contains(&most), "{most}");
    }

    #[test]
    fn forks_share_the_budget() {
        let c = TokenCache::new(vec![]).with_budget_bytes(1 << 20);
        assert_eq!(c.fork(4).budget_bytes, 1 << 18);
        assert_eq!(c.fork(1).budget_bytes, 1 << 20);
    }
}
