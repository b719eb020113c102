//! A plain, slow re-statement of the engine's eight default rules, for the generator's tests.
//!
//! It reads the canonical lines the generator wrote (not its internal state), decodes tokens
//! with [`tokenwatch_core::token`] and geolocates as the engine will (with the generator's copy of the
//! test database, or through the `--geoip` database the traffic was built from), then says
//! which rules fire where. The tests demand that this equals the labels exactly: every
//! labelled firing happens, and nothing unlabelled fires, legitimate traffic included.
//! Written for clarity, not speed; it only ever sees test-sized runs.
//!
//! Two versions of the rules. As they are today, a request's status is taken as proof that
//! its token is genuine, and the forged decoys fire exactly where they are labelled
//! ([`Oracle::new`]). As issue 9 makes them ([`Oracle::verifying`]), the four revoking rules
//! count only requests whose token verifies against the generator's JWKS (checked with the
//! `jsonwebtoken` crate, not the generator's own code), and no decoy fires. [`classify`] puts
//! firings against labels: attacks detected or missed, decoys "not fired" or "fired (false)".

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;

use serde::Deserialize;

use super::net::{Located, Net, Networks, Source, LOCATED};
use super::{rule, Label};
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::token::{decode, tokens_in_query, RawToken, TokenInfo};

#[derive(Deserialize)]
struct Line<'a> {
    ts: &'a str,
    client_ip: &'a str,
    method: &'a str,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    status: u16,
    authorization: Option<&'a str>,
    scheme: Option<&'a str>,
}

/// One firing: rule, the key it is counted by (token id or subject), and the event time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Firing {
    pub rule: String,
    pub key: String,
    pub ts: i64,
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// Where an address is: (latitude, longitude, accuracy radius in km).
type Point = (f64, f64, f64);

enum Geo {
    /// The built-in copy of the test database's ranges, parsed once.
    Table(Vec<(Net, Located)>),
    /// A City database, looked up by the engine's own [`GeoDb`].
    Db(GeoDb),
}

impl Default for Geo {
    fn default() -> Self {
        Geo::Table(Vec::new())
    }
}

/// Checks signatures with the public keys of a JWK Set; the key's `alg` decides the algorithm.
pub(crate) struct Verifier(jsonwebtoken::jwk::JwkSet);

impl Verifier {
    pub(crate) fn new(jwks: &serde_json::Value) -> Self {
        Verifier(serde_json::from_value(jwks.clone()).expect("a JWK Set"))
    }

    pub(crate) fn verifies(&self, token: &str) -> bool {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let Some(jwk) = jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .and_then(|kid| self.0.find(&kid))
        else {
            return false;
        };
        let (Ok(key), Some(alg)) = (DecodingKey::from_jwk(jwk), jwk.common.key_algorithm) else {
            return false;
        };
        let Ok(alg) = alg.to_string().parse::<Algorithm>() else {
            return false;
        };
        // The signature alone: expiry is a rule's business, not authenticity's.
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).is_ok()
    }
}

/// A decoded token, whether it counts as authenticated, and whether it is genuine (verifies
/// against the posture's per-issuer keys).
type Seen = (Rc<TokenInfo>, bool, bool);

/// One token of one line, as the rules see it.
struct Ev<'a> {
    ts: i64,
    ip: IpAddr,
    accepted: bool,
    /// The token verifies (always true for the rules as they are today).
    authenticated: bool,
    in_url: bool,
    /// A claim of the token is named like sensitive data.
    sensitive: bool,
    /// The request came over plain HTTP.
    http: bool,
    method: &'a str,
    path: &'a str,
    status: u16,
    /// Found in the URL beside a header token (the gateway answered for the other one).
    second: bool,
    /// Its signature verifies with its issuer's own key.
    genuine: bool,
    info: &'a TokenInfo,
    text: &'a str,
}

/// The deployment the posture rules compare traffic with ([`crate::GenConfig::posture`]), and
/// each configured issuer's public keys.
pub(crate) struct PostureCfg {
    posture: tokenwatch_core::posture::Posture,
    keys: HashMap<String, Verifier>,
    first_seen: HashMap<(String, String), i64>,
}

/// What one line does: the firings, and the revocations that apply after it.
#[derive(Default)]
struct Effects {
    out: Vec<Firing>,
    revoke_tokens: Vec<String>,
    revoke_subject: Option<(String, i64)>,
}

impl Effects {
    fn fire(&mut self, ts: i64, rule: &str, key: &str) {
        self.out.push(Firing {
            rule: rule.to_owned(),
            key: key.to_owned(),
            ts,
        });
    }
}

#[derive(Default)]
pub(crate) struct Oracle {
    geo: Geo,
    /// Only requests whose token verifies here may revoke; `None`: any accepted request.
    verifier: Option<Verifier>,
    /// Decoded tokens, and whether they verify, by [`quick_hash`] of their text.
    tokens: HashMap<(usize, u64), Option<Seen>>,
    fired_once: HashSet<(&'static str, String)>,
    replay: HashMap<String, Vec<(i64, u128)>>,
    last_geo: HashMap<String, (i64, f64, f64, f64)>,
    travel_fired: HashMap<String, i64>,
    rejected_expired: HashMap<String, Vec<i64>>,
    attempts_fired: HashMap<String, i64>,
    revoked_tokens: HashSet<String>,
    revoked_subjects: HashMap<String, i64>,
    revoked_used_fired: HashMap<String, i64>,
    posture: Option<PostureCfg>,
}

/// A cheap key for a token text: the std hasher, unoptimised in test builds, was most of
/// this module's running time. Collisions between a run's few thousand tokens are not a
/// practical concern at 64 bits plus the length.
pub(crate) fn quick_hash(s: &str) -> (usize, u64) {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let chunks = s.as_bytes().chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(29);
    }
    for &b in rest {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (s.len(), h)
}

/// IPv4 /24 or IPv6 /64, tagged so the two never collide.
fn network(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => (1u128 << 127) | u128::from(u32::from(a) >> 8),
        IpAddr::V6(a) => u128::from(a) >> 64,
    }
}

impl Oracle {
    /// Geolocates with the built-in tables.
    pub(crate) fn new() -> Self {
        let geo = LOCATED.iter().map(|l| (Net::parse(l.cidr), *l)).collect();
        Oracle {
            geo: Geo::Table(geo),
            ..Oracle::default()
        }
    }

    /// Geolocates as the engine will for traffic generated over `nets`.
    pub(crate) fn for_networks(nets: &Networks) -> Self {
        match &nets.source {
            Source::Builtin => Oracle::new(),
            Source::Database { .. } => Oracle {
                geo: Geo::Db(nets.geo_db()),
                ..Oracle::default()
            },
        }
    }

    /// The rules as issue 9 makes them: only a request whose token verifies against `jwks`
    /// counts for the revoking rules.
    pub(crate) fn verifying(self, jwks: &serde_json::Value) -> Self {
        Oracle {
            verifier: Some(Verifier::new(jwks)),
            ..self
        }
    }

    pub(crate) fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// The posture rules judge traffic as the deployment of `cfg` says (its issuers' own
    /// keys, audiences, protected paths, maximum key age), in both versions of the revoking
    /// rules: signatures are the posture rules' subject, so they are always checked.
    pub(crate) fn with_posture(self, cfg: &crate::GenConfig) -> Self {
        let keys = crate::issuer_jwks(cfg.seed)
            .into_iter()
            .map(|(iss, jwks)| (iss, Verifier::new(&serde_json::from_str(&jwks).expect("a JWK Set"))))
            .collect();
        Oracle {
            posture: Some(PostureCfg {
                posture: cfg.posture(),
                keys,
                first_seen: HashMap::new(),
            }),
            ..self
        }
    }

    fn locate(&self, ip: IpAddr) -> Option<Point> {
        match &self.geo {
            Geo::Table(t) => t
                .iter()
                .find(|(net, _)| net.contains(ip))
                .map(|(_, l)| (l.lat, l.lon, l.accuracy_km)),
            Geo::Db(db) => db.locate(ip).map(|g| (g.lat, g.lon, g.accuracy_km)),
        }
    }

    /// Feeds one canonical line; returns the rules it fires. Lines that are not valid events
    /// (malformed ones) are ignored, as the engine skips them.
    pub(crate) fn observe(&mut self, line: &str) -> Vec<Firing> {
        let Ok(l) = serde_json::from_str::<Line<'_>>(line) else {
            return Vec::new();
        };
        let Ok(ts) = chrono::DateTime::parse_from_rfc3339(l.ts) else {
            return Vec::new();
        };
        let ts = ts.timestamp_millis();
        let Ok(ip) = l.client_ip.parse::<IpAddr>() else {
            return Vec::new();
        };
        let mut carried: Vec<(&str, bool)> = Vec::new();
        if let Some(t) = l.authorization.and_then(RawToken::from_authorization) {
            carried.push((t.expose(), false));
        }
        for t in tokens_in_query(&l.path) {
            carried.push((t.expose(), true));
        }
        let mut fx = Effects::default();
        let header = usize::from(l.authorization.is_some());
        for (i, (text, in_url)) in carried.into_iter().enumerate() {
            let (verifier, posture) = (&self.verifier, &self.posture);
            let seen = self.tokens.entry(quick_hash(text)).or_insert_with(|| {
                let info = decode(RawToken::new(text), &[]).ok().map(Rc::new)?;
                let genuine = posture.as_ref().is_some_and(|p| {
                    info.iss
                        .as_deref()
                        .and_then(|iss| p.keys.get(iss))
                        .is_some_and(|v| v.verifies(text))
                });
                Some((info, verifier.as_ref().is_none_or(|v| v.verifies(text)), genuine))
            });
            if let Some((info, authenticated, genuine)) = seen.clone() {
                let ev = Ev {
                    ts,
                    ip,
                    accepted: l.status != 401 && l.status != 403,
                    authenticated,
                    in_url,
                    sensitive: has_sensitive_claim(text),
                    http: l.scheme == Some("http"),
                    method: l.method,
                    path: &l.path,
                    status: l.status,
                    second: header > 0 && i > 0,
                    genuine,
                    info: &info,
                    text,
                };
                self.rules(&ev, &mut fx);
                self.posture_rules(&ev, &mut fx);
            }
        }
        // Revocations take effect after the event that caused them.
        self.revoked_tokens.extend(fx.revoke_tokens);
        if let Some((s, nb)) = fx.revoke_subject {
            self.revoked_subjects.insert(s, nb);
        }
        fx.out
    }

    /// token-replay, impossible-travel, expired-token-accepted and token-in-url, on an
    /// accepted request (and, when verifying, an authenticated one).
    fn revoking_rules(&mut self, ev: &Ev<'_>, expired: bool, fx: &mut Effects) {
        let ts = ev.ts;
        let tid = ev.info.token_id.to_string();
        let subject = ev.info.subject.to_string();
        let w = self.replay.entry(tid.clone()).or_default();
        w.push((ts, network(ev.ip)));
        w.retain(|(t, _)| ts - t <= 10 * MIN);
        let mut nets: Vec<u128> = w.iter().map(|(_, n)| *n).collect();
        nets.sort_unstable();
        nets.dedup();
        if nets.len() >= 3 && self.fired_once.insert((rule::TOKEN_REPLAY, tid.clone())) {
            fx.fire(ts, rule::TOKEN_REPLAY, &tid);
            fx.revoke_tokens.push(tid.clone());
        }

        if let Some((here_lat, here_lon, here_acc)) = self.locate(ev.ip) {
            if let Some((t1, lat, lon, acc)) = self.last_geo.get(&subject).copied() {
                let dt = ts - t1;
                let km = (super::net::distance_km(lat, lon, here_lat, here_lon) - acc - here_acc).max(0.0);
                let hours = dt.max(MIN) as f64 / HOUR as f64;
                let cooled = self.travel_fired.get(&subject).is_none_or(|l| ts - l >= HOUR);
                if dt < 24 * HOUR && km >= 500.0 && km / hours > 900.0 && cooled {
                    self.travel_fired.insert(subject.clone(), ts);
                    fx.fire(ts, rule::IMPOSSIBLE_TRAVEL, &subject);
                    fx.revoke_subject = Some((subject.clone(), ts));
                }
            }
            self.last_geo
                .insert(subject.clone(), (ts, here_lat, here_lon, here_acc));
        }

        if expired && self.fired_once.insert((rule::EXPIRED_TOKEN_ACCEPTED, tid.clone())) {
            fx.fire(ts, rule::EXPIRED_TOKEN_ACCEPTED, &tid);
            fx.revoke_tokens.push(tid.clone());
        }
        if ev.in_url && self.fired_once.insert((rule::TOKEN_IN_URL, tid.clone())) {
            fx.fire(ts, rule::TOKEN_IN_URL, &tid);
            fx.revoke_tokens.push(tid);
        }
    }

    fn rules(&mut self, ev: &Ev<'_>, fx: &mut Effects) {
        let (ts, info) = (ev.ts, ev.info);
        let expired = info.exp.is_some_and(|e| e * 1000 + 60_000 < ts);
        let tid = info.token_id.to_string();
        let subject = info.subject.to_string();

        if ev.accepted {
            let revoked = self.revoked_tokens.contains(&tid)
                || matches!((self.revoked_subjects.get(&subject), info.iat), (Some(nb), Some(iat)) if iat * 1000 < *nb);
            let last = self.revoked_used_fired.get(&tid).copied();
            if revoked && last.is_none_or(|l| ts - l >= 10 * MIN) {
                self.revoked_used_fired.insert(tid.clone(), ts);
                fx.fire(ts, rule::REVOKED_TOKEN_USED, &tid);
            }
            if ev.authenticated {
                self.revoking_rules(ev, expired, fx);
            }
        } else if expired {
            let w = self.rejected_expired.entry(subject.clone()).or_default();
            w.push(ts);
            w.retain(|t| ts - t <= 5 * MIN);
            let cooled = self.attempts_fired.get(&subject).is_none_or(|l| ts - l >= 5 * MIN);
            if w.len() >= 5 && cooled {
                self.attempts_fired.insert(subject.clone(), ts);
                fx.fire(ts, rule::EXPIRED_TOKEN_ATTEMPTS, &subject);
            }
        }

        if info.unsigned && self.fired_once.insert((rule::UNSIGNED_TOKEN, tid.clone())) {
            fx.fire(ts, rule::UNSIGNED_TOKEN, &tid);
        }
        if info.lifetime().is_some_and(|l| l > 86_400)
            && self.fired_once.insert((rule::EXCESSIVE_LIFETIME, tid.clone()))
        {
            fx.fire(ts, rule::EXCESSIVE_LIFETIME, &tid);
        }
        if ev.http && self.fired_once.insert((rule::TOKEN_OVER_HTTP, tid.clone())) {
            fx.fire(ts, rule::TOKEN_OVER_HTTP, &tid);
        }
        if ev.sensitive && self.fired_once.insert((rule::SENSITIVE_CLAIMS, tid.clone())) {
            fx.fire(ts, rule::SENSITIVE_CLAIMS, &tid);
        }
    }
}

impl Oracle {
    /// weak-algorithm, unknown-issuer-accepted, audience-mismatch, invalid-signature-accepted
    /// and stale-signing-key, each once per token (stale-signing-key once per key).
    fn posture_rules(&mut self, ev: &Ev<'_>, fx: &mut Effects) {
        let Some(p) = &mut self.posture else { return };
        let (ts, info) = (ev.ts, ev.info);
        let tid = info.token_id.to_string();
        let iss = info.iss.as_deref().unwrap_or("");
        let configured = p.posture.issuers.iter().any(|c| &**c == iss);
        let alg = info.alg.as_deref().unwrap_or("");
        let registered = tokenwatch_core::posture::REGISTERED_ALGS.contains(&alg) || alg.eq_ignore_ascii_case("none");
        let mut fire = |rule: &'static str, fired: &mut HashSet<(&'static str, String)>| {
            if fired.insert((rule, tid.clone())) {
                fx.fire(ts, rule, &tid);
            }
        };
        if (alg.starts_with("HS") && configured) || !registered {
            fire(rule::WEAK_ALGORITHM, &mut self.fired_once);
        }
        if ev.accepted && !configured {
            fire(rule::UNKNOWN_ISSUER_ACCEPTED, &mut self.fired_once);
        }
        if let Some(want) = p.posture.expected_audience(ev.path) {
            if ev.accepted && !info.aud.iter().any(|a| &**a == want) {
                fire(rule::AUDIENCE_MISMATCH, &mut self.fired_once);
            }
        }
        // Checked, and bad: a configured issuer's token under an `alg` tokenwatch verifies,
        // with a signature, not genuine.
        const CHECKED: [&str; 9] = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ];
        let public_key_alg = CHECKED.contains(&alg);
        let invalid = configured && public_key_alg && !ev.text.ends_with('.') && !ev.genuine;
        let served = (200..400).contains(&ev.status) && ev.method != "OPTIONS" && !ev.second;
        if invalid && served && p.posture.protected(ev.path) {
            fire(rule::INVALID_SIGNATURE_ACCEPTED, &mut self.fired_once);
        }
        if let (true, true, Some(kid)) = (ev.genuine, configured, info.kid.as_deref()) {
            let first = *p.first_seen.entry((iss.to_owned(), kid.to_owned())).or_insert(ts);
            if ts - first > p.posture.max_key_age_ms
                && self.fired_once.insert((rule::STALE_SIGNING_KEY, kid.to_owned()))
            {
                fx.fire(ts, rule::STALE_SIGNING_KEY, &tid);
            }
        }
    }
}

/// Whether the token's payload has a claim named like one of the default
/// `[posture] sensitive_claims` (case and `_`/`-` ignored; `*` at either end a wildcard).
fn has_sensitive_claim(token: &str) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&bytes) else {
        return false;
    };
    claims.keys().any(|name| {
        let name: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_lowercase();
        tokenwatch_core::posture::DEFAULT_SENSITIVE_CLAIMS.iter().any(|p| {
            match (p.strip_prefix('*'), p.strip_suffix('*')) {
                (Some(rest), _) if rest.ends_with('*') => name.contains(rest.trim_end_matches('*')),
                (Some(rest), _) => name.ends_with(rest),
                (None, Some(head)) => name.starts_with(head),
                (None, None) => name == *p,
            }
        })
    })
}

/// Firings against labels, as the demo scores decisions: attacks detected or missed, decoys
/// not fired or fired (false), and firings no label asked for.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub detected: usize,
    pub missed: Vec<Firing>,
    pub decoys_not_fired: usize,
    pub decoys_fired: Vec<Firing>,
    /// Firings that are neither a labelled attack nor a decoy.
    pub unlabelled: Vec<Firing>,
}

pub(crate) fn label_firing(l: &Label) -> Firing {
    Firing {
        rule: l.rule.clone(),
        key: l.key().unwrap_or_default().to_owned(),
        ts: l.ts,
    }
}

pub(crate) fn classify(labels: &[Label], fired: &[Firing]) -> Report {
    let fired: HashSet<&Firing> = fired.iter().collect();
    let mut r = Report::default();
    let mut labelled = HashSet::new();
    for l in labels {
        let f = label_firing(l);
        match (l.must_fire(), fired.contains(&f)) {
            (true, true) => r.detected += 1,
            (true, false) => r.missed.push(f.clone()),
            (false, true) => r.decoys_fired.push(f.clone()),
            (false, false) => r.decoys_not_fired += 1,
        }
        labelled.insert(f);
    }
    r.unlabelled = fired.into_iter().filter(|f| !labelled.contains(*f)).cloned().collect();
    r.unlabelled.sort();
    r
}
