//! Injected attacks and near misses: short scripts of requests with the labels they must raise.
//!
//! Each scenario plays out on a subject of its own (`user-<n>` beyond the normal users) with
//! tokens of its own, so nothing the ordinary traffic does can add to or take from its
//! labels, and its labels are exactly the firings the default rules produce. A script also
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

use serde_json::json;

use super::net::{Net, Networks};
use super::rng::{mix64, Rng};
use super::traffic::{pick_request, Client, ClientKind, CLIENTS};
use super::Label;

pub(crate) const ISSUER: &str = "https://idp.example.com";

/// Rule ids of the engine's default rules, as labels name them.
pub mod rule {
    pub const TOKEN_REPLAY: &str = "token-replay";
    pub const IMPOSSIBLE_TRAVEL: &str = "impossible-travel";
    pub const EXPIRED_TOKEN_ATTEMPTS: &str = "expired-token-attempts";
    pub const EXPIRED_TOKEN_ACCEPTED: &str = "expired-token-accepted";
    pub const UNSIGNED_TOKEN: &str = "unsigned-token";
    pub const TOKEN_IN_URL: &str = "token-in-url";
    pub const EXCESSIVE_LIFETIME: &str = "excessive-lifetime";
    pub const REVOKED_TOKEN_USED: &str = "revoked-token-used";

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

    /// Rules keyed by subject; every other rule is keyed by token id.
    pub fn keyed_by_subject(rule: &str) -> bool {
        rule == IMPOSSIBLE_TRAVEL || rule == EXPIRED_TOKEN_ATTEMPTS
    }
}

/// A token as the generator keeps it: the compact text, built once, and the claims that
/// decide what the rules think of it.
#[derive(Clone)]
pub(crate) struct Minted {
    pub text: Arc<str>,
    pub jti: Arc<str>,
    /// Epoch seconds.
    pub iat: i64,
    pub exp: i64,
}

/// What goes into a token besides the claims every token has.
pub(crate) struct Spec<'a> {
    pub user: u64,
    pub iat: i64,
    pub exp: i64,
    pub client: &'a Client,
    /// Header `alg`; `RS256` for every honest token.
    pub alg: &'a str,
    /// False for an empty signature segment.
    pub signed: bool,
    pub scope: Option<&'a str>,
    /// Reuse this id (a forged copy of an existing token).
    pub jti: Option<&'a str>,
}

impl<'a> Spec<'a> {
    pub(crate) fn normal(user: u64, iat: i64, lifetime_s: i64, client: &'a Client) -> Self {
        Spec {
            user,
            iat,
            exp: iat + lifetime_s,
            client,
            alg: "RS256",
            signed: true,
            scope: None,
            jti: None,
        }
    }
}

/// Issues tokens: unique deterministic ids and RS256-sized random signatures.
pub(crate) struct Mint {
    key: u64,
    counter: u64,
}

impl Mint {
    pub(crate) fn new(seed: u64) -> Self {
        Mint {
            key: mix64(seed ^ 0x6a09_e667_f3bc_c908),
            counter: 0,
        }
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
        let header = if spec.alg == "RS256" {
            json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
        } else {
            json!({"alg": spec.alg, "typ": "JWT"})
        };
        let sid = mix64(rng.next_u64());
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("user-{}", spec.user),
            "aud": "api",
            "iat": spec.iat,
            "exp": spec.exp,
            "auth_time": spec.iat - rng.range(0, 7200),
            "jti": jti,
            "azp": spec.client.azp,
            "sid": format!("{:016x}{:016x}", sid, mix64(sid)),
            "scope": spec.scope.unwrap_or(spec.client.scope),
        });
        let mut sig = [0u8; 256];
        let sig: &[u8] = if spec.signed {
            rng.fill(&mut sig);
            &sig
        } else {
            &[]
        };
        let text = crate::token::encode_unsigned_parts(&header, &claims, sig);
        Minted {
            text: text.into(),
            jti: jti.into(),
            iat: spec.iat,
            exp: spec.exp,
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
    pub token: Option<Arc<str>>,
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
    subject: String,
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
            subject: format!("{ISSUER}|user-{user}"),
            out: Vec::new(),
            path: String::new(),
        }
    }

    /// Plays `kind` from `t0`; returns the requests in time order.
    pub(crate) fn play(mut self, kind: Scenario, t0: i64) -> Vec<Scripted> {
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
            token.map(|m| m.text.clone()),
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
        token: Option<Arc<str>>,
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
            labels: Vec::new(),
        });
        self.out.len() - 1
    }

    fn label(&mut self, at: usize, rule: &str, token: &Minted) {
        let ts = self.out[at].ts_ms;
        self.out[at].labels.push(Label {
            rule: rule.to_owned(),
            token_id: (!rule::keyed_by_subject(rule)).then(|| token.jti.to_string()),
            subject: Some(self.subject.clone()),
            ts,
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
        let alg = self.rng.pick(&["none", "None", "NONE", "RS256"]);
        let iat = t0 / 1000 - self.rng.range(0, 60);
        let spec = Spec {
            user: self.user,
            iat,
            exp: iat + 900,
            client: self.client,
            alg,
            signed: false,
            scope: Some("admin users:write orders:write"),
            jti: None,
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
        let info = crate::token::decode(crate::token::RawToken::new(&t.text), &[]).unwrap();
        assert_eq!(&*info.token_id, &*t.jti);
        assert_eq!(&*info.subject, "https://idp.example.com|user-42");
        assert_eq!(info.lifetime(), Some(900));
        assert!(!info.unsigned);
        let spec = Spec {
            alg: "none",
            signed: false,
            ..Spec::normal(42, 1, 900, &CLIENTS[0])
        };
        let u = mint.issue(&mut rng, &spec);
        assert!(u.text.ends_with('.'));
        assert!(
            crate::token::decode(crate::token::RawToken::new(&u.text), &[])
                .unwrap()
                .unsigned
        );
    }

    #[test]
    fn every_scenario_is_time_ordered_and_labels_sit_on_their_requests() {
        for (i, kind) in ATTACKS.iter().chain(NEAR_MISSES.iter()).enumerate() {
            let (mut rng, mut mint) = (Rng::new(i as u64), Mint::new(i as u64));
            let t0 = 1_795_910_400_000;
            let script = Scene::new(&Networks::builtin(), &mut rng, &mut mint, 5000).play(*kind, t0);
            assert!(script.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms), "{kind:?}");
            assert!(script[0].ts_ms >= t0);
            let labels: usize = script.iter().map(|s| s.labels.len()).sum();
            let want = match kind {
                Scenario::RevokedUsed => 2,
                k if ATTACKS.contains(k) => 1,
                _ => 0,
            };
            assert_eq!(labels, want, "{kind:?}");
            for s in &script {
                for l in &s.labels {
                    assert_eq!(l.ts, s.ts_ms);
                }
            }
        }
    }
}
