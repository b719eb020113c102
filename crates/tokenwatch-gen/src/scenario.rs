//! Injected attacks, near misses and forged decoys: short scripts of requests with the labels
//! they must raise (or, for a decoy, must not).
//!
//! Each scenario plays out on a subject of its own (`user-<n>` beyond the normal users) with
//! tokens of its own, so nothing the ordinary traffic does can add to or take from its
//! labels, and its labels are exactly the firings the default rules produce. A decoy's forged
//! tokens are minted here too: the victim's ids with a signature that cannot verify
//! ([`Seal`]), so that only a verifier tells them from the victim's genuine token. A script also
//! models the gateway honouring tokenwatch's revocations: after the request that gets a token
//! (or a subject) revoked, later uses of it are answered 401 and the owner's client fetches a
//! new token, issued strictly after the revocation. The one exception is the revoked-token-
//! used attack, whose point is a gateway that let the revoked token through.
//!
//! Attacker addresses are never geolocated (see [`super::net`]), so a replay cannot also
//! look like impossible travel; only the travel scripts use located addresses on purpose,
//! the fixed points that [`Networks`] chose for them.
//! Tokens live long enough for every accepted use in a script (none is accidentally expired),
//! except in the expiry scenarios, where every use is well past `exp + 60 s`.

use std::cmp::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use super::keys::{issuer_for, Issuer, Keys, ISSUERS};
use super::net::{Net, Networks};
use super::rng::{mix64, Rng};
use super::traffic::{pick_request, Client, ClientKind, CLIENTS};
use super::{Expect, Label};

/// Rule ids of the engine's default rules, as labels name them.
pub mod rule {
    pub(crate) const TOKEN_REPLAY: &str = "token-replay";
    pub(crate) const IMPOSSIBLE_TRAVEL: &str = "impossible-travel";
    pub(crate) const EXPIRED_TOKEN_ATTEMPTS: &str = "expired-token-attempts";
    pub(crate) const EXPIRED_TOKEN_ACCEPTED: &str = "expired-token-accepted";
    pub(crate) const UNSIGNED_TOKEN: &str = "unsigned-token";
    pub(crate) const TOKEN_IN_URL: &str = "token-in-url";
    pub(crate) const EXCESSIVE_LIFETIME: &str = "excessive-lifetime";
    pub(crate) const REVOKED_TOKEN_USED: &str = "revoked-token-used";
    pub(crate) const SENSITIVE_CLAIMS: &str = "sensitive-claims";
    pub(crate) const TOKEN_OVER_HTTP: &str = "token-over-http";
    pub(crate) const WEAK_ALGORITHM: &str = "weak-algorithm";
    pub(crate) const UNKNOWN_ISSUER_ACCEPTED: &str = "unknown-issuer-accepted";
    pub(crate) const AUDIENCE_MISMATCH: &str = "audience-mismatch";
    pub(crate) const INVALID_SIGNATURE_ACCEPTED: &str = "invalid-signature-accepted";
    pub(crate) const STALE_SIGNING_KEY: &str = "stale-signing-key";

    /// The posture rules the generator injects findings for (`posture_rate`); they fire with
    /// the posture configuration of [`crate::GenConfig::posture`].
    pub const POSTURE: [&str; 7] = [
        SENSITIVE_CLAIMS,
        TOKEN_OVER_HTTP,
        WEAK_ALGORITHM,
        UNKNOWN_ISSUER_ACCEPTED,
        AUDIENCE_MISMATCH,
        INVALID_SIGNATURE_ACCEPTED,
        STALE_SIGNING_KEY,
    ];

    /// How many rules a long enough default run labels: the attacks' and the posture findings'.
    pub const LABELLED: usize = ALL.len() + POSTURE.len();

    pub const ALL: [&str; 8] = [
        TOKEN_REPLAY,
        IMPOSSIBLE_TRAVEL,
        EXPIRED_TOKEN_ATTEMPTS,
        EXPIRED_TOKEN_ACCEPTED,
        UNSIGNED_TOKEN,
        TOKEN_IN_URL,
        EXCESSIVE_LIFETIME,
        REVOKED_TOKEN_USED,
    ];

    /// The rules that revoke, which only authenticated requests may trigger (issue 9).
    #[cfg(test)]
    pub(crate) const REVOKING: [&str; 4] = [TOKEN_REPLAY, IMPOSSIBLE_TRAVEL, EXPIRED_TOKEN_ACCEPTED, TOKEN_IN_URL];

    /// Rules keyed by subject; every other rule is keyed by token id.
    pub fn keyed_by_subject(rule: &str) -> bool {
        rule == IMPOSSIBLE_TRAVEL || rule == EXPIRED_TOKEN_ATTEMPTS
    }
}

/// The audience of every token of the generator's issuers, which the whole API (every path
/// under [`API_PREFIX`]) expects: `[audiences] "/api" = "api"` in [`crate::GenConfig::posture`].
pub(crate) const API_AUDIENCE: &str = "api";
pub(crate) const API_PREFIX: &str = "/api";
/// An identity provider nobody configured, whose tokens a gateway still accepts (one that
/// came with an acquired shop, say).
pub(crate) const UNCONFIGURED_ISSUER: &str = "https://login.acquired-shop.example";

/// A token as the generator keeps it: the compact text, built once, and the claims that
/// decide what the rules think of it.
#[derive(Clone)]
pub(crate) struct Minted {
    pub text: Arc<str>,
    pub jti: Arc<str>,
    /// `iss|sub`, as the engine names the subject.
    pub subject: Arc<str>,
    /// Epoch seconds.
    pub iat: i64,
    pub exp: i64,
    /// The index in [`ISSUERS`] of the issuer whose key really signed it; `None` for every
    /// token that does not verify (forged, unsigned, another `alg`, another issuer).
    pub signer: Option<usize>,
}

/// What a token's signature segment holds.
#[derive(Clone, Copy)]
pub(crate) enum Seal<'a> {
    /// A real signature by the issuer's key: the only kind that verifies.
    Genuine,
    /// Random bytes of the right length, under the issuer's `alg` and `kid`.
    Forged,
    /// The signature segment of this other token, over claims that are not its own.
    CopiedFrom(&'a str),
    /// Nothing: an empty signature segment.
    Empty,
}

/// What goes into a token besides the claims every token has.
pub(crate) struct Spec<'a> {
    pub user: u64,
    pub iat: i64,
    pub exp: i64,
    /// Also decides the issuer, and so the key and `alg` ([`issuer_for`]).
    pub client: &'a Client,
    /// A header `alg` other than the issuer's (`none`), written without a `kid`.
    pub alg: Option<&'a str>,
    pub seal: Seal<'a>,
    pub scope: Option<&'a str>,
    /// Reuse this id (a forged copy of an existing token).
    pub jti: Option<&'a str>,
    /// Add an `email` claim: a claim name [posture] `sensitive_claims` lists by default.
    pub email: bool,
    /// An issuer other than the client's, one tokenwatch is not configured for: its tokens
    /// carry its own `kid` and cannot verify.
    pub iss: Option<&'a str>,
    /// An audience other than `api` (a token minted for another API).
    pub aud: Option<&'a str>,
}

impl<'a> Spec<'a> {
    pub(crate) fn normal(user: u64, iat: i64, lifetime_s: i64, client: &'a Client) -> Self {
        Spec {
            user,
            iat,
            exp: iat + lifetime_s,
            client,
            alg: None,
            seal: Seal::Genuine,
            scope: None,
            jti: None,
            email: false,
            iss: None,
            aud: None,
        }
    }
}

/// Issues tokens: unique deterministic ids, signed with the seed's keys ([`Keys`]).
pub(crate) struct Mint {
    key: u64,
    counter: u64,
    keys: Arc<Keys>,
}

impl Mint {
    pub(crate) fn new(seed: u64) -> Self {
        Mint {
            key: mix64(seed ^ 0x6a09_e667_f3bc_c908),
            counter: 0,
            keys: Keys::for_seed(seed),
        }
    }

    #[cfg(test)]
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A UUID-shaped id. The last 16 hex digits are a bijection of a counter, so ids never
    /// repeat within a run; the rest only makes them look like the real thing.
    fn next_jti(&mut self) -> String {
        self.counter += 1;
        let unique = mix64(self.counter ^ self.key);
        let dress = mix64(unique ^ 0x3c6e_f372_fe94_f82b);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            dress >> 32,
            (dress >> 16) & 0xffff,
            dress & 0xfff,
            unique >> 48,
            unique & 0xffff_ffff_ffff
        )
    }

    pub(crate) fn issue(&mut self, rng: &mut Rng, spec: &Spec<'_>) -> Minted {
        let jti = match spec.jti {
            Some(j) => j.to_owned(),
            None => self.next_jti(),
        };
        let issuer = issuer_for(spec.client.kind);
        let Issuer { iss, alg } = &ISSUERS[issuer];
        let header = match (spec.alg, spec.iss) {
            (Some(other), _) => json!({"alg": other, "typ": "JWT"}),
            (None, Some(_)) => json!({"alg": alg.name(), "typ": "JWT", "kid": "acquired-2019"}),
            (None, None) => json!({"alg": alg.name(), "typ": "JWT", "kid": self.keys.kid(issuer)}),
        };
        let iss = spec.iss.unwrap_or(iss);
        let sub = format!("user-{}", spec.user);
        let subject: Arc<str> = format!("{iss}|{sub}").into();
        let sid = mix64(rng.next_u64());
        let mut claims = json!({
            "iss": iss,
            "sub": sub,
            "aud": spec.aud.unwrap_or(API_AUDIENCE),
            "iat": spec.iat,
            "exp": spec.exp,
            "auth_time": spec.iat - rng.range(0, 7200),
            "jti": jti,
            "azp": spec.client.azp,
            "sid": format!("{:016x}{:016x}", sid, mix64(sid)),
            "scope": spec.scope.unwrap_or(spec.client.scope),
        });
        if spec.email {
            claims["email"] = json!(format!("user-{}@example.com", spec.user));
        }
        // "header.claims.": the signing input, and the separator before the signature.
        let mut text = tokenwatch_core::token::encode_unsigned_parts(&header, &claims, &[]);
        let input = &text[..text.len() - 1];
        // Only the issuer's own key under its own `alg` makes a genuine signature.
        let signer = match spec.seal {
            Seal::Genuine if spec.alg.is_none() && spec.iss.is_none() => Some(issuer),
            _ => None,
        };
        let sig = match spec.seal {
            Seal::Genuine if signer.is_some() => self.keys.sign(issuer, input.as_bytes()),
            Seal::Genuine | Seal::Forged => {
                // (An HS* token's MAC is 32-64 bytes; random ones, since nobody here holds a
                // secret of the issuer's.)
                let len = match spec.alg {
                    Some(a) if a.starts_with("HS") => 32,
                    _ => alg.signature_len(),
                };
                let mut sig = vec![0u8; len];
                rng.fill(&mut sig);
                sig
            }
            Seal::CopiedFrom(other) => {
                text.push_str(other.rsplit('.').next().unwrap_or(""));
                Vec::new()
            }
            Seal::Empty => Vec::new(),
        };
        URL_SAFE_NO_PAD.encode_string(&sig, &mut text);
        Minted {
            text: text.into(),
            jti: jti.into(),
            subject,
            iat: spec.iat,
            exp: spec.exp,
            signer,
        }
    }
}

/// One scripted request, waiting for its time to come.
pub(crate) struct Scripted {
    pub ts_ms: i64,
    /// Order among requests of the same millisecond: the order they were scripted in.
    pub seq: u64,
    pub ip: Arc<str>,
    pub method: &'static str,
    pub path: Box<str>,
    pub status: u16,
    pub ua: &'static str,
    /// The token of the Authorization header.
    pub token: Option<Minted>,
    /// The token written into `path`'s query, if any.
    pub in_url: Option<Minted>,
    /// Sent over plain HTTP.
    pub http: bool,
    pub labels: Vec<Label>,
}

impl PartialEq for Scripted {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scripted {}
impl PartialOrd for Scripted {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scripted {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts_ms, self.seq).cmp(&(other.ts_ms, other.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    TokenReplay,
    ImpossibleTravel,
    ExpiredStorm,
    ExpiredAccepted,
    Unsigned,
    TokenInUrl,
    LongLived,
    RevokedUsed,
    /// One token from exactly two networks.
    NearTwoNetworks,
    /// London to Boxford within minutes: fast, but within one region. (The cities named
    /// here and below are the built-in tables'; see [`Networks`] for a `--geoip` database.)
    NearRegionalHop,
    /// London, then Milton (US) 14 hours later: far, but slower than an airliner.
    NearSlowTravel,
    /// Forged copies of a live token from many networks, all rejected by the gateway.
    NearForgedCopies,
    /// Forged copies of a victim's live token (its `jti`) on endpoints nobody authenticates
    /// (404, `/healthz`, CORS preflights), one per attacker network.
    DecoyForgedReplay,
    /// A forged copy of a victim's token, sent to a public endpoint from far away minutes after
    /// the victim's genuine request in London.
    DecoyForgedTravel,
    /// The attacker's own genuine token in the header, and a forged copy of a victim's token
    /// in the query string.
    DecoyForgedUrl,
    /// An expired forged copy of a victim's token (`alg: none`, or a bad signature) on a
    /// public endpoint.
    DecoyForgedExpired,
    /// A genuine token that carries an `email` claim, used as usual.
    PostureSensitiveClaims,
    /// A client that calls the API's plain-HTTP listener once, token and all.
    PostureOverHttp,
    /// An HS* token under a configured (RS/ES-signing) issuer's name, or an unregistered
    /// `alg`: a downgrade or algorithm-confusion attempt, accepted or not.
    PostureWeakAlgorithm,
    /// Tokens of an issuer tokenwatch is not configured for, accepted by the gateway.
    PostureUnknownIssuer,
    /// A genuine token minted for another API (`aud`), accepted on this one.
    PostureAudienceMismatch,
    /// A forged token (the issuer's `kid`, a signature nobody made) served on the protected
    /// API: the gateway does not check signatures there.
    PostureInvalidSignature,
}

impl Scenario {
    /// Subjects the scenario needs: its own, and for [`Scenario::DecoyForgedUrl`] the
    /// attacker's account.
    pub(crate) fn subjects(self) -> u64 {
        if self == Scenario::DecoyForgedUrl {
            2
        } else {
            1
        }
    }

    /// The name a decoy's labels carry in their `decoy` field.
    pub(crate) fn decoy_name(self) -> Option<&'static str> {
        match self {
            Scenario::DecoyForgedReplay => Some("forged-replay"),
            Scenario::DecoyForgedTravel => Some("forged-travel"),
            Scenario::DecoyForgedUrl => Some("forged-url"),
            Scenario::DecoyForgedExpired => Some("forged-expired"),
            _ => None,
        }
    }
}

pub(crate) const ATTACKS: [Scenario; 8] = [
    Scenario::TokenReplay,
    Scenario::ImpossibleTravel,
    Scenario::ExpiredStorm,
    Scenario::ExpiredAccepted,
    Scenario::Unsigned,
    Scenario::TokenInUrl,
    Scenario::LongLived,
    Scenario::RevokedUsed,
];

pub(crate) const NEAR_MISSES: [Scenario; 4] = [
    Scenario::NearTwoNetworks,
    Scenario::NearRegionalHop,
    Scenario::NearSlowTravel,
    Scenario::NearForgedCopies,
];

/// Posture findings: a token or a request that shows a weakness, not an attack.
/// (The seventh posture finding, a stale signing key, is not a script: the generator labels
/// the first use of each issuer's key past the maximum key age, see `Generator::stale_keys`.)
pub(crate) const POSTURE: [Scenario; 6] = [
    Scenario::PostureSensitiveClaims,
    Scenario::PostureOverHttp,
    Scenario::PostureWeakAlgorithm,
    Scenario::PostureUnknownIssuer,
    Scenario::PostureAudienceMismatch,
    Scenario::PostureInvalidSignature,
];

pub(crate) const DECOYS: [Scenario; 4] = [
    Scenario::DecoyForgedReplay,
    Scenario::DecoyForgedTravel,
    Scenario::DecoyForgedUrl,
    Scenario::DecoyForgedExpired,
];

/// Endpoints that gateways answer without authenticating anyone, and their answers: an
/// unmatched route, the health check, CORS preflights. Gateways still log the
/// `Authorization` header of these requests.
const PUBLIC: &[(&str, &str, u16)] = &[
    ("GET", "/does-not-exist", 404),
    ("GET", "/api/v1/admin/export", 404),
    ("GET", "/healthz", 200),
    ("OPTIONS", "/api/v1/orders", 204),
    ("OPTIONS", "/api/v1/users/me", 204),
];

const ATTACKER_UAS: &[&str] = &[
    "python-requests/2.31.0",
    "curl/8.4.0",
    "Go-http-client/1.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
];

const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;

/// Writes one scenario's requests. Times are epoch ms; `t0` is when the script starts.
pub(crate) struct Scene<'a> {
    nets: &'a Networks,
    rng: &'a mut Rng,
    mint: &'a mut Mint,
    user: u64,
    client: &'static Client,
    /// Set while a decoy plays: the `decoy` its labels carry.
    decoy: Option<&'static str>,
    out: Vec<Scripted>,
    path: String,
}

impl<'a> Scene<'a> {
    pub(crate) fn new(nets: &'a Networks, rng: &'a mut Rng, mint: &'a mut Mint, user: u64) -> Self {
        let client = &CLIENTS[rng.below(CLIENTS.len() as u64) as usize];
        Scene {
            nets,
            rng,
            mint,
            user,
            client,
            decoy: None,
            out: Vec::new(),
            path: String::new(),
        }
    }

    /// Plays `kind` from `t0`; returns the requests in time order.
    pub(crate) fn play(mut self, kind: Scenario, t0: i64) -> Vec<Scripted> {
        self.decoy = kind.decoy_name();
        match kind {
            Scenario::TokenReplay => self.token_replay(t0),
            Scenario::ImpossibleTravel => self.impossible_travel(t0),
            Scenario::ExpiredStorm => self.expired_storm(t0),
            Scenario::ExpiredAccepted => self.expired_accepted(t0),
            Scenario::Unsigned => self.unsigned(t0),
            Scenario::TokenInUrl => self.token_in_url(t0),
            Scenario::LongLived => self.long_lived(t0),
            Scenario::RevokedUsed => self.revoked_used(t0),
            Scenario::NearTwoNetworks => self.near_two_networks(t0),
            Scenario::NearRegionalHop => self.near_regional_hop(t0),
            Scenario::NearSlowTravel => self.near_slow_travel(t0),
            Scenario::NearForgedCopies => self.near_forged_copies(t0),
            Scenario::DecoyForgedReplay => self.decoy_forged_replay(t0),
            Scenario::DecoyForgedTravel => self.decoy_forged_travel(t0),
            Scenario::DecoyForgedUrl => self.decoy_forged_url(t0),
            Scenario::DecoyForgedExpired => self.decoy_forged_expired(t0),
            Scenario::PostureSensitiveClaims => self.sensitive_claims(t0),
            Scenario::PostureOverHttp => self.over_http(t0),
            Scenario::PostureWeakAlgorithm => self.weak_algorithm(t0),
            Scenario::PostureUnknownIssuer => self.unknown_issuer(t0),
            Scenario::PostureAudienceMismatch => self.audience_mismatch(t0),
            Scenario::PostureInvalidSignature => self.invalid_signature(t0),
        }
        self.out.sort_by_key(|s| s.ts_ms);
        self.out
    }

    // ---- building blocks ----

    fn secs(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.range(lo * SEC, hi * SEC)
    }

    fn token(&mut self, iat: i64, lifetime_s: i64) -> Minted {
        let spec = Spec::normal(self.user, iat, lifetime_s, self.client);
        self.mint.issue(self.rng, &spec)
    }

    /// A token issued between `lo` and `hi` seconds before `t0` (ms).
    fn issued_before(&mut self, t0: i64, lo: i64, hi: i64, lifetime_s: i64) -> Minted {
        let iat = t0.div_euclid(1000) - self.rng.range(lo, hi);
        self.token(iat, lifetime_s)
    }

    /// A fresh token fetched at `t` (ms): issued that second, so strictly after any
    /// revocation that happened at least a second before.
    fn refreshed(&mut self, t: i64) -> Minted {
        self.token(t.div_euclid(1000), self.client.lifetime_s)
    }

    fn ip_in(&mut self, net: Net) -> Arc<str> {
        net.random(self.rng).text().into()
    }

    /// The victim's fixed line somewhere the database locates.
    fn home(&mut self) -> Arc<str> {
        let weights: Vec<u32> = self.nets.regions.iter().map(|r| r.weight).collect();
        let region = &self.nets.regions[self.rng.weighted(&weights)];
        let net = self.rng.pick(&region.home);
        self.ip_in(net)
    }

    /// The travel victim's fixed line (with the built-in tables, London).
    fn victim(&mut self) -> Arc<str> {
        let net = self.rng.pick(&self.nets.victim);
        self.ip_in(net)
    }

    /// `n` attacker addresses in distinct networks, none of them located.
    fn attackers(&mut self, n: usize) -> Vec<Arc<str>> {
        let mut pool: Vec<Net> = self.nets.attacker_v4.clone();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if self.rng.chance(0.25) || pool.is_empty() {
                // A random /64 in a /32: distinct from the others for all practical purposes.
                let net = self.rng.pick(&self.nets.attacker_v6);
                out.push(self.ip_in(net));
            } else {
                let i = self.rng.below(pool.len() as u64) as usize;
                let net = pool.swap_remove(i);
                out.push(self.ip_in(net));
            }
        }
        out
    }

    /// An ordinary request at `t`. `status`: `None` for the endpoint's own answer (never 401
    /// or 403, so the request is accepted), or a forced status.
    fn request(
        &mut self,
        t: i64,
        ip: &Arc<str>,
        token: Option<&Minted>,
        status: Option<u16>,
        ua: &'static str,
    ) -> usize {
        let (method, usual) = pick_request(self.rng, t.div_euclid(1000), &mut self.path);
        let status = status.unwrap_or(if matches!(usual, 401 | 403) { 200 } else { usual });
        self.push(
            t,
            ip,
            method,
            self.path.clone().into_boxed_str(),
            status,
            token.cloned(),
            ua,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        t: i64,
        ip: &Arc<str>,
        method: &'static str,
        path: Box<str>,
        status: u16,
        token: Option<Minted>,
        ua: &'static str,
    ) -> usize {
        self.out.push(Scripted {
            ts_ms: t,
            seq: 0,
            ip: ip.clone(),
            method,
            path,
            status,
            ua,
            token,
            in_url: None,
            http: false,
            labels: Vec::new(),
        });
        self.out.len() - 1
    }

    /// The line at `at` must fire `rule` on `token` (its id, or its subject).
    fn label(&mut self, at: usize, rule: &str, token: &Minted) {
        self.push_label(at, rule, token, Expect::Fire);
    }

    /// The line at `at` is where `rule` would fire on `token` if forged tokens counted: it
    /// must never fire there. Only decoys have these.
    fn label_decoy(&mut self, at: usize, rule: &str, token: &Minted) {
        self.push_label(at, rule, token, Expect::Never);
    }

    fn push_label(&mut self, at: usize, rule: &str, token: &Minted, expect: Expect) {
        let ts = self.out[at].ts_ms;
        self.out[at].labels.push(Label {
            rule: rule.to_owned(),
            token_id: (!rule::keyed_by_subject(rule)).then(|| token.jti.to_string()),
            subject: Some(token.subject.to_string()),
            ts,
            expect,
            decoy: (expect == Expect::Never).then(|| self.decoy.unwrap_or("decoy").to_owned()),
        });
    }

    fn attacker_ua(&mut self) -> &'static str {
        self.rng.pick(ATTACKER_UAS)
    }

    /// The owner's next call with a revoked token is refused; the client fetches a new token
    /// and retries at once.
    fn refused_then_refresh(&mut self, t: i64, ip: &Arc<str>, old: &Minted) -> i64 {
        let ua = self.client.ua;
        self.request(t, ip, Some(old), Some(401), ua);
        let t = t + self.rng.range(200, 900);
        let fresh = self.refreshed(t);
        self.request(t, ip, Some(&fresh), None, ua);
        t
    }

    // ---- the attacks ----

    /// A token copied off the victim and replayed from two or three other networks.
    fn token_replay(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 180, 900);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        if self.rng.chance(0.5) {
            t += self.secs(5, 40);
            self.request(t, &home, Some(&tok), None, ua);
        }
        let att = self.attackers(3);
        let aua = self.attacker_ua();
        t += self.secs(20, 90);
        self.request(t, &att[0], Some(&tok), None, aua);
        t += self.secs(30, 120);
        let fired = self.request(t, &att[1], Some(&tok), None, aua);
        self.label(fired, rule::TOKEN_REPLAY, &tok);
        let t_fire = t;
        if self.rng.chance(0.5) {
            // A fourth network, too late: the gateway already refuses the token.
            t += self.secs(10, 60);
            self.request(t, &att[2], Some(&tok), Some(401), aua);
        }
        let t = t_fire + self.secs(60, 180);
        self.refused_then_refresh(t, &home, &tok);
    }

    /// The victim in London, then the same subject from Changchun twenty minutes later (with
    /// the built-in tables; else the victim and far networks [`Networks`] chose).
    fn impossible_travel(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.victim();
        // A one-hour token, so the thief's use twenty minutes on is not also an expired one.
        let tok = self.issued_before(t0, 60, 300, 3600);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        for _ in 0..self.rng.range(1, 4) {
            t += self.secs(20, 80);
            self.request(t, &home, Some(&tok), None, ua);
        }
        let far = self.ip_in(self.nets.far);
        let aua = self.attacker_ua();
        let t_fire = t0 + 20 * MIN + self.secs(-30, 30);
        let fired = self.request(t_fire, &far, Some(&tok), None, aua);
        self.label(fired, rule::IMPOSSIBLE_TRAVEL, &tok);
        // The subject is revoked: the thief is refused ...
        let t = t_fire + self.secs(5, 60);
        self.request(t, &far, Some(&tok), Some(401), aua);
        // ... and so is the owner, who is now on mobile data (no location: a London request
        // right after the Changchun one would itself be impossible travel), gets a token
        // issued after the revocation and carries on.
        let mobile = self.ip_in(self.nets.cgnat);
        let t = t_fire + self.secs(180, 360);
        let mut t = self.refused_then_refresh(t, &mobile, &tok);
        let fresh = self.out.last().and_then(|s| s.token.clone());
        for _ in 0..self.rng.range(0, 3) {
            t += self.secs(10, 60);
            let (method, status) = pick_request(self.rng, t / 1000, &mut self.path);
            let status = if matches!(status, 401 | 403) { 200 } else { status };
            let path = self.path.clone().into_boxed_str();
            self.push(t, &mobile, method, path, status, fresh.clone(), ua);
        }
    }

    /// A broken client (or a script) hammering the API with a long-expired token.
    fn expired_storm(&mut self, t0: i64) {
        let ua = if self.rng.chance(0.5) {
            self.client.ua
        } else {
            self.attacker_ua()
        };
        let ip = if self.rng.chance(0.5) {
            self.home()
        } else {
            self.attackers(1).remove(0)
        };
        let tok = self.issued_before(t0, 3600, 7200, 900);
        let n = self.rng.range(6, 9);
        let mut t = t0;
        for i in 0..n {
            let at = self.request(t, &ip, Some(&tok), Some(401), ua);
            if i == 4 {
                self.label(at, rule::EXPIRED_TOKEN_ATTEMPTS, &tok);
            }
            t += self.secs(3, 17);
        }
    }

    /// A gateway route that forgot to check `exp` lets an hour-old token through.
    fn expired_accepted(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 1800, 5400, 900);
        let fired = self.request(t0, &home, Some(&tok), Some(200), ua);
        self.label(fired, rule::EXPIRED_TOKEN_ACCEPTED, &tok);
        let t = t0 + self.secs(10, 60);
        let mut t = self.refused_then_refresh(t, &home, &tok);
        let fresh = self.out.last().and_then(|s| s.token.clone());
        for _ in 0..self.rng.range(0, 3) {
            t += self.secs(5, 30);
            let (method, _) = pick_request(self.rng, t / 1000, &mut self.path);
            let path = self.path.clone().into_boxed_str();
            self.push(t, &home, method, path, 200, fresh.clone(), ua);
        }
    }

    /// A token forged with `alg: none` (or a stripped signature), claiming admin scope.
    fn unsigned(&mut self, t0: i64) {
        // `None`: the issuer's own `alg`, with the signature stripped.
        let alg = self.rng.pick(&[Some("none"), Some("None"), Some("NONE"), None]);
        let iat = t0 / 1000 - self.rng.range(0, 60);
        let spec = Spec {
            user: self.user,
            iat,
            exp: iat + 900,
            client: self.client,
            alg,
            seal: Seal::Empty,
            scope: Some("admin users:write orders:write"),
            jti: None,
            email: false,
            iss: None,
            aud: None,
        };
        let tok = self.mint.issue(self.rng, &spec);
        let ip = self.attackers(1).remove(0);
        let ua = self.attacker_ua();
        // Most gateways refuse it; the rule fires either way.
        let status = if self.rng.chance(0.6) { 401 } else { 200 };
        let mut t = t0;
        for i in 0..self.rng.range(1, 4) {
            let at = self.request(t, &ip, Some(&tok), Some(status), ua);
            if i == 0 {
                self.label(at, rule::UNSIGNED_TOKEN, &tok);
            }
            t += self.secs(2, 30);
        }
    }

    /// A client that puts its token in the query string (where every proxy logs it).
    fn token_in_url(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 300, 900);
        self.request(t0, &home, Some(&tok), None, ua);
        let t = t0 + self.secs(10, 60);
        let prefix = self.rng.pick(&[
            "/api/v1/reports/export?format=csv&access_token=",
            "/api/v1/files/download?id=F-20931&token=",
            "/api/v1/stream?access_token=",
        ]);
        let path = format!("{prefix}{}", tok.text).into_boxed_str();
        let at = self.push(t, &home, "GET", path, 200, None, ua);
        self.out[at].in_url = Some(tok.clone());
        self.label(at, rule::TOKEN_IN_URL, &tok);
        let t = t + self.secs(60, 180);
        self.refused_then_refresh(t, &home, &tok);
    }

    /// A developer's week-long token.
    fn long_lived(&mut self, t0: i64) {
        let client = CLIENTS
            .iter()
            .find(|c| c.kind == ClientKind::Cli)
            .unwrap_or(self.client);
        let ua = client.ua;
        let home = self.home();
        let iat = t0 / 1000 - self.rng.range(0, 3 * 86_400);
        let spec = Spec::normal(self.user, iat, 7 * 86_400, client);
        let tok = self.mint.issue(self.rng, &spec);
        let mut t = t0;
        for i in 0..self.rng.range(2, 5) {
            let at = self.request(t, &home, Some(&tok), None, ua);
            if i == 0 {
                self.label(at, rule::EXCESSIVE_LIFETIME, &tok);
            }
            t += self.secs(5, 90);
        }
    }

    /// A replayed token gets revoked, and a gateway that missed the revocation accepts it
    /// from the owner's home a minute later.
    fn revoked_used(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 120, 900);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        let att = self.attackers(2);
        let aua = self.attacker_ua();
        t += self.secs(20, 60);
        self.request(t, &att[0], Some(&tok), None, aua);
        t += self.secs(30, 60);
        let fired = self.request(t, &att[1], Some(&tok), None, aua);
        self.label(fired, rule::TOKEN_REPLAY, &tok);
        t += self.secs(55, 65);
        let used = self.request(t, &home, Some(&tok), Some(200), ua);
        self.label(used, rule::REVOKED_TOKEN_USED, &tok);
        let t = t + self.secs(60, 120);
        self.refused_then_refresh(t, &home, &tok);
    }

    // ---- posture findings ----

    /// A client whose identity provider puts the user's email into the access token.
    fn sensitive_claims(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let iat = t0 / 1000 - self.rng.range(30, 300);
        let spec = Spec {
            email: true,
            ..Spec::normal(self.user, iat, 900, self.client)
        };
        let tok = self.mint.issue(self.rng, &spec);
        let mut t = t0;
        for i in 0..self.rng.range(1, 4) {
            let at = self.request(t, &home, Some(&tok), None, ua);
            if i == 0 {
                self.label(at, rule::SENSITIVE_CLAIMS, &tok);
            }
            t += self.secs(5, 90);
        }
    }

    /// A genuine token used over HTTPS, then once over plain HTTP (a misconfigured client).
    fn over_http(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 300, 900);
        self.request(t0, &home, Some(&tok), None, ua);
        let t = t0 + self.secs(5, 60);
        let at = self.request(t, &home, Some(&tok), None, ua);
        self.out[at].http = true;
        self.label(at, rule::TOKEN_OVER_HTTP, &tok);
    }

    /// 1-3 requests with `tok` from `ip`, the first labelled `rule`; `status` as in
    /// [`Self::request`] (the first is forced to `first_status` when given).
    #[allow(clippy::too_many_arguments)]
    fn uses(
        &mut self,
        t0: i64,
        ip: &Arc<str>,
        tok: &Minted,
        first_status: Option<u16>,
        status: Option<u16>,
        ua: &'static str,
        rule: &str,
    ) {
        let mut t = t0;
        for i in 0..self.rng.range(1, 4) {
            let at = self.request(t, ip, Some(tok), if i == 0 { first_status } else { status }, ua);
            if i == 0 {
                self.label(at, rule, tok);
            }
            t += self.secs(3, 60);
        }
    }

    /// Someone who read the issuer's public key (or none) signs an HS* token in its name, or
    /// picks an `alg` no validator should know; most gateways refuse it.
    fn weak_algorithm(&mut self, t0: i64) {
        let alg = self.rng.pick(&["HS256", "HS256", "HS512", "RS1"]);
        let status = Some(if self.rng.chance(0.7) { 401 } else { 200 });
        self.forged_by_attacker(t0, Some(alg), status, status, rule::WEAK_ALGORITHM);
    }

    /// A user of the acquired shop's login, whose tokens the gateway accepts unchecked.
    fn unknown_issuer(&mut self, t0: i64) {
        self.accepted_at_home(t0, Some(UNCONFIGURED_ISSUER), None, rule::UNKNOWN_ISSUER_ACCEPTED);
    }

    /// A genuine token the identity provider minted for the reporting API, used on this one.
    fn audience_mismatch(&mut self, t0: i64) {
        self.accepted_at_home(t0, None, Some("reports-api"), rule::AUDIENCE_MISMATCH);
    }

    /// The subject's token, of issuer `iss` (one without keys here: a signature nobody can
    /// check) or the client's own, for audience `aud`, used 1-3 times from home and accepted.
    fn accepted_at_home(&mut self, t0: i64, iss: Option<&'static str>, aud: Option<&'static str>, rule: &str) {
        let iat = t0 / 1000 - self.rng.range(30, 300);
        let spec = Spec {
            iss,
            aud,
            seal: if iss.is_some() { Seal::Forged } else { Seal::Genuine },
            ..Spec::normal(self.user, iat, 900, self.client)
        };
        let tok = self.mint.issue(self.rng, &spec);
        let (home, ua) = (self.home(), self.client.ua);
        self.uses(t0, &home, &tok, None, None, ua, rule);
    }

    /// A forged token under the issuer's `alg` and `kid`, which a route that skips signature
    /// checks serves (200) all the same.
    fn invalid_signature(&mut self, t0: i64) {
        self.forged_by_attacker(t0, None, Some(200), None, rule::INVALID_SIGNATURE_ACCEPTED);
    }

    /// An attacker's token claiming admin scope for the subject, under `alg` (else the
    /// issuer's own, with its `kid`) with a signature nobody made, used 1-3 times.
    fn forged_by_attacker(
        &mut self,
        t0: i64,
        alg: Option<&'static str>,
        first_status: Option<u16>,
        status: Option<u16>,
        rule: &str,
    ) {
        let iat = t0 / 1000 - self.rng.range(0, 120);
        let spec = Spec {
            alg,
            seal: Seal::Forged,
            scope: Some("admin users:write orders:write"),
            ..Spec::normal(self.user, iat, 900, self.client)
        };
        let tok = self.mint.issue(self.rng, &spec);
        let ip = self.attackers(1).remove(0);
        let ua = self.attacker_ua();
        self.uses(t0, &ip, &tok, first_status, status, ua, rule);
    }

    // ---- the near misses (no labels) ----

    fn near_two_networks(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let other = self.attackers(1).remove(0);
        let tok = self.issued_before(t0, 30, 180, 900);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        for _ in 0..2 {
            t += self.secs(10, 120);
            self.request(t, &other, Some(&tok), None, ua);
        }
        t += self.secs(30, 120);
        self.request(t, &home, Some(&tok), None, ua);
    }

    fn near_regional_hop(&mut self, t0: i64) {
        let ua = self.client.ua;
        let from = self.rng.pick(&self.nets.hop_from);
        let london = self.ip_in(from);
        let boxford = self.ip_in(self.nets.hop_to);
        let tok = self.issued_before(t0, 30, 180, 900);
        let mut t = t0;
        self.request(t, &london, Some(&tok), None, ua);
        t += self.secs(60, 300);
        self.request(t, &boxford, Some(&tok), None, ua);
        t += self.secs(10, 60);
        self.request(t, &boxford, Some(&tok), None, ua);
    }

    fn near_slow_travel(&mut self, t0: i64) {
        let ua = self.client.ua;
        let london = self.ip_in(self.nets.slow_from);
        let tok = self.issued_before(t0, 30, 180, 900);
        let mut t = t0;
        for _ in 0..self.rng.range(1, 3) {
            self.request(t, &london, Some(&tok), None, ua);
            t += self.secs(10, 60);
        }
        // At most ~550 km/h: London to Milton (about 7,700 km) in 14 hours or more.
        let mut t = t0 + self.nets.slow_travel_ms + self.secs(0, 1800);
        let milton = self.ip_in(self.nets.slow_to);
        let issued = t - self.secs(1, 30);
        let fresh = self.refreshed(issued);
        for _ in 0..self.rng.range(1, 3) {
            self.request(t, &milton, Some(&fresh), None, ua);
            t += self.secs(10, 60);
        }
    }

    fn near_forged_copies(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 180, 900);
        let spec = Spec {
            scope: Some("admin orders:write users:write"),
            jti: Some(&tok.jti),
            seal: Seal::Forged,
            ..Spec::normal(self.user, tok.iat, tok.exp - tok.iat, self.client)
        };
        let forged = self.mint.issue(self.rng, &spec);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        let mut nets = self.attackers(3);
        let [a, b] = self.nets.decoys;
        nets.push(self.ip_in(a));
        nets.push(self.ip_in(b));
        let n = self.rng.range(4, 6) as usize;
        let aua = self.attacker_ua();
        for ip in nets.iter().take(n) {
            t += self.secs(10, 40);
            self.request(t, ip, Some(&forged), Some(401), aua);
        }
        t += self.secs(20, 60);
        self.request(t, &home, Some(&tok), None, ua);
    }

    // ---- the decoys: forged tokens, labelled where they must not fire ----
    //
    // Each is labelled (`expect: none`) on the line where the default rules would fire if a
    // request's status were taken as proof that its token is genuine; and, since such a
    // firing revokes the victim's token, on the victim's next genuine request, where
    // `revoked-token-used` would follow. The victim carries on with the genuine token.

    /// A copy of `victim` that cannot verify: its `jti`, subject and times, an admin scope,
    /// and random bytes or the victim's own signature (over claims that are not its own).
    /// `exp_ago_s`: instead, issued and expired that long before `t` (ms).
    fn forge(&mut self, victim: &Minted, t: i64, exp_ago_s: Option<i64>) -> Minted {
        let (iat, exp) = match exp_ago_s {
            Some(ago) => (t / 1000 - ago - 900, t / 1000 - ago),
            None => (victim.iat, victim.exp),
        };
        let seal = if self.rng.chance(0.5) {
            Seal::Forged
        } else {
            Seal::CopiedFrom(&victim.text)
        };
        let spec = Spec {
            scope: Some("admin orders:write users:write"),
            jti: Some(&victim.jti),
            seal,
            ..Spec::normal(self.user, iat, exp - iat, self.client)
        };
        self.mint.issue(self.rng, &spec)
    }

    /// A request to an endpoint no gateway authenticates ([`PUBLIC`]).
    fn public_request(&mut self, t: i64, ip: &Arc<str>, token: &Minted, ua: &'static str) -> usize {
        let (method, path, status) = self.rng.pick(PUBLIC);
        self.push(t, ip, method, path.into(), status, Some(token.clone()), ua)
    }

    /// The victim's genuine request, which an engine fooled by the decoy would take for a
    /// revoked token's use.
    fn victim_carries_on(&mut self, t: i64, ip: &Arc<str>, tok: &Minted) {
        let ua = self.client.ua;
        let at = self.request(t, ip, Some(tok), Some(200), ua);
        self.label_decoy(at, rule::REVOKED_TOKEN_USED, tok);
    }

    /// Reproduction 3 of issue 9: three or four forgeries sharing the victim's `jti` from as
    /// many networks (with the victim's home, the third network on the second forgery).
    fn decoy_forged_replay(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 180, 900);
        self.request(t0, &home, Some(&tok), None, ua);
        let att = self.attackers(4);
        let aua = self.attacker_ua();
        let mut t = t0;
        for (i, ip) in att.iter().take(self.rng.range(3, 5) as usize).enumerate() {
            t += self.secs(10, 40);
            let forged = self.forge(&tok, t, None);
            let at = self.public_request(t, ip, &forged, aua);
            match i {
                1 => self.label_decoy(at, rule::TOKEN_REPLAY, &tok),
                // The token would be revoked by now: this forged use would be its first.
                2 => self.label_decoy(at, rule::REVOKED_TOKEN_USED, &tok),
                _ => {}
            }
        }
        // Within revoked-token-used's 10-minute cooldown: nothing more to label.
        t += self.secs(30, 120);
        self.request(t, &home, Some(&tok), Some(200), ua);
    }

    /// Reproduction 2 of issue 9: the victim in London, a forgery of its token from the far
    /// network (Changchun with the built-in tables) 5 s to 10 min later.
    fn decoy_forged_travel(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.victim();
        let tok = self.issued_before(t0, 60, 300, 3600);
        let mut t = t0;
        self.request(t, &home, Some(&tok), None, ua);
        for _ in 0..self.rng.range(0, 3) {
            t += self.secs(20, 80);
            self.request(t, &home, Some(&tok), None, ua);
        }
        t += self.secs(5, 600);
        let far = self.ip_in(self.nets.far);
        let forged = self.forge(&tok, t, None);
        let aua = self.attacker_ua();
        let at = self.public_request(t, &far, &forged, aua);
        self.label_decoy(at, rule::IMPOSSIBLE_TRAVEL, &tok);
        // Back in London an hour's cooldown later for impossible-travel, but the subject
        // would be revoked: the token's first use after that.
        t += self.secs(60, 300);
        self.victim_carries_on(t, &home, &tok);
    }

    /// Reproduction 4 of issue 9: the attacker's own valid token in the header of an API
    /// call the gateway accepts, a forgery of the victim's token in the query.
    fn decoy_forged_url(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 180, 900);
        self.request(t0, &home, Some(&tok), None, ua);
        let t = t0 + self.secs(10, 60);
        let own_spec = Spec::normal(self.user + 1, t / 1000 - self.rng.range(10, 300), 900, self.client);
        let own = self.mint.issue(self.rng, &own_spec);
        let forged = self.forge(&tok, t, None);
        let prefix = self.rng.pick(&[
            "/api/v1/orders?x=",
            "/api/v1/search?q=usb-c+cable&ref=",
            "/api/v1/orders?page=2&access_token=",
        ]);
        let path = format!("{prefix}{}", forged.text).into_boxed_str();
        let (ip, aua) = (self.attackers(1).remove(0), self.attacker_ua());
        let at = self.push(t, &ip, "GET", path, 200, Some(own.clone()), aua);
        self.out[at].in_url = Some(forged);
        self.label_decoy(at, rule::TOKEN_IN_URL, &tok);
        let t = t + self.secs(30, 120);
        self.victim_carries_on(t, &home, &tok);
    }

    /// Reproduction 1 of issue 9: a forgery carrying the victim's `jti` and an `exp` long
    /// past, on a public endpoint. One with `alg: none` is also unsigned, which the
    /// `unsigned-token` alert rightly reports.
    fn decoy_forged_expired(&mut self, t0: i64) {
        let ua = self.client.ua;
        let home = self.home();
        let tok = self.issued_before(t0, 30, 180, 900);
        self.request(t0, &home, Some(&tok), None, ua);
        let t = t0 + self.secs(10, 60);
        let ago = self.rng.range(1800, 7200);
        let forged = match self.rng.pick(&[Some("none"), Some("None"), Some("NONE"), None]) {
            None => self.forge(&tok, t, Some(ago)),
            Some(alg) => {
                let iat = t / 1000 - ago - 900;
                let spec = Spec {
                    alg: Some(alg),
                    seal: Seal::Empty,
                    scope: Some("admin orders:write users:write"),
                    jti: Some(&tok.jti),
                    ..Spec::normal(self.user, iat, 900, self.client)
                };
                self.mint.issue(self.rng, &spec)
            }
        };
        let (ip, aua) = (self.attackers(1).remove(0), self.attacker_ua());
        let at = self.public_request(t, &ip, &forged, aua);
        self.label_decoy(at, rule::EXPIRED_TOKEN_ACCEPTED, &tok);
        if forged.text.ends_with('.') {
            self.label(at, rule::UNSIGNED_TOKEN, &tok);
        }
        let t = t + self.secs(30, 120);
        self.victim_carries_on(t, &home, &tok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jtis_are_unique_and_uuid_shaped() {
        let mut m = Mint::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            let j = m.next_jti();
            assert_eq!(j.len(), 36, "{j}");
            assert_eq!(j.matches('-').count(), 4);
            assert!(seen.insert(j));
        }
    }

    #[test]
    fn minted_tokens_decode_to_what_was_asked() {
        let (mut rng, mut mint) = (Rng::new(2), Mint::new(2));
        let t = mint.issue(&mut rng, &Spec::normal(42, 1_795_910_400, 900, &CLIENTS[0]));
        assert!((700..900).contains(&t.text.len()), "{}", t.text.len());
        let info = tokenwatch_core::token::decode(tokenwatch_core::token::RawToken::new(&t.text), &[]).unwrap();
        assert_eq!(&*info.token_id, &*t.jti);
        assert_eq!(&*info.subject, "https://idp.example.com|user-42");
        assert_eq!(info.lifetime(), Some(900));
        assert!(!info.unsigned);
        let spec = Spec {
            alg: Some("none"),
            seal: Seal::Empty,
            ..Spec::normal(42, 1, 900, &CLIENTS[0])
        };
        let u = mint.issue(&mut rng, &spec);
        assert!(u.text.ends_with('.'));
        assert!(
            tokenwatch_core::token::decode(tokenwatch_core::token::RawToken::new(&u.text), &[])
                .unwrap()
                .unsigned
        );
    }

    #[test]
    fn every_scenario_is_time_ordered_and_labels_sit_on_their_requests() {
        for (i, kind) in ATTACKS
            .iter()
            .chain(&NEAR_MISSES)
            .chain(&DECOYS)
            .chain(&POSTURE)
            .enumerate()
        {
            let (mut rng, mut mint) = (Rng::new(i as u64), Mint::new(1));
            let t0 = 1_795_910_400_000;
            let script = Scene::new(&Networks::builtin(), &mut rng, &mut mint, 5000).play(*kind, t0);
            assert!(script.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms), "{kind:?}");
            assert!(script[0].ts_ms >= t0);
            let labels = script.iter().flat_map(|s| &s.labels);
            let fire = labels.clone().filter(|l| l.expect == Expect::Fire).count();
            let never = labels.clone().filter(|l| l.expect == Expect::Never).count();
            let want = match kind {
                Scenario::RevokedUsed => (2, 0),
                k if ATTACKS.contains(k) || POSTURE.contains(k) => (1, 0),
                // `unsigned-token` fires on an `alg: none` forgery.
                Scenario::DecoyForgedExpired => (fire.min(1), 2),
                k if DECOYS.contains(k) => (0, 2),
                _ => (0, 0),
            };
            assert_eq!((fire, never), want, "{kind:?}");
            assert!(labels.clone().all(|l| (l.expect == Expect::Never) == l.decoy.is_some()));
            assert!(labels
                .clone()
                .all(|l| l.decoy.as_deref() == kind.decoy_name() || l.expect == Expect::Fire));
            for s in &script {
                for l in &s.labels {
                    assert_eq!(l.ts, s.ts_ms);
                }
            }
        }
    }
}
