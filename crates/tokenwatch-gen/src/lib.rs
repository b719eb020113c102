//! Synthetic API-gateway traffic with labelled attacks: the input of benchmarks, the demo and
//! end-to-end tests.
//!
//! [`Generator`] is an iterator of access-log lines in one of the gateway formats tokenwatch
//! reads. Ordinary users browse and call the API from a home network and a mobile network in
//! a real city (ranges the test GeoIP database locates, or with [`Networks::from_geoip`] ranges
//! a database of one's own locates; or carrier-grade NAT, which no database locates),
//! refresh their 15-minute or 1-hour tokens shortly before expiry, and now and then fly to
//! another city. Into that traffic it injects attacks, each line that should make one of the
//! engine's default rules fire carrying a [`Label`], near misses that must not fire, and
//! forged decoys: tokens carrying a victim's ids under a signature that cannot verify, labelled
//! (`expect: none`) where they would fire if forged tokens were taken for genuine ones.
//!
//! Every genuine token is signed for real, RS256 or ES256 by its issuer's key derived from the
//! seed (`gen/keys.rs`); [`jwks`] gives a seed's public keys, which verify exactly the
//! genuine tokens.
//!
//! What it guarantees:
//! - **Order**: lines come out in non-decreasing event time.
//! - **Determinism**: the same [`GenConfig`] (seed included) gives byte-identical lines and
//!   labels, because every random choice comes from one seeded PRNG in a fixed order.
//! - **Exact labels**: with the default rules, the rules fire on exactly the labelled lines:
//!   all of them as the rules are today, and only those not labelled `expect: none` when the
//!   revoking rules count only requests whose token verifies (issue 9).
//!   Legitimate users never use a token from three networks, never travel faster than an
//!   airliner, and never present an expired token more than once in a row; each attack runs
//!   on a subject of its own, so its labels cannot be disturbed by anything else. A test
//!   replays the output through a plain re-statement of the rules to hold this.
//! - **Cost**: each token is built once; a line is written straight into a string, without
//!   building JSON values.
//!
//! The scenarios, each on a fresh subject `user-<n>` (n > `users`). A label sits on the line
//! named; its `subject` is `https://idp.example.com|user-<n>` and its `token_id` the `jti` of
//! that line's token (`None` for the two rules keyed by subject):
//!
//! | scenario | lines | labels |
//! |---|---|---|
//! | replay | owner at home, then 2 attacker networks within ~4 min (a 4th is refused) | `token-replay` on the 3rd network |
//! | impossible travel | owner in London, the thief in Changchun 20 min later (1 h token) | `impossible-travel` on Changchun |
//! | expired storm | 6-8 requests refused (401) with a token expired > 45 min, within 2 min | `expired-token-attempts` on the 5th |
//! | expired accepted | a token expired > 15 min answered 200 | `expired-token-accepted` on it |
//! | unsigned | `alg` none/None/NONE or an empty RS256 signature, 1-3 requests, 401 or 200 | `unsigned-token` on the 1st |
//! | token in URL | `access_token=<jwt>` or `token=<jwt>` in the query, no Authorization header, 200 | `token-in-url` on it |
//! | long-lived | a 7-day token, 2-4 requests | `excessive-lifetime` on the 1st |
//! | revoked used | a replay as above, then the owner's 200 with it a minute later | `token-replay`, `revoked-token-used` |
//! | near misses | two networks; London to Boxford in minutes; London to Milton in 14 h; forged copies (same `jti`) from 4-5 networks, all 401 | none |
//!
//! The decoys (half the attack rate; `decoys: false` leaves them out), each a forgery of a
//! victim's live token (its `jti` and subject) sent by someone without a valid token. Labels
//! `expect: none`, on the line where a status-trusting engine would fire, and on the
//! victim's next genuine request, where its `revoked-token-used` would follow:
//!
//! | decoy | lines | labels (`expect: none`) |
//! |---|---|---|
//! | forged-replay | 3-4 forgeries, one per attacker network, to 404 / `/healthz` / `OPTIONS` 204 | `token-replay` on the 2nd, `revoked-token-used` on the 3rd |
//! | forged-travel | the victim in London, a forgery from Changchun 5 s-10 min later | `impossible-travel`; `revoked-token-used` on the victim's next request |
//! | forged-url | the attacker's own valid token in the header, a forgery in `?x=` (200) | `token-in-url`; `revoked-token-used` as above |
//! | forged-expired | a forgery expired 30 min-2 h, `alg: none` or a bad signature, to a public endpoint | `expired-token-accepted`; `revoked-token-used` as above (and `unsigned-token` to fire, for `alg: none`) |
//!
//! Posture findings (`posture_rate`), labelled where their rules fire once tokenwatch is
//! configured for the generated deployment ([`GenConfig::posture`], the one definition the demo
//! and the tests use): a token with an `email` claim; a request over plain HTTP; an HS* token
//! in a configured issuer's name or an unregistered `alg`; an unconfigured issuer's tokens
//! accepted; a genuine token for another audience accepted on `/api`; a forged token (real
//! `kid`, random signature) served on `/api`; and, not scripted, each issuer's key past
//! [`POSTURE_MAX_KEY_AGE_MS`] (`stale-signing-key` on its first use after that age).
//!
//! The cities are those of the built-in tables; over a `--geoip` database the travel scripts
//! use the fixed points [`Networks`] chose there with the same meaning (impossible in twenty
//! minutes; within one region; far but slower than an airliner).
//!
//! After a revoking firing (replay, expired accepted, token in URL, impossible travel), the
//! gateway is modelled as honouring the revocation: the token (or every token of the subject
//! issued before the firing) gets 401, and the owner's client retries with a new token.
//!
//! Scenarios run in event time: at 1,000 events/s an attack spanning 20 minutes of event time
//! completes more than a million lines after it starts. Runs that should show every attack
//! label in a few tens of thousands of lines use a lower `rate_per_sec` (20/s shows all eight
//! in 50,000 lines).

mod geoip;
pub mod hostile;
#[cfg(feature = "kafka")]
pub mod kafka;
mod keys;
mod line;
mod net;
#[cfg(test)]
mod oracle;
mod rng;
mod scenario;
mod traffic;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use line::{Malformed, Req};
use net::Addr;
use rng::Rng;
use scenario::{Mint, Minted, Scenario, Scene, Scripted, Spec, ATTACKS, DECOYS, NEAR_MISSES, POSTURE};
use traffic::{pick_request, ClientKind, CLIENTS};

pub use geoip::{NetworksError, Shortfall};
pub use net::Networks;
pub use scenario::rule;

/// The log format of the generated lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenFormat {
    Canonical,
    Traefik,
    Kong,
    Envoy,
    Nginx,
}

impl GenFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [GenFormat; 5] = [
        GenFormat::Canonical,
        GenFormat::Traefik,
        GenFormat::Kong,
        GenFormat::Envoy,
        GenFormat::Nginx,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            GenFormat::Canonical => "canonical",
            GenFormat::Traefik => "traefik",
            GenFormat::Kong => "kong",
            GenFormat::Envoy => "envoy",
            GenFormat::Nginx => "nginx",
        }
    }
}

impl fmt::Display for GenFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`: expected canonical, traefik, kong, envoy or nginx")]
pub struct UnknownFormat(String);

impl FromStr for GenFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        GenFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// 2026-11-29T00:00:00Z.
const DEFAULT_START_MS: i64 = 1_795_910_400_000;

/// What to generate. [`Generator::new`] clamps nonsensical values; call
/// [`GenConfig::validate`] first to report them instead.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub seed: u64,
    /// Stop after this many lines (attack and malformed lines included).
    pub events: Option<u64>,
    /// Stop before the first event this much event time after `start_ms`. With neither
    /// bound, 100,000 lines.
    pub duration_secs: Option<u64>,
    /// Ordinary users (the attack scenarios bring their own subjects).
    pub users: u32,
    /// Event time at which the run starts, epoch ms; the first line is at or just after it.
    pub start_ms: i64,
    /// Average rate of ordinary traffic, in events per second of event time.
    pub rate_per_sec: f64,
    /// Injected attacks per 10,000 lines, spread evenly over the eight kinds; near misses
    /// come at half this rate. 0 injects neither.
    pub attack_rate: f64,
    /// Fraction of lines that are malformed (they carry no labels).
    pub malformed_rate: f64,
    pub format: GenFormat,
    /// Where users and attackers connect from: [`Networks::builtin`] (the embedded test
    /// database's ranges), or [`Networks::from_geoip`] for a database of one's own.
    pub networks: Arc<Networks>,
    /// Inject forged decoys (labelled `expect: none`) at half the attack rate. An engine that
    /// does not verify signatures fires on them.
    pub decoys: bool,
    /// Injected posture findings per 10,000 lines, spread over the scripted findings of
    /// [`rule::POSTURE`]; labelled like attacks. With a rate above 0, the generated
    /// deployment's keys are also older than its [`GenConfig::posture`] allows, so the first
    /// use of each issuer's key past that age is labelled `stale-signing-key`. 0 injects none.
    pub posture_rate: f64,
}

/// How long the generated deployment lets a signing key sign, when posture findings are
/// injected: a run longer than this shows `stale-signing-key` once per issuer.
pub const POSTURE_MAX_KEY_AGE_MS: i64 = 15 * 60_000;

impl GenConfig {
    /// What tokenwatch should be told about the deployment this traffic comes from, for the
    /// posture rules to judge it: both generator issuers configured (each with its own
    /// JWKS, [`issuer_jwks`]: they sign RS256 and ES256 only), the whole API
    /// (`/api`) expecting tokens minted for it (`aud` `api`) and protected, the default
    /// sensitive claim names, and keys that may sign for [`POSTURE_MAX_KEY_AGE_MS`] (the
    /// default 90 days when `posture_rate` is 0). The demo and the tests take it from here.
    pub fn posture(&self) -> tokenwatch_core::posture::Posture {
        let max_key_age_ms = if self.posture_rate > 0.0 {
            POSTURE_MAX_KEY_AGE_MS
        } else {
            tokenwatch_core::posture::DEFAULT_MAX_KEY_AGE_MS
        };
        tokenwatch_core::posture::Posture::new(
            keys::ISSUERS.iter().map(|i| i.iss.to_owned()).collect(),
            vec![(scenario::API_PREFIX.into(), scenario::API_AUDIENCE.into())],
            vec![scenario::API_PREFIX.into()],
            tokenwatch_core::posture::default_sensitive_claims(),
            max_key_age_ms,
        )
    }
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 0,
            events: None,
            duration_secs: None,
            users: 1000,
            start_ms: DEFAULT_START_MS,
            rate_per_sec: 1000.0,
            attack_rate: 5.0,
            malformed_rate: 0.0,
            format: GenFormat::Canonical,
            networks: Networks::builtin(),
            decoys: true,
            posture_rate: 1.0,
        }
    }
}

/// A generator setting that cannot work, named as in [`GenConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("generator setting `{field}` {problem}")]
pub struct GenConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl GenConfig {
    pub fn validate(&self) -> Result<(), GenConfigError> {
        let bad = |field, problem: String| Err(GenConfigError { field, problem });
        if self.users == 0 {
            return bad("users", "must be at least 1".into());
        }
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return bad(
                "rate_per_sec",
                format!(
                    "must be a positive number of events per second (got {})",
                    self.rate_per_sec
                ),
            );
        }
        if !(self.attack_rate.is_finite() && self.attack_rate >= 0.0) {
            return bad(
                "attack_rate",
                format!("must be 0 or more attacks per 10,000 lines (got {})", self.attack_rate),
            );
        }
        if !(self.posture_rate.is_finite() && self.posture_rate >= 0.0) {
            return bad(
                "posture_rate",
                format!(
                    "must be 0 or more posture findings per 10,000 lines (got {})",
                    self.posture_rate
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.malformed_rate) {
            return bad(
                "malformed_rate",
                format!("must be a fraction between 0 and 1 (got {})", self.malformed_rate),
            );
        }
        Ok(())
    }
}

/// The public keys that verify the tokens generated with `seed`, as a JWK Set (the JSON of
/// `gen --jwks-out`): an RS256 key for `https://idp.example.com` and an ES256 key for
/// `https://partners.example.com`, each with its `kid`. Test keys: the private halves follow
/// from the seed.
pub fn jwks(seed: u64) -> String {
    let keys = keys::Keys::for_seed(seed);
    serde_json::to_string_pretty(&keys.jwks()).unwrap_or_default()
}

/// Each issuer of `seed`'s tokens with the JWK Set of its own key alone, as `[verify] issuers`
/// would list them: a token of another issuer is then unchecked, and one naming a `kid` its
/// issuer does not publish is invalid.
pub fn issuer_jwks(seed: u64) -> Vec<(String, String)> {
    let keys = keys::Keys::for_seed(seed);
    keys::ISSUERS
        .iter()
        .enumerate()
        .map(|(i, issuer)| (issuer.iss.to_owned(), keys.jwks_of(i).to_string()))
        .collect()
}

/// Whether a labelled rule must fire.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    /// The rule must fire on the line (an attack); omitted from the JSON.
    #[default]
    #[serde(rename = "fire")]
    Fire,
    /// The rule must never fire here: a forged decoy, which would fire it if forged tokens
    /// counted as genuine ones.
    #[serde(rename = "none")]
    Never,
}

impl Expect {
    fn is_fire(&self) -> bool {
        *self == Expect::Fire
    }
}

/// One expected firing of a default rule, or, for a decoy, one that must not happen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Label {
    /// The rule id, one of [`rule::ALL`].
    pub rule: String,
    /// The `jti` of the token on the firing line, for the rules keyed by token; `None` for
    /// `impossible-travel` and `expired-token-attempts`, which are keyed by subject.
    pub token_id: Option<String>,
    /// `iss|sub` of the token on the firing line (the key of the subject rules; for the
    /// token rules, it says whose token it was).
    pub subject: Option<String>,
    /// Event time (epoch ms) of the line that should fire the rule.
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Expect::is_fire")]
    pub expect: Expect,
    /// For `expect: none`, the decoy: `forged-replay`, `forged-travel`, `forged-url` or
    /// `forged-expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoy: Option<String>,
}

impl Label {
    /// False for a decoy's label: the rule must not fire.
    pub fn must_fire(&self) -> bool {
        self.expect == Expect::Fire
    }

    /// What the rule counts firings by: the subject or the token id.
    pub fn key(&self) -> Option<&str> {
        if rule::keyed_by_subject(&self.rule) {
            self.subject.as_deref()
        } else {
            self.token_id.as_deref()
        }
    }
}

/// One generated line.
#[derive(Clone, PartialEq)]
pub struct Generated {
    ts_ms: i64,
    pub line: String,
    /// Rules this line should fire; empty for almost every line.
    pub labels: Vec<Label>,
}

/// Prints the size of the line, not the line: it holds bearer tokens (fake ones, but tokens
/// get into logs through `Debug` exactly like this).
impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("ts_ms", &self.ts_ms)
            .field("line_len", &self.line.len())
            .field("labels", &self.labels)
            .finish()
    }
}

// ---- how ordinary users behave ----

/// Sessions last 20 minutes on average.
const SESSION_MEAN_MS: f64 = 20.0 * 60_000.0;
/// The time between a user's requests we aim for in a session; the real gap follows from
/// the configured rate and user count, so small populations are busier.
const TARGET_GAP_MS: f64 = 15_000.0;
/// Share of requests that follow the previous one within a page load (20-400 ms).
const BURST_P: f64 = 0.35;
const BURST_MEAN_MS: f64 = 210.0;
/// Share of session ends after which the user flies to another region.
const TRAVEL_P: f64 = 0.02;
/// Clients that retry once with an expired token before refreshing.
const SLOPPY_P: f64 = 0.08;
/// Chance per request that a phone moves between Wi-Fi and mobile data mid-session: the
/// second network a token may legitimately be seen on (a third would be a replay).
const SWITCH_P: f64 = 0.01;

struct User {
    n: u32,
    client: u8,
    home_region: u8,
    region: u8,
    /// Networks in the current region.
    home: Addr,
    mobile: Addr,
    /// The home region's networks, kept while travelling.
    saved: Option<(Addr, Addr)>,
    on_mobile: bool,
    /// Text of the address in use.
    ip: Box<str>,
    token: Option<Minted>,
    sloppy: bool,
    in_session: bool,
    session_end: i64,
    travel_to: Option<u8>,
    /// The next request repeats one refused for an expired token, with a new token.
    retry: bool,
    /// Active when the run starts: the first token was issued before the first line.
    backdate: bool,
}

impl User {
    fn address_in_use(&mut self) -> &mut Addr {
        if self.on_mobile {
            &mut self.mobile
        } else {
            &mut self.home
        }
    }
}

fn networks(nets: &Networks, rng: &mut Rng, region: usize) -> (Addr, Addr) {
    let r = &nets.regions[region];
    let home = rng.pick(&r.home).random(rng);
    let mobile = if !r.mobile.is_empty() && rng.chance(0.5) {
        rng.pick(&r.mobile).random(rng)
    } else {
        nets.cgnat.random(rng)
    };
    (home, mobile)
}

/// The `stale-signing-key` finding, which no script makes: every line with a genuine token
/// shows its issuer's key in use, first seen on the run's first such line; the first use more
/// than [`POSTURE_MAX_KEY_AGE_MS`] later is labelled, once per key, as tokenwatch (which learns
/// first-seen times from verified tokens only) fires on it.
struct StaleKeys {
    on: bool,
    first_seen: [Option<i64>; keys::ISSUERS.len()],
    labelled: [bool; keys::ISSUERS.len()],
}

impl StaleKeys {
    fn new(on: bool) -> Self {
        StaleKeys {
            on,
            first_seen: [None; keys::ISSUERS.len()],
            labelled: [false; keys::ISSUERS.len()],
        }
    }

    /// A line at `ts` carried `m`: its label, when this is the key's first use past the age.
    fn observe(&mut self, ts: i64, m: &Minted) -> Option<Label> {
        let i = m.signer?;
        if !self.on || self.labelled[i] {
            return None;
        }
        let first = *self.first_seen[i].get_or_insert(ts);
        if ts - first <= POSTURE_MAX_KEY_AGE_MS {
            return None;
        }
        self.labelled[i] = true;
        Some(Label {
            rule: rule::STALE_SIGNING_KEY.into(),
            token_id: Some(m.jti.to_string()),
            subject: Some(m.subject.to_string()),
            ts,
            expect: Expect::Fire,
            decoy: None,
        })
    }
}

/// Streams lines; see the module documentation.
pub struct Generator {
    format: GenFormat,
    nets: Arc<Networks>,
    rng: Rng,
    mint: Mint,
    users: Vec<User>,
    /// Ordinary users by the time of their next request.
    queue: BinaryHeap<Reverse<(i64, u32)>>,
    /// Scenario requests waiting for their time.
    scripted: BinaryHeap<Reverse<Scripted>>,
    seq: u64,
    emitted: u64,
    max_events: u64,
    end_ms: i64,
    /// Event time of the last line.
    now: i64,
    done: bool,
    malformed_rate: f64,
    long_gap_ms: f64,
    idle_mean_ms: f64,
    attack_every: f64,
    next_attack: f64,
    attack_round: Vec<Scenario>,
    near_every: f64,
    next_near: f64,
    near_round: Vec<Scenario>,
    decoy_every: f64,
    next_decoy: f64,
    decoy_round: Vec<Scenario>,
    posture_every: f64,
    next_posture: f64,
    posture_round: Vec<Scenario>,
    stale_keys: StaleKeys,
    next_subject: u64,
    region_weights: Vec<u32>,
    /// Reused for every request path.
    path: String,
    /// Put into malformed lines when the chosen user has no token yet.
    stray_token: Arc<str>,
    line_hint: usize,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        let users_n = cfg.users.max(1);
        let rate = if cfg.rate_per_sec.is_finite() && cfg.rate_per_sec > 0.0 {
            cfg.rate_per_sec
        } else {
            1000.0
        };
        let mut rng = Rng::new(cfg.seed);
        let mut mint = Mint::new(cfg.seed);

        // Share of users in a session, and the gap within one, so that the population makes
        // `rate` requests per second on average.
        let active = (rate * TARGET_GAP_MS / 1000.0 / f64::from(users_n)).clamp(0.02, 0.5);
        let gap_ms = f64::from(users_n) * active / rate * 1000.0;
        let long_gap_ms = ((gap_ms - BURST_P * BURST_MEAN_MS) / (1.0 - BURST_P)).max(1.0);
        let idle_mean_ms = SESSION_MEAN_MS * (1.0 - active) / active;

        let nets = cfg.networks.clone();
        let region_weights: Vec<u32> = nets.regions.iter().map(|r| r.weight).collect();
        let client_weights = traffic::client_weights();
        let start = cfg.start_ms;
        let mut users = Vec::with_capacity(users_n as usize);
        let mut queue = BinaryHeap::with_capacity(users_n as usize);
        for i in 0..users_n {
            let region = rng.weighted(&region_weights);
            let client = rng.weighted(&client_weights);
            let (home, mobile) = networks(&nets, &mut rng, region);
            let in_session = rng.chance(active);
            let mut u = User {
                n: i + 1,
                client: client as u8,
                home_region: region as u8,
                region: region as u8,
                home,
                mobile,
                saved: None,
                on_mobile: false,
                ip: home.text(),
                token: None,
                sloppy: rng.chance(SLOPPY_P),
                in_session,
                session_end: 0,
                travel_to: None,
                retry: false,
                backdate: in_session,
            };
            let first = if in_session {
                u.session_end = start + rng.exp(SESSION_MEAN_MS) as i64;
                u.on_mobile = rng.chance(mobile_share(CLIENTS[client].kind));
                u.ip = u.address_in_use().text();
                // Almost all of a session is spent in the long gaps, and an exponential wait
                // is memoryless: so the first request comes as if the run had always been on.
                start + rng.exp(long_gap_ms) as i64
            } else {
                start + rng.exp(idle_mean_ms) as i64
            };
            users.push(u);
            queue.push(Reverse((first, i)));
        }

        let stray = mint.issue(&mut rng, &Spec::normal(0, start / 1000, 900, &CLIENTS[0]));
        let attack_every = if cfg.attack_rate > 0.0 && cfg.attack_rate.is_finite() {
            10_000.0 / cfg.attack_rate
        } else {
            f64::INFINITY
        };
        let near_every = attack_every * 2.0;
        let next_attack = attack_every * (0.1 + 0.9 * rng.f64());
        let next_near = near_every * (0.1 + 0.9 * rng.f64());
        let decoy_every = if cfg.decoys { near_every } else { f64::INFINITY };
        let next_decoy = decoy_every * (0.1 + 0.9 * rng.f64());
        let posture_every = if cfg.posture_rate > 0.0 && cfg.posture_rate.is_finite() {
            10_000.0 / cfg.posture_rate
        } else {
            f64::INFINITY
        };
        // A fixed first offset: the default stream draws from `rng` only once one is due.
        let next_posture = posture_every * 0.5;
        let (max_events, end_ms) = match (cfg.events, cfg.duration_secs) {
            (None, None) => (100_000, i64::MAX),
            (events, secs) => (
                events.unwrap_or(u64::MAX),
                secs.map_or(i64::MAX, |s| start.saturating_add((s as i64).saturating_mul(1000))),
            ),
        };
        Generator {
            format: cfg.format,
            nets,
            rng,
            mint,
            users,
            queue,
            scripted: BinaryHeap::new(),
            seq: 0,
            emitted: 0,
            max_events,
            end_ms,
            now: start,
            done: false,
            malformed_rate: cfg.malformed_rate.clamp(0.0, 1.0),
            long_gap_ms,
            idle_mean_ms,
            attack_every,
            next_attack,
            attack_round: Vec::new(),
            near_every,
            next_near,
            near_round: Vec::new(),
            decoy_every,
            next_decoy,
            decoy_round: Vec::new(),
            posture_every,
            next_posture,
            posture_round: Vec::new(),
            stale_keys: StaleKeys::new(cfg.posture_rate > 0.0),
            next_subject: u64::from(users_n) + 1,
            region_weights,
            path: String::with_capacity(128),
            stray_token: stray.text,
            line_hint: 1024,
        }
    }

    /// Writes the next line into `out` (cleared first; no newline) and returns its event
    /// time and labels, or `None` when the run is over. Reusing `out` avoids the one
    /// allocation per line that the `Iterator` implementation makes.
    pub(crate) fn next_into(&mut self, out: &mut String) -> Option<(i64, Vec<Label>)> {
        out.clear();
        if self.done || self.emitted >= self.max_events {
            self.done = true;
            return None;
        }
        self.inject_scenarios();
        let user_t = self.queue.peek().map_or(i64::MAX, |Reverse((t, _))| *t);
        let script_t = self.scripted.peek().map_or(i64::MAX, |Reverse(s)| s.ts_ms);
        let t = user_t.min(script_t);
        if t == i64::MAX || t >= self.end_ms {
            self.done = true;
            return None;
        }
        if self.malformed_rate > 0.0 && self.rng.chance(self.malformed_rate) {
            // Stamped with the last line's time, so the order holds whatever comes next.
            self.write_malformed(out);
            self.emitted += 1;
            return Some((self.now, Vec::new()));
        }
        self.now = t;
        let labels = if script_t <= user_t {
            self.write_scripted(out)
        } else {
            self.write_user(out)
        };
        self.emitted += 1;
        Some((t, labels))
    }

    fn inject_scenarios(&mut self) {
        while self.emitted as f64 >= self.next_attack {
            let kind = next_kind(&mut self.attack_round, &ATTACKS, &mut self.rng);
            self.spawn(kind);
            self.next_attack += self.attack_every * (0.5 + self.rng.f64());
        }
        while self.emitted as f64 >= self.next_near {
            let kind = next_kind(&mut self.near_round, &NEAR_MISSES, &mut self.rng);
            self.spawn(kind);
            self.next_near += self.near_every * (0.5 + self.rng.f64());
        }
        while self.emitted as f64 >= self.next_decoy {
            let kind = next_kind(&mut self.decoy_round, &DECOYS, &mut self.rng);
            self.spawn(kind);
            self.next_decoy += self.decoy_every * (0.5 + self.rng.f64());
        }
        while self.emitted as f64 >= self.next_posture {
            let kind = next_kind(&mut self.posture_round, &POSTURE, &mut self.rng);
            self.spawn(kind);
            self.next_posture += self.posture_every * (0.5 + self.rng.f64());
        }
    }

    fn spawn(&mut self, kind: Scenario) {
        let user = self.next_subject;
        self.next_subject += kind.subjects();
        let t0 = self.now + self.rng.range(0, 2000);
        for mut s in Scene::new(&self.nets, &mut self.rng, &mut self.mint, user).play(kind, t0) {
            s.seq = self.seq;
            self.seq += 1;
            self.scripted.push(Reverse(s));
        }
    }

    fn write_scripted(&mut self, out: &mut String) -> Vec<Label> {
        let Some(Reverse(s)) = self.scripted.pop() else {
            return Vec::new();
        };
        let req = Req {
            ts_ms: s.ts_ms,
            ip: &s.ip,
            method: s.method,
            path: &s.path,
            status: s.status,
            ua: s.ua,
            token: s.token.as_ref().map(|m| &*m.text),
            noise: self.rng.next_u64(),
            http: s.http,
        };
        line::write(self.format, &req, true, out);
        let mut labels = s.labels;
        for m in s.token.iter().chain(&s.in_url) {
            labels.extend(self.stale_keys.observe(s.ts_ms, m));
        }
        labels
    }

    fn write_user(&mut self, out: &mut String) -> Vec<Label> {
        let Some(Reverse((t, idx))) = self.queue.pop() else {
            return Vec::new();
        };
        let i = idx as usize;
        if !self.users[i].in_session {
            self.start_session(i, t);
        } else if self.rng.chance(SWITCH_P) && CLIENTS[self.users[i].client as usize].kind == ClientKind::MobileApp {
            let u = &mut self.users[i];
            u.on_mobile = !u.on_mobile;
            u.ip = u.address_in_use().text();
        }
        let refused = self.prepare_token(i, t);
        let (method, status) = pick_request(&mut self.rng, t.div_euclid(1000), &mut self.path);
        let noise = self.rng.next_u64();
        let u = &self.users[i];
        let req = Req {
            ts_ms: t,
            ip: &u.ip,
            method,
            path: &self.path,
            status: if refused { 401 } else { status },
            ua: CLIENTS[u.client as usize].ua,
            token: u.token.as_ref().map(|m| &*m.text),
            noise,
            http: false,
        };
        line::write(self.format, &req, true, out);
        let labels = u.token.as_ref().and_then(|m| self.stale_keys.observe(t, m));
        self.schedule(i, t);
        labels.into_iter().collect()
    }

    fn start_session(&mut self, i: usize, t: i64) {
        let rng = &mut self.rng;
        let u = &mut self.users[i];
        if let Some(dest) = u.travel_to.take() {
            // Landed: the networks of the destination, and a new token (the old one is long
            // expired, and would otherwise tie two cities to one token).
            if dest == u.home_region {
                if let Some((h, m)) = u.saved.take() {
                    (u.home, u.mobile) = (h, m);
                }
            } else {
                if u.saved.is_none() {
                    u.saved = Some((u.home, u.mobile));
                }
                (u.home, u.mobile) = networks(&self.nets, rng, dest as usize);
            }
            u.region = dest;
            u.token = None;
        }
        u.in_session = true;
        u.session_end = t + rng.exp(SESSION_MEAN_MS) as i64;
        u.on_mobile = rng.chance(mobile_share(CLIENTS[u.client as usize].kind));
        let addr = u.address_in_use();
        addr.rotate(rng);
        u.ip = addr.text();
    }

    /// Makes sure user `i` holds a token fit for a request at `t`. Returns true when the
    /// request goes out with an expired token instead and is refused (a sloppy client).
    fn prepare_token(&mut self, i: usize, t: i64) -> bool {
        let now_s = t.div_euclid(1000);
        let u = &mut self.users[i];
        let lifetime = CLIENTS[u.client as usize].lifetime_s;
        let iat = match &u.token {
            _ if u.retry => {
                u.retry = false;
                now_s
            }
            None if u.backdate => now_s - self.rng.range(0, lifetime * 3 / 4),
            None => now_s,
            // Refresh a little before expiry.
            Some(tok) if now_s >= tok.exp - self.rng.range(20, 90) => {
                if u.sloppy && tok.exp * 1000 + 60_000 < t {
                    u.retry = true;
                    return true;
                }
                now_s
            }
            Some(_) => return false,
        };
        u.backdate = false;
        let spec = Spec::normal(u64::from(u.n), iat, lifetime, &CLIENTS[u.client as usize]);
        u.token = Some(self.mint.issue(&mut self.rng, &spec));
        false
    }

    fn schedule(&mut self, i: usize, t: i64) {
        let rng = &mut self.rng;
        let u = &mut self.users[i];
        let next = if u.retry {
            t + rng.range(150, 900)
        } else {
            let gap = if rng.chance(BURST_P) {
                rng.range(20, 400)
            } else {
                rng.exp(self.long_gap_ms) as i64
            };
            let next = t + gap;
            if next <= u.session_end {
                next
            } else {
                u.in_session = false;
                let mut idle = rng.exp(self.idle_mean_ms);
                if rng.chance(TRAVEL_P) {
                    let dest = if u.region != u.home_region {
                        u.home_region as usize
                    } else {
                        loop {
                            let d = rng.weighted(&self.region_weights);
                            if d != u.region as usize {
                                break d;
                            }
                        }
                    };
                    idle = idle.max(flight_ms(&self.nets, u.region as usize, dest));
                    u.travel_to = Some(dest as u8);
                }
                u.session_end.max(t) + idle as i64
            }
        };
        self.queue.push(Reverse((next, i as u32)));
    }

    fn write_malformed(&mut self, out: &mut String) {
        let kind = self.rng.pick(&Malformed::ALL);
        let i = self.rng.below(self.users.len() as u64) as usize;
        let (method, status) = pick_request(&mut self.rng, self.now.div_euclid(1000), &mut self.path);
        let u = &self.users[i];
        let ip = u.ip.clone();
        let ua = CLIENTS[u.client as usize].ua;
        let own = u.token.as_ref().map(|m| (m.text.clone(), m.exp));
        let token: Option<String> = match kind {
            // The one kind an engine might half-read: never give it an expired token.
            Malformed::MissingTs => own.filter(|(_, exp)| exp * 1000 > self.now).map(|(t, _)| t.to_string()),
            Malformed::BadBase64 | Malformed::TwoSegments => {
                let base = own.map_or_else(|| self.stray_token.clone(), |(t, _)| t);
                Some(line::break_token(kind, &base, &mut self.rng))
            }
            _ => Some(own.map_or_else(|| self.stray_token.clone(), |(t, _)| t).to_string()),
        };
        let req = Req {
            ts_ms: self.now,
            ip: &ip,
            method,
            path: &self.path,
            status,
            ua,
            token: token.as_deref(),
            noise: self.rng.next_u64(),
            http: false,
        };
        line::write_malformed(kind, self.format, &req, &mut self.rng, out);
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        let mut line = String::with_capacity(self.line_hint);
        let (ts_ms, labels) = self.next_into(&mut line)?;
        self.line_hint = line.len().max(256) + 64;
        Some(Generated { ts_ms, line, labels })
    }
}

fn mobile_share(kind: ClientKind) -> f64 {
    match kind {
        ClientKind::MobileApp => 0.6,
        ClientKind::Browser => 0.25,
        ClientKind::Cli | ClientKind::Sdk => 0.05,
    }
}

/// How long a trip between two regions takes, generously: any two of their networks are
/// then further apart in time than 750 km/h allows, well below the 900 km/h of
/// impossible-travel (each region's networks lie within 500 km of its centre).
fn flight_ms(nets: &Networks, from: usize, to: usize) -> f64 {
    let (a, b) = (nets.regions[from].center, nets.regions[to].center);
    let km = net::distance_km(a.0, a.1, b.0, b.1);
    ((km + 1000.0) / 750.0 + 0.5) * 3_600_000.0
}

/// Draws the scenarios from shuffled rounds, so every kind comes up equally often.
fn next_kind(round: &mut Vec<Scenario>, pool: &[Scenario], rng: &mut Rng) -> Scenario {
    if round.is_empty() {
        round.extend_from_slice(pool);
        for i in (1..round.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            round.swap(i, j);
        }
    }
    round.pop().unwrap_or(pool[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn cfg(seed: u64, events: u64) -> GenConfig {
        GenConfig {
            seed,
            events: Some(events),
            ..GenConfig::default()
        }
    }

    fn lines(c: GenConfig) -> Vec<Generated> {
        Generator::new(c).collect()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let c = GenConfig {
            malformed_rate: 0.05,
            attack_rate: 50.0,
            ..cfg(7, 3000)
        };
        let a = lines(c.clone());
        let b = lines(c.clone());
        assert_eq!(a.len(), 3000);
        assert!(a == b);
        let other = lines(GenConfig { seed: 8, ..c });
        assert_ne!(a[0].line, other[0].line);
        assert!(a.iter().zip(&other).filter(|(x, y)| x.line != y.line).count() > 2900);
    }

    /// Required fields per format: (timestamp field, fields every line has).
    fn required(format: GenFormat) -> (&'static str, &'static [&'static str]) {
        match format {
            GenFormat::Canonical => ("ts", &["client_ip", "method", "path", "status", "user_agent"]),
            GenFormat::Traefik => (
                "StartUTC",
                &[
                    "ClientAddr",
                    "ClientHost",
                    "DownstreamStatus",
                    "Duration",
                    "RequestMethod",
                    "RequestPath",
                    "time",
                ],
            ),
            GenFormat::Kong => (
                "started_at",
                &["client_ip", "request", "response", "latencies", "service"],
            ),
            GenFormat::Envoy => (
                "start_time",
                &["client_ip", "method", "path", "response_code", "user_agent"],
            ),
            GenFormat::Nginx => (
                "msec",
                &[
                    "time_iso8601",
                    "remote_addr",
                    "request_method",
                    "request_uri",
                    "status",
                    "http_user_agent",
                ],
            ),
        }
    }

    fn bearer(format: GenFormat, v: &serde_json::Value) -> Option<&str> {
        let a = match format {
            GenFormat::Canonical | GenFormat::Envoy => &v["authorization"],
            GenFormat::Traefik => &v["request_Authorization"],
            GenFormat::Kong => &v["request"]["headers"]["authorization"],
            GenFormat::Nginx => &v["http_authorization"],
        };
        a.as_str().and_then(|s| s.strip_prefix("Bearer "))
    }

    #[test]
    fn every_line_of_every_format_has_the_format_fields() {
        for format in GenFormat::ALL {
            assert_eq!(format.name().parse::<GenFormat>(), Ok(format));
            let (ts_field, fields) = required(format);
            let out = lines(GenConfig {
                format,
                attack_rate: 100.0,
                rate_per_sec: 50.0,
                ..cfg(3, 1500)
            });
            let mut with_token = 0;
            for g in &out {
                let v: serde_json::Value = serde_json::from_str(&g.line).unwrap_or_else(|e| panic!("{format}: {e}"));
                assert!(v.get(ts_field).is_some(), "{format}: no {ts_field}");
                for f in fields {
                    assert!(v.get(f).is_some(), "{format}: no {f}");
                }
                if let Some(t) = bearer(format, &v) {
                    assert_eq!(t.split('.').count(), 3);
                    with_token += 1;
                }
            }
            // All but the token-in-URL requests carry a bearer token.
            assert!(with_token > out.len() * 99 / 100, "{format}: {with_token}");
        }
        assert!("apache"
            .parse::<GenFormat>()
            .unwrap_err()
            .to_string()
            .contains("expected canonical"));
        assert_eq!(" Kong".parse::<GenFormat>(), Ok(GenFormat::Kong));
    }

    #[test]
    fn timestamps_in_lines_agree_with_ts_ms() {
        for format in GenFormat::ALL {
            for g in lines(GenConfig { format, ..cfg(4, 200) }) {
                let v: serde_json::Value = serde_json::from_str(&g.line).unwrap();
                let ms = match format {
                    GenFormat::Canonical => rfc3339(&v["ts"]),
                    GenFormat::Envoy => rfc3339(&v["start_time"]),
                    GenFormat::Traefik => rfc3339(&v["StartUTC"]),
                    GenFormat::Kong => v["started_at"].as_i64().unwrap(),
                    GenFormat::Nginx => (v["msec"].as_f64().unwrap() * 1000.0).round() as i64,
                };
                assert_eq!(ms, g.ts_ms, "{format}: {}", &g.line[..80]);
            }
        }
    }

    fn rfc3339(v: &serde_json::Value) -> i64 {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn lines_are_in_time_order_and_start_at_start() {
        let out = lines(GenConfig {
            attack_rate: 200.0,
            malformed_rate: 0.1,
            rate_per_sec: 20.0,
            ..cfg(5, 5000)
        });
        assert!(out[0].ts_ms >= DEFAULT_START_MS);
        assert!(out.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    }

    #[test]
    fn events_and_duration_bound_the_run() {
        assert_eq!(lines(cfg(1, 1234)).len(), 1234);
        let c = GenConfig {
            events: None,
            duration_secs: Some(10),
            rate_per_sec: 500.0,
            attack_rate: 0.0,
            ..cfg(1, 0)
        };
        let out = lines(c);
        let end = DEFAULT_START_MS + 10_000;
        assert!(out.iter().all(|g| g.ts_ms < end));
        assert!(out.last().unwrap().ts_ms > end - 1000);
        assert!((4000..6000).contains(&out.len()), "{}", out.len());
        let none = GenConfig {
            events: None,
            duration_secs: Some(0),
            malformed_rate: 0.5,
            ..cfg(1, 0)
        };
        assert_eq!(lines(none).len(), 0);
        // Both bounds: whichever comes first.
        let both = GenConfig {
            events: Some(100),
            duration_secs: Some(3600),
            ..cfg(1, 0)
        };
        assert_eq!(lines(both).len(), 100);
        assert_eq!(
            Generator::new(GenConfig {
                events: None,
                ..cfg(1, 0)
            })
            .max_events,
            100_000
        );
    }

    #[test]
    fn rate_is_roughly_as_configured() {
        for (users, rate) in [(1000, 1000.0), (200, 5.0), (20_000, 300.0)] {
            let c = GenConfig {
                users,
                rate_per_sec: rate,
                attack_rate: 0.0,
                ..cfg(2, 6000)
            };
            let out = lines(c);
            let secs = (out.last().unwrap().ts_ms - out[0].ts_ms) as f64 / 1000.0;
            let got = out.len() as f64 / secs;
            assert!(
                got > rate * 0.7 && got < rate * 1.3,
                "users {users}, rate {rate}: got {got:.1}/s"
            );
        }
    }

    #[test]
    fn malformed_share_is_roughly_right() {
        let out = lines(GenConfig {
            malformed_rate: 0.1,
            attack_rate: 0.0,
            ..cfg(11, 6000)
        });
        let bad = out.iter().filter(|g| !well_formed(&g.line)).count();
        assert!((480..720).contains(&bad), "{bad} malformed of 6000");
        assert!(out.iter().all(|g| well_formed(&g.line) || g.labels.is_empty()));
        assert!(lines(cfg(11, 3000)).iter().all(|g| well_formed(&g.line)));
    }

    /// A canonical line with a timestamp whose bearer token decodes.
    fn well_formed(line: &str) -> bool {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        let token_ok = match m.get("authorization").and_then(|a| a.as_str()) {
            Some(a) => tokenwatch_core::token::RawToken::from_authorization(a)
                .is_some_and(|t| tokenwatch_core::token::decode(t, &[]).is_ok()),
            None => true,
        };
        m.contains_key("ts") && token_ok
    }

    /// `jti` and `exp` of a compact token, decoded by hand rather than by `tokenwatch_core::token`.
    fn jti_exp(bearer: &str) -> (String, i64) {
        let payload = bearer.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        (
            claims["jti"].as_str().unwrap().to_owned(),
            claims["exp"].as_i64().unwrap(),
        )
    }

    /// Ordinary traffic alone, over hours of event time (sessions end, tokens expire, sloppy
    /// clients retry, users fly): no labels, no token on three networks within ten minutes
    /// (checked straight from the lines), and nothing fires at all (through the rules).
    #[test]
    fn legit_traffic_alone_fires_nothing() {
        assert_legit_traffic_fires_nothing(Networks::builtin());
    }

    fn assert_legit_traffic_fires_nothing(networks: Arc<Networks>) {
        let c = GenConfig {
            users: 100,
            rate_per_sec: 0.6,
            attack_rate: 0.0,
            posture_rate: 0.0,
            networks: networks.clone(),
            ..cfg(41, 15_000)
        };
        // The posture rules too, judging by the deployment the traffic comes from.
        let oracle = oracle::Oracle::for_networks(&networks).with_posture(&c);
        let out = lines(c);
        // 15,000 lines at 0.6/s average 7 hours; 100 users make the rate vary by seed.
        let span = out.last().unwrap().ts_ms - DEFAULT_START_MS;
        assert!(span > 4 * 3_600_000, "{span} ms");
        assert!(out.iter().all(|g| g.labels.is_empty()));

        let mut uses: HashMap<String, Vec<(i64, [u16; 4])>> = HashMap::new();
        let mut claims: HashMap<(usize, u64), (String, i64)> = HashMap::new();
        let (mut sloppy, mut v6) = (0, 0);
        for g in &out {
            let v: serde_json::Value = serde_json::from_str(&g.line).unwrap();
            let Some(bearer) = v["authorization"].as_str().and_then(|a| a.strip_prefix("Bearer ")) else {
                continue;
            };
            let status = v["status"].as_u64().unwrap();
            let (jti, exp) = claims
                .entry(oracle::quick_hash(bearer))
                .or_insert_with(|| jti_exp(bearer))
                .clone();
            if status == 401 || status == 403 {
                sloppy += usize::from(exp * 1000 + 60_000 < g.ts_ms);
                continue;
            }
            let network = match v["client_ip"].as_str().unwrap().parse().unwrap() {
                std::net::IpAddr::V4(a) => [
                    0,
                    u16::from(a.octets()[0]),
                    u16::from(a.octets()[1]),
                    u16::from(a.octets()[2]),
                ],
                std::net::IpAddr::V6(a) => {
                    v6 += 1;
                    let s = a.segments();
                    [s[0], s[1], s[2], s[3]]
                }
            };
            uses.entry(jti).or_default().push((g.ts_ms, network));
        }
        let mut moved = 0;
        for (jti, u) in &uses {
            for (i, (t, _)) in u.iter().enumerate() {
                let mut nets: Vec<[u16; 4]> = u[i..]
                    .iter()
                    .take_while(|(t2, _)| t2 - t <= 600_000)
                    .map(|(_, n)| *n)
                    .collect();
                nets.sort_unstable();
                nets.dedup();
                assert!(nets.len() < 3, "token {jti} used from {nets:?} within 10 minutes");
                moved += usize::from(nets.len() == 2);
            }
        }
        assert!(moved > 0, "no token ever moved between home and mobile");
        assert!(sloppy > 0 && v6 > 0, "sloppy retries {sloppy}, IPv6 lines {v6}");

        let per_rule = assert_labels_exact_with(&out, oracle);
        assert!(per_rule.is_empty());
    }

    /// Replays the output through the re-statement of the default rules. Verifying (issue 9),
    /// what fires must be exactly the attack labels, and no decoy; as the rules are today,
    /// every decoy fires too, exactly where it is labelled.
    fn assert_labels_exact_with(out: &[Generated], mut o: oracle::Oracle) -> BTreeMap<String, usize> {
        let mut fired = Vec::new();
        let mut labels = Vec::new();
        let mut per_rule = BTreeMap::new();
        for g in out {
            fired.extend(o.observe(&g.line));
            for l in &g.labels {
                assert_eq!(l.ts, g.ts_ms);
                assert!(l.subject.is_some());
                assert_eq!(l.token_id.is_none(), rule::keyed_by_subject(&l.rule), "{l:?}");
                let kind = if l.must_fire() {
                    l.rule.clone()
                } else {
                    format!("decoy {}", l.rule)
                };
                *per_rule.entry(kind).or_insert(0) += 1;
                labels.push(l.clone());
            }
        }
        let r = oracle::classify(&labels, &fired);
        let decoys = labels.iter().filter(|l| !l.must_fire()).count();
        if o.verifies() {
            assert!(r.decoys_fired.is_empty(), "decoys fired (false): {:?}", r.decoys_fired);
            assert_eq!(r.decoys_not_fired, decoys);
        } else {
            assert_eq!(r.decoys_not_fired, 0, "decoys labelled where today's rules do not fire");
            assert_eq!(r.decoys_fired.len(), decoys);
        }
        assert!(
            r.missed.is_empty() && r.unlabelled.is_empty(),
            "labelled but not fired: {:?}\nfired but not labelled: {:?}",
            r.missed,
            r.unlabelled
        );
        per_rule
    }

    #[test]
    fn every_rule_is_labelled_and_labels_are_exactly_the_firings() {
        assert_every_rule_labelled_exactly(Networks::builtin());
    }

    /// 50k lines at 20/s is ~40 minutes of event time: long enough for the 20-minute
    /// impossible-travel script to finish. Every rule is labelled, every kind of decoy is
    /// there, and the labels are exactly what the oracle sees fire, geolocating as the engine
    /// will for `networks`: with the rules as they are today, and verifying signatures.
    fn assert_every_rule_labelled_exactly(networks: Arc<Networks>) {
        let c = GenConfig {
            users: 500,
            rate_per_sec: 20.0,
            malformed_rate: 0.01,
            posture_rate: 5.0,
            networks: networks.clone(),
            ..cfg(31, 50_000)
        };
        let out = lines(c.clone());
        let today = oracle::Oracle::for_networks(&networks).with_posture(&c);
        let per_rule = assert_labels_exact_with(&out, today);
        for r in rule::ALL.iter().chain(&rule::POSTURE) {
            assert!(
                per_rule.get(*r).copied().unwrap_or(0) >= 1,
                "no {r} label: {per_rule:?}"
            );
        }
        for r in rule::REVOKING.iter().chain([&rule::REVOKED_TOKEN_USED]) {
            let n = per_rule.get(&format!("decoy {r}")).copied().unwrap_or(0);
            assert!(n >= 1, "no decoy of {r}: {per_rule:?}");
        }
        let jwks = keys::Keys::for_seed(31).jwks();
        let verifying = oracle::Oracle::for_networks(&networks)
            .verifying(&jwks)
            .with_posture(&c);
        assert_eq!(assert_labels_exact_with(&out, verifying), per_rule);
        // One stale key per issuer: both sign from the first minutes on.
        assert_eq!(per_rule.get(rule::STALE_SIGNING_KEY), Some(&keys::ISSUERS.len()));
    }

    /// Each decoy alone, many times over: with today's rules it fires exactly its labels (it
    /// is a real threat to an engine that trusts statuses); verifying, only the
    /// `unsigned-token` alert of an `alg: none` forgery fires.
    #[test]
    fn decoys_fire_only_where_labelled_and_never_when_verified() {
        let nets = Networks::builtin();
        let mut rng = Rng::new(12);
        let mut mint = Mint::new(12);
        let jwks = mint.keys().jwks();
        // Posture judged too (keys of any age): no decoy is a posture finding either.
        let deployment = GenConfig {
            posture_rate: 0.0,
            ..cfg(12, 1)
        };
        // Scripts overlap in time only through their own subjects.
        let scripts = DECOYS.iter().cycle().take(40).enumerate().map(|(i, kind)| {
            let t0 = DEFAULT_START_MS + 30 * 60_000 * i as i64;
            (*kind, 10_000 + 2 * i as u64, t0)
        });
        let (labels, [fired_today, fired_verifying]) =
            play_both_ways(&nets, &mut rng, &mut mint, &deployment, &jwks, scripts);
        let r = oracle::classify(&labels, &fired_today);
        assert_eq!((r.missed.len(), r.decoys_not_fired), (0, 0), "{r:?}");
        assert!(r.unlabelled.is_empty(), "{r:?}");
        assert!(r.decoys_fired.len() >= 80, "{}", r.decoys_fired.len());
        let r = oracle::classify(&labels, &fired_verifying);
        assert!(r.missed.is_empty() && r.unlabelled.is_empty(), "{r:?}");
        assert!(r.decoys_fired.is_empty(), "fired (false): {:?}", r.decoys_fired);
        assert!(r.detected >= 1, "no alg-none forgery among 10: {r:?}");
    }

    /// Plays each (scenario, subject, start) in canonical lines through the re-statement of
    /// the rules as they are today and verifying, both judging posture by `deployment`;
    /// returns the labels and what each version fired.
    fn play_both_ways(
        nets: &Networks,
        rng: &mut Rng,
        mint: &mut Mint,
        deployment: &GenConfig,
        jwks: &serde_json::Value,
        scripts: impl Iterator<Item = (Scenario, u64, i64)>,
    ) -> (Vec<Label>, [Vec<oracle::Firing>; 2]) {
        let mut oracles = [
            oracle::Oracle::for_networks(nets).with_posture(deployment),
            oracle::Oracle::for_networks(nets)
                .verifying(jwks)
                .with_posture(deployment),
        ];
        let (mut labels, mut fired) = (Vec::new(), [Vec::new(), Vec::new()]);
        for (kind, user, t0) in scripts {
            for s in Scene::new(nets, rng, mint, user).play(kind, t0) {
                let mut line = String::new();
                line::write(GenFormat::Canonical, &scripted_req(&s), true, &mut line);
                for (o, f) in oracles.iter_mut().zip(&mut fired) {
                    f.extend(o.observe(&line));
                }
                labels.extend(s.labels);
            }
        }
        (labels, fired)
    }

    fn scripted_req(s: &Scripted) -> Req<'_> {
        Req {
            ts_ms: s.ts_ms,
            ip: &s.ip,
            method: s.method,
            path: &s.path,
            status: s.status,
            ua: s.ua,
            token: s.token.as_ref().map(|m| &*m.text),
            noise: 0,
            http: s.http,
        }
    }

    /// Each scripted posture finding, many times over, through the re-statement of the rules
    /// with the generated deployment's posture: it fires exactly its labels, whether the
    /// revoking rules verify or not, and no other rule.
    #[test]
    fn each_posture_finding_fires_exactly_its_label() {
        let nets = Networks::builtin();
        let deployment = GenConfig {
            posture_rate: 0.0,
            ..cfg(14, 1)
        };
        let (mut rng, mut mint) = (Rng::new(14), Mint::new(14));
        let jwks = mint.keys().jwks();
        for (k, kind) in POSTURE.iter().enumerate() {
            let scripts = (0..12).map(|i| {
                (
                    *kind,
                    10_000 + 100 * k as u64 + i,
                    DEFAULT_START_MS + i as i64 * 600_000,
                )
            });
            let (labels, [fired_today, fired_verifying]) =
                play_both_ways(&nets, &mut rng, &mut mint, &deployment, &jwks, scripts);
            assert_eq!(labels.len(), 12, "{kind:?}: one label per script");
            assert!(
                labels.iter().all(|l| rule::POSTURE.contains(&&*l.rule)),
                "{kind:?}: {labels:?}"
            );
            for fired in [&fired_today, &fired_verifying] {
                let r = oracle::classify(&labels, fired);
                assert_eq!(r.detected, 12, "{kind:?}: {r:?}");
                assert!(r.missed.is_empty() && r.unlabelled.is_empty(), "{kind:?}: {r:?}");
            }
        }
    }

    /// The stale key is no script: with posture findings on, the first use of each issuer's
    /// key more than [`POSTURE_MAX_KEY_AGE_MS`] after its first use is labelled, once, and the
    /// re-statement of the rule fires exactly there; with them off, keys may sign for 90 days
    /// and nothing is labelled.
    #[test]
    fn each_issuers_key_is_labelled_stale_once_past_the_maximum_age() {
        let c = GenConfig {
            users: 200,
            rate_per_sec: 5.0,
            attack_rate: 0.0,
            posture_rate: 0.5,
            ..cfg(15, 12_000)
        };
        let out = lines(c.clone());
        let stale: Vec<&Label> = out
            .iter()
            .flat_map(|g| &g.labels)
            .filter(|l| l.rule == rule::STALE_SIGNING_KEY)
            .collect();
        assert_eq!(stale.len(), keys::ISSUERS.len(), "{stale:?}");
        for l in &stale {
            assert!(l.ts > DEFAULT_START_MS + POSTURE_MAX_KEY_AGE_MS, "{l:?}");
        }
        let issuers: std::collections::HashSet<&str> = stale
            .iter()
            .map(|l| l.subject.as_deref().unwrap().split('|').next().unwrap())
            .collect();
        assert_eq!(issuers.len(), keys::ISSUERS.len());
        let o = oracle::Oracle::for_networks(&Networks::builtin()).with_posture(&c);
        assert_labels_exact_with(&out, o);

        let off = GenConfig { posture_rate: 0.0, ..c };
        assert_eq!(
            off.posture().max_key_age_ms,
            tokenwatch_core::posture::DEFAULT_MAX_KEY_AGE_MS
        );
        assert!(lines(off).iter().all(|g| g.labels.is_empty()));
    }

    #[test]
    fn near_misses_alone_fire_nothing() {
        assert_near_misses_fire_nothing(&Networks::builtin());
    }

    fn assert_near_misses_fire_nothing(nets: &Networks) {
        let mut rng = Rng::new(9);
        let mut mint = Mint::new(9);
        let deployment = GenConfig {
            posture_rate: 0.0,
            ..cfg(9, 1)
        };
        let mut o = oracle::Oracle::for_networks(nets).with_posture(&deployment);
        for (i, kind) in NEAR_MISSES.iter().cycle().take(40).enumerate() {
            let script = Scene::new(nets, &mut rng, &mut mint, 10_000 + i as u64).play(*kind, DEFAULT_START_MS);
            for s in script {
                let mut line = String::new();
                line::write(GenFormat::Canonical, &scripted_req(&s), true, &mut line);
                assert!(o.observe(&line).is_empty(), "{kind:?} fired");
            }
        }
    }

    /// Signatures are real: checked with `jsonwebtoken` against the seed's JWKS, every
    /// token that is not a copy of another verifies, RS256 and ES256 alike; of the tokens
    /// sharing a `jti`, exactly one verifies (the victim's), and every forged copy fails;
    /// unsigned tokens never verify.
    #[test]
    fn genuine_tokens_verify_and_forged_copies_do_not() {
        let out = lines(GenConfig {
            users: 200,
            rate_per_sec: 20.0,
            attack_rate: 100.0,
            ..cfg(13, 8000)
        });
        let verifier = oracle::Verifier::new(&keys::Keys::for_seed(13).jwks());
        // jti -> (texts that verify, texts that do not)
        let mut by_jti: HashMap<String, (HashSet<String>, HashSet<String>)> = HashMap::new();
        let mut algs = BTreeMap::new();
        for g in &out {
            let v: serde_json::Value = serde_json::from_str(&g.line).unwrap();
            let path = v["path"].as_str().unwrap();
            let header = v["authorization"]
                .as_str()
                .and_then(tokenwatch_core::token::RawToken::from_authorization);
            for t in header.into_iter().chain(tokenwatch_core::token::tokens_in_query(path)) {
                let text = t.expose();
                let Ok(info) = tokenwatch_core::token::decode(t, &[]) else {
                    continue;
                };
                let entry = by_jti.entry(info.token_id.to_string()).or_default();
                if entry.0.contains(text) || entry.1.contains(text) {
                    continue;
                }
                if verifier.verifies(text) {
                    assert!(!info.unsigned);
                    *algs.entry(info.alg.as_deref().unwrap_or("").to_owned()).or_insert(0) += 1;
                    entry.0.insert(text.to_owned());
                } else {
                    entry.1.insert(text.to_owned());
                }
            }
        }
        let (mut forged, mut unsigned_only) = (0, 0);
        for (jti, (good, bad)) in &by_jti {
            if good.is_empty() {
                // The unsigned attack's own tokens: no genuine original.
                let all_unsigned = bad.iter().all(|t| {
                    tokenwatch_core::token::decode(tokenwatch_core::token::RawToken::new(t), &[])
                        .unwrap()
                        .unsigned
                });
                assert!(all_unsigned, "{jti}: a signed token that verifies nowhere");
                unsigned_only += 1;
            } else {
                assert_eq!(good.len(), 1, "{jti}: two genuine tokens share an id");
                forged += bad.len();
            }
        }
        assert!(
            algs.get("RS256").copied().unwrap_or(0) > 100 && algs.get("ES256").copied().unwrap_or(0) > 10,
            "{algs:?}"
        );
        assert!(
            forged > 20 && unsigned_only > 0,
            "{forged} forged copies, {unsigned_only} unsigned"
        );
    }

    #[test]
    fn the_jwks_of_a_seed_is_the_one_its_tokens_verify_with() {
        let published: serde_json::Value = serde_json::from_str(&jwks(13)).unwrap();
        assert_eq!(published, keys::Keys::for_seed(13).jwks());
        assert_ne!(jwks(13), jwks(14));
        let verifier = oracle::Verifier::new(&serde_json::from_str(&jwks(14)).unwrap());
        let g = Generator::new(cfg(13, 50)).last().unwrap();
        let v: serde_json::Value = serde_json::from_str(&g.line).unwrap();
        let token = v["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
        assert!(
            !verifier.verifies(token),
            "seed 13's token verified with seed 14's keys"
        );
    }

    #[test]
    fn labels_serialize_as_documented() {
        let l = Label {
            rule: "token-replay".into(),
            token_id: Some("j".into()),
            subject: None,
            ts: 5,
            expect: Expect::Fire,
            decoy: None,
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(s, r#"{"rule":"token-replay","token_id":"j","subject":null,"ts":5}"#);
        assert_eq!(serde_json::from_str::<Label>(&s).unwrap(), l);
        assert_eq!(l.key(), Some("j"));
        assert!(l.must_fire());
        let d = Label {
            expect: Expect::Never,
            decoy: Some("forged-replay".into()),
            ..l
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(
            s,
            r#"{"rule":"token-replay","token_id":"j","subject":null,"ts":5,"expect":"none","decoy":"forged-replay"}"#
        );
        assert_eq!(serde_json::from_str::<Label>(&s).unwrap(), d);
        assert!(!d.must_fire());
    }

    #[test]
    fn config_validation_names_the_setting() {
        assert!(GenConfig::default().validate().is_ok());
        let e = GenConfig {
            malformed_rate: 2.0,
            ..GenConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "malformed_rate");
        assert!(e.to_string().contains("between 0 and 1"));
        assert_eq!(
            GenConfig {
                users: 0,
                ..GenConfig::default()
            }
            .validate()
            .unwrap_err()
            .field,
            "users"
        );
        let e = GenConfig {
            posture_rate: -1.0,
            ..GenConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "posture_rate");
        // Nonsense still generates something rather than hanging.
        let c = GenConfig {
            users: 0,
            rate_per_sec: f64::NAN,
            ..cfg(1, 10)
        };
        assert_eq!(lines(c).len(), 10);
    }

    #[test]
    fn debug_does_not_print_tokens() {
        let g = Generator::new(cfg(1, 1)).next().unwrap();
        assert!(!format!("{g:?}").contains("Bearer"));
    }

    /// The generator's table of located ranges must say what the test database says, and the
    /// addresses it treats as unknown must be unknown there.
    #[test]
    fn located_table_matches_the_test_database() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/GeoLite2-City-Test.mmdb");
        let Ok(reader) = maxminddb::Reader::open_readfile(&path) else {
            eprintln!("skipped: {} not found", path.display());
            return;
        };
        let mut rng = Rng::new(1);
        for l in net::LOCATED {
            for _ in 0..5 {
                let ip = net::Net::parse(l.cidr).random(&mut rng).ip();
                let city: maxminddb::geoip2::City =
                    reader.lookup(ip).unwrap().unwrap_or_else(|| panic!("{ip} unknown"));
                let loc = city.location.unwrap();
                assert_eq!(loc.latitude, Some(l.lat), "{ip}");
                assert_eq!(loc.longitude, Some(l.lon), "{ip}");
                assert_eq!(loc.accuracy_radius.map(f64::from), Some(l.accuracy_km), "{ip}");
            }
        }
        for cidr in net::ATTACKER_V4.iter().chain(net::ATTACKER_V6).chain([&net::CGNAT]) {
            for _ in 0..5 {
                let ip = net::Net::parse(cidr).random(&mut rng).ip();
                let found: Option<maxminddb::geoip2::City> = reader.lookup(ip).unwrap();
                let located = found.and_then(|c| c.location).is_some_and(|l| l.latitude.is_some());
                assert!(!located, "{ip} is located");
            }
        }
    }

    // ---- with a --geoip database ----

    /// MaxMind's GeoIP2-City-Test (not the database the built-in tables copy), read once.
    fn fixture_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/geoip/GeoIP2-City-Test.mmdb")
    }

    fn fixture_networks() -> Arc<Networks> {
        static NETS: std::sync::OnceLock<Arc<Networks>> = std::sync::OnceLock::new();
        NETS.get_or_init(|| Arc::new(Networks::from_geoip(&fixture_path()).unwrap()))
            .clone()
    }

    #[test]
    fn without_geoip_the_builtin_tables_are_used() {
        let d = GenConfig::default();
        assert!(matches!(d.networks.source, net::Source::Builtin));
        assert_eq!(d.networks, Networks::builtin());
        assert_ne!(*d.networks, *fixture_networks());
        let n = &d.networks;
        assert_eq!(n.regions.len(), net::REGIONS.len());
        for (r, t) in n.regions.iter().zip(net::REGIONS) {
            let parse = |c: &[&str]| c.iter().map(|c| net::Net::parse(c)).collect::<Vec<_>>();
            assert_eq!(
                (&r.home, &r.mobile, r.weight),
                (&parse(t.home), &parse(t.mobile), t.weight)
            );
            let l = net::location_of(t.home[0]).unwrap();
            assert_eq!(r.center, (l.lat, l.lon));
        }
        let mut unlocated = vec![net::CGNAT.to_string()];
        unlocated.extend(
            net::ATTACKER_V4
                .iter()
                .chain(net::ATTACKER_V6)
                .map(std::string::ToString::to_string),
        );
        assert_eq!(n.unlocated_ranges(), unlocated);
        assert_eq!(n.far.to_string(), "175.16.199.0/24");
        assert_eq!(n.slow_travel_ms, 14 * 3_600_000);
        assert!(matches!(n.source, net::Source::Builtin));
    }

    #[test]
    fn with_a_geoip_database_labels_are_exactly_the_firings() {
        assert_every_rule_labelled_exactly(fixture_networks());
    }

    #[test]
    fn with_a_geoip_database_legit_traffic_alone_fires_nothing() {
        assert_legit_traffic_fires_nothing(fixture_networks());
    }

    #[test]
    fn with_a_geoip_database_near_misses_alone_fire_nothing() {
        assert_near_misses_fire_nothing(&fixture_networks());
    }

    #[test]
    fn with_a_geoip_database_the_same_seed_gives_the_same_bytes() {
        let c = GenConfig {
            attack_rate: 50.0,
            networks: fixture_networks(),
            ..cfg(7, 3000)
        };
        let a = lines(c.clone());
        let again = Networks::from_geoip(&fixture_path()).unwrap();
        let b = lines(GenConfig {
            networks: Arc::new(again),
            ..c
        });
        assert!(a == b);
        assert_ne!(a, lines(cfg(7, 3000)));
    }
}
