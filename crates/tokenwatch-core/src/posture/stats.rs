//! ReportStats statistics over a replayed period: what `tokenwatch report` shows a security lead
//! about a fleet's token hygiene (algorithms, lifetimes, signing keys, issuers, where tokens
//! leak) beside what the rules found (findings, attacks over time, revocations).
//!
//! The collector is fed by the pipeline ([`crate::pipeline::Pipeline::set_posture`]) with
//! every decoded event and the decisions it caused, inside `replay`'s own loop: the report
//! sees exactly the events and decisions `replay` would print, in the same order.
//!
//! Memory is bounded whatever the logs hold. Names (algorithms, issuers, audiences, signing
//! keys, rules, paths) are kept up to a fixed count each ([`TopN`]) and everything past it is
//! counted as "other"; paths and ids are [`clip_text`]ed first. Distinct tokens are tracked by
//! a 64-bit hash of their id, up to [`MAX_TOKENS`]; token statistics are per distinct token so
//! a chatty client weighs as much as a quiet one. Each token is classed as the posture
//! metrics class it ([`TokenClass`]: algorithm, lifetime bucket, leak); only the report names
//! an unregistered `alg` (capped, escaped when written), where a metric label says `other`.
//! Lifetimes go into the metrics' fixed buckets, and the
//! timeline keeps [`TIME_BUCKETS`] buckets whose width grows with the period.
//! Nothing here ever holds a raw token: only ids as decisions carry them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::decision::{clip_text, Decision};
use crate::input::Event;
use crate::posture::{AlgClass, TokenClass, LIFETIME_BUCKETS, REGISTERED_ALGS};
use crate::rules::{Action, Severity};

/// Names kept per table (algorithms, issuers, audiences): a fleet has a handful; a flood of
/// forged values lands in "other".
pub const MAX_NAMES: usize = 32;
/// (issuer, kid) pairs kept.
pub const MAX_KEYS: usize = 64;
/// Paths kept per leak table.
pub const MAX_PATHS: usize = 20;
/// Rules kept (rule ids come from the rule files, not from traffic; the cap is a guard).
pub const MAX_RULES: usize = 128;
/// Example decisions kept per rule: the first ones of the period.
pub const MAX_EXAMPLES: usize = 3;
/// Distinct tokens tracked (8 bytes each, plus the set's overhead: a few MiB).
pub const MAX_TOKENS: usize = 1 << 18;
/// Buckets of the attack timeline.
pub const TIME_BUCKETS: usize = 48;

/// Widths the timeline's buckets take, each a multiple of the one before, so that growing the
/// width merges whole buckets.
const WIDTHS_MS: [i64; 12] = [
    60_000,
    5 * 60_000,
    15 * 60_000,
    30 * 60_000,
    3_600_000,
    2 * 3_600_000,
    6 * 3_600_000,
    12 * 3_600_000,
    86_400_000,
    7 * 86_400_000,
    28 * 86_400_000,
    364 * 86_400_000,
];

/// A count per name for at most `cap` names; a new name past the cap is counted in `other`.
#[derive(Debug, Clone, Default)]
pub struct TopN {
    counts: HashMap<Box<str>, u64>,
    other: u64,
    cap: usize,
}

impl TopN {
    pub fn new(cap: usize) -> Self {
        TopN { cap, ..TopN::default() }
    }

    /// Counts `n` for `name` (clipped as decisions clip request text).
    pub fn add(&mut self, name: &str, n: u64) {
        let name = clip_text(name);
        if let Some(c) = self.counts.get_mut(name.as_ref()) {
            *c += n;
        } else if self.counts.len() < self.cap {
            self.counts.insert(name.into(), n);
        } else {
            self.other += n;
        }
    }

    /// Names by count, highest first (then by name, for a stable order).
    pub fn ranked(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<_> = self.counts.iter().map(|(k, v)| (&**k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// What was counted for names past the cap.
    pub fn other(&self) -> u64 {
        self.other
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.other
    }
}

/// When one signing key (issuer, kid) was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySeen {
    pub first_ms: i64,
    pub last_ms: i64,
    /// Distinct tokens signed with it.
    pub tokens: u64,
}

/// A signing key, by a hash of (issuer, kid).
#[derive(Debug, Clone)]
struct SigningKey {
    iss: Box<str>,
    kid: Box<str>,
    seen: KeySeen,
}

/// Where tokens leak: in URLs (proxies, browser history and referrers keep them) and over
/// plain HTTP.
#[derive(Debug, Clone)]
pub struct Leaks {
    /// Requests with a token in the URL query.
    pub url_requests: u64,
    pub url_paths: TopN,
    /// Requests whose log line carried the scheme: without any, "plain HTTP" is unknown.
    pub scheme_logged: u64,
    pub http_requests: u64,
    pub http_paths: TopN,
}

/// One decision the report quotes: ids, never a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ts_ms: i64,
    pub token_id: Option<Box<str>>,
    pub subject: Option<Box<str>>,
    pub client_ip: Option<IpAddr>,
}

/// What one rule decided over the period.
#[derive(Debug, Clone)]
pub struct RuleFindings {
    pub rule: Arc<str>,
    pub severity: Severity,
    pub action: Action,
    pub decisions: u64,
    /// Decisions of a rule in shadow mode (logged, not acted on).
    pub shadow: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub examples: Vec<Example>,
    /// Decisions per timeline bucket ([`ReportStats::timeline`]).
    pub series: [u64; TIME_BUCKETS],
}

impl RuleFindings {
    /// Severity × count: a step of severity outweighs four times the count.
    pub fn risk(&self) -> u64 {
        let weight = match self.severity {
            Severity::Low => 1,
            Severity::Medium => 4,
            Severity::High => 16,
            Severity::Critical => 64,
        };
        weight * self.decisions
    }

    /// Revocations carried out (not shadow).
    pub fn revoked(&self) -> u64 {
        match self.action {
            Action::Alert => 0,
            _ => self.decisions - self.shadow,
        }
    }
}

/// The timeline's axis: bucket `i` covers `[start_ms + i·width_ms, start_ms + (i+1)·width_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub start_ms: i64,
    pub width_ms: i64,
}

/// The posture statistics of one period.
#[derive(Debug, Clone)]
pub struct ReportStats {
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Events (requests), and those that carried a token.
    pub events: u64,
    pub with_token: u64,
    /// Distinct tokens counted below (at most [`MAX_TOKENS`]), and requests of tokens past
    /// that cap, which are in none of the token tables.
    pub tokens: u64,
    pub untracked_requests: u64,
    seen: HashSet<u64>,
    /// Distinct tokens without a signature (`alg: none` or an empty signature).
    pub unsigned: u64,
    /// Distinct tokens whose signature tokenwatch verified with a configured JWKS.
    pub verified: u64,
    pub algorithms: TopN,
    /// Distinct tokens per lifetime bucket ([`LIFETIME_BUCKETS`], then
    /// [`crate::posture::LIFETIME_OVER`]), and those without `iat` or `exp`.
    pub lifetimes: [u64; LIFETIME_BUCKETS.len() + 1],
    pub no_lifetime: u64,
    pub issuers: TopN,
    pub audiences: TopN,
    keys: HashMap<u64, SigningKey>,
    /// Tokens signed by keys past [`MAX_KEYS`].
    pub other_keys: u64,
    pub leaks: Leaks,
    pub timeline: Timeline,
    rules: Vec<RuleFindings>,
    /// Decisions of rules past [`MAX_RULES`].
    pub other_rules: u64,
}

impl Default for ReportStats {
    fn default() -> Self {
        ReportStats {
            first_ms: None,
            last_ms: None,
            events: 0,
            with_token: 0,
            tokens: 0,
            untracked_requests: 0,
            seen: HashSet::new(),
            unsigned: 0,
            verified: 0,
            algorithms: TopN::new(MAX_NAMES),
            lifetimes: [0; LIFETIME_BUCKETS.len() + 1],
            no_lifetime: 0,
            issuers: TopN::new(MAX_NAMES),
            audiences: TopN::new(MAX_NAMES),
            keys: HashMap::new(),
            other_keys: 0,
            leaks: Leaks {
                url_requests: 0,
                url_paths: TopN::new(MAX_PATHS),
                scheme_logged: 0,
                http_requests: 0,
                http_paths: TopN::new(MAX_PATHS),
            },
            timeline: Timeline {
                start_ms: 0,
                width_ms: WIDTHS_MS[0],
            },
            rules: Vec::new(),
            other_rules: 0,
        }
    }
}

/// The token's id hashed for the distinct-token set (fixed seeds: the same logs give the
/// same report; a collision only merges two tokens' statistics).
fn token_hash(id: &str) -> u64 {
    const IDS: crate::hash::Seeded =
        crate::hash::Seeded::with_seeds([0x706f_7374, 0x7572_6521, 0x746f_6b65, 0x6e69_6473]);
    IDS.hash_one(id)
}

impl ReportStats {
    pub fn new() -> Self {
        ReportStats::default()
    }

    /// One request and the decisions it caused.
    pub fn observe(&mut self, ev: &Event, decisions: &[Decision]) {
        self.events += 1;
        self.with_token += u64::from(ev.token.is_some());
        self.observe_use(ev, decisions);
    }

    /// A second, different token that a request carried in its URL (the engine sees it as an
    /// event of its own): its token, leak and decisions, not a second request.
    pub fn observe_use(&mut self, ev: &Event, decisions: &[Decision]) {
        self.observe_time(ev.ts_ms);
        let class = TokenClass::of(ev);
        self.observe_leaks(ev, class);
        if let (Some(t), Some(class)) = (&ev.token, class) {
            let h = token_hash(&t.token_id);
            let new = if self.seen.len() >= MAX_TOKENS {
                self.untracked_requests += u64::from(!self.seen.contains(&h));
                false
            } else {
                self.seen.insert(h)
            };
            if new {
                self.observe_token(t, class);
            }
            self.observe_key(t, ev.ts_ms, new);
        }
        for d in decisions {
            self.observe_decision(d);
        }
    }

    fn observe_time(&mut self, ts_ms: i64) {
        if self.first_ms.is_none() {
            self.timeline.start_ms = ts_ms - ts_ms.rem_euclid(WIDTHS_MS[0]);
        }
        self.first_ms = Some(self.first_ms.map_or(ts_ms, |f| f.min(ts_ms)));
        self.last_ms = Some(self.last_ms.map_or(ts_ms, |l| l.max(ts_ms)));
        self.widen_to(ts_ms);
    }

    fn observe_leaks(&mut self, ev: &Event, class: Option<TokenClass>) {
        let l = &mut self.leaks;
        l.scheme_logged += u64::from(ev.scheme.is_some());
        let Some(c) = class else { return };
        if c.in_url {
            l.url_requests += 1;
            l.url_paths.add(&ev.path, 1);
        }
        if c.over_http {
            l.http_requests += 1;
            l.http_paths.add(&ev.path, 1);
        }
    }

    /// The first request of a distinct token.
    fn observe_token(&mut self, t: &crate::token::TokenInfo, class: TokenClass) {
        self.tokens += 1;
        self.unsigned += u64::from(t.unsigned);
        self.verified += u64::from(t.verified);
        let alg = match class.alg {
            AlgClass::Registered(i) => REGISTERED_ALGS[i],
            AlgClass::Unregistered => t.alg.as_deref().unwrap_or_default(),
            AlgClass::Absent => "(none)",
        };
        self.algorithms.add(alg, 1);
        match class.lifetime {
            Some((b, _)) => self.lifetimes[b] += 1,
            None => self.no_lifetime += 1,
        }
        self.issuers.add(t.iss.as_deref().unwrap_or("(none)"), 1);
        if t.aud.is_empty() {
            self.audiences.add("(none)", 1);
        }
        for a in t.aud.iter().take(MAX_NAMES) {
            self.audiences.add(a, 1);
        }
    }

    /// The signing key of a request's token: first and last seen on every request (a lookup
    /// by hash, no allocation), tokens counted on a token's first request.
    fn observe_key(&mut self, t: &crate::token::TokenInfo, ts_ms: i64, new_token: bool) {
        let (Some(iss), Some(kid)) = (&t.iss, &t.kid) else {
            return;
        };
        let (iss, kid) = (clip_text(iss), clip_text(kid));
        // Fixed keys, derived once at compile time: this runs on every request.
        const KEYS: crate::hash::Seeded = crate::hash::Seeded::with_seeds([1, 2, 3, 4]);
        let h = KEYS.hash_one((&*iss, &*kid));
        if let Some(k) = self.keys.get_mut(&h) {
            k.seen.first_ms = k.seen.first_ms.min(ts_ms);
            k.seen.last_ms = k.seen.last_ms.max(ts_ms);
            k.seen.tokens += u64::from(new_token);
        } else if self.keys.len() < MAX_KEYS {
            let seen = KeySeen {
                first_ms: ts_ms,
                last_ms: ts_ms,
                tokens: u64::from(new_token),
            };
            self.keys.insert(
                h,
                SigningKey {
                    iss: iss.into(),
                    kid: kid.into(),
                    seen,
                },
            );
        } else {
            self.other_keys += u64::from(new_token);
        }
    }

    fn observe_decision(&mut self, d: &Decision) {
        let i = match self.rules.iter().position(|r| r.rule == d.rule) {
            Some(i) => i,
            None if self.rules.len() < MAX_RULES => {
                self.rules.push(RuleFindings {
                    rule: d.rule.clone(),
                    severity: d.severity,
                    action: d.action,
                    decisions: 0,
                    shadow: 0,
                    first_ms: d.ts,
                    last_ms: d.ts,
                    examples: Vec::new(),
                    series: [0; TIME_BUCKETS],
                });
                self.rules.len() - 1
            }
            None => {
                self.other_rules += 1;
                return;
            }
        };
        self.widen_to(d.ts);
        let bucket = self.bucket(d.ts);
        let r = &mut self.rules[i];
        r.decisions += 1;
        r.shadow += u64::from(d.shadow);
        r.first_ms = r.first_ms.min(d.ts);
        r.last_ms = r.last_ms.max(d.ts);
        r.series[bucket] += 1;
        if r.examples.len() < MAX_EXAMPLES {
            r.examples.push(Example {
                ts_ms: d.ts,
                token_id: d.token_id.as_deref().map(|s| clip_text(s).into()),
                subject: d.subject.as_deref().map(|s| clip_text(s).into()),
                client_ip: d.client_ip,
            });
        }
    }

    /// Grows the bucket width until `ts_ms` falls inside the timeline, merging buckets.
    fn widen_to(&mut self, ts_ms: i64) {
        let t = &mut self.timeline;
        while ts_ms
            >= t.start_ms
                .saturating_add(t.width_ms.saturating_mul(TIME_BUCKETS as i64))
        {
            let Some(next) = WIDTHS_MS.iter().copied().find(|w| *w > t.width_ms) else {
                return;
            };
            let factor = (next / t.width_ms) as usize;
            for r in &mut self.rules {
                let mut merged = [0; TIME_BUCKETS];
                for (i, n) in r.series.iter().enumerate() {
                    merged[i / factor] += n;
                }
                r.series = merged;
            }
            t.width_ms = next;
        }
    }

    /// The bucket of `ts_ms`: times before the start go to the first, after the widest
    /// timeline to the last.
    fn bucket(&self, ts_ms: i64) -> usize {
        let t = &self.timeline;
        let i = ts_ms.saturating_sub(t.start_ms).max(0) / t.width_ms;
        (i as usize).min(TIME_BUCKETS - 1)
    }

    /// Rules by risk ([`RuleFindings::risk`]), highest first, then by id.
    pub fn findings(&self) -> Vec<&RuleFindings> {
        let mut v: Vec<_> = self.rules.iter().collect();
        v.sort_by(|a, b| b.risk().cmp(&a.risk()).then(a.rule.cmp(&b.rule)));
        v
    }

    /// Signing keys by issuer then kid.
    pub fn keys(&self) -> Vec<(&str, &str, KeySeen)> {
        let mut v: Vec<_> = self.keys.values().map(|k| (&*k.iss, &*k.kid, k.seen)).collect();
        v.sort();
        v
    }
}

impl PartialOrd for KeySeen {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeySeen {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.first_ms, self.last_ms, self.tokens).cmp(&(other.first_ms, other.last_ms, other.tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenInfo;
    use std::borrow::Cow;

    fn token(id: &str, alg: &str, kid: &str, lifetime: i64) -> Arc<TokenInfo> {
        Arc::new(TokenInfo {
            alg: Some(alg.into()),
            kid: Some(kid.into()),
            aud: Arc::new(["api".into()]),
            exp: Some(1_000 + lifetime),
            iat: Some(1_000),
            ..TokenInfo::test_token(id, "bob")
        })
    }

    fn event(ts_ms: i64, path: &str, token: Option<Arc<TokenInfo>>, in_url: bool) -> Event<'_> {
        Event {
            ts_ms,
            client_ip: None,
            method: Cow::Borrowed("GET"),
            path: Cow::Borrowed(path),
            status: Some(200),
            user_agent: Cow::Borrowed(""),
            token,
            token_in_url: in_url,
            authenticated: true,
            geo: None,
            scheme: None,
            second_token: false,
        }
    }

    fn decision(ts: i64, rule: &str, severity: Severity) -> Decision {
        Decision {
            ts,
            rule: rule.into(),
            severity,
            action: Action::RevokeToken,
            token_id: Some("t1".into()),
            subject: Some("https://idp|bob".into()),
            revocation_key: None,
            iss: None,
            sub: None,
            client_ip: None,
            expires_at: None,
            not_before: None,
            shadow: false,
            reason: String::new(),
            evidence: serde_json::Value::Null,
        }
    }

    #[test]
    fn token_tables_count_distinct_tokens_not_requests() {
        let mut p = ReportStats::new();
        let a = token("a", "RS256", "k1", 600);
        for ts in [0, 1_000, 2_000] {
            p.observe(&event(ts, "/x", Some(a.clone()), false), &[]);
        }
        p.observe(
            &event(3_000, "/y?", Some(token("b", "HS256", "k2", 2 * 86_400)), true),
            &[],
        );
        p.observe(&event(4_000, "/z", None, false), &[]);
        assert_eq!((p.events, p.with_token, p.tokens), (5, 4, 2));
        assert_eq!(p.algorithms.ranked(), vec![("HS256", 1), ("RS256", 1)]);
        assert_eq!(p.lifetimes, [0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(p.leaks.url_requests, 1);
        assert_eq!(p.leaks.url_paths.ranked(), vec![("/y?", 1)]);
        assert_eq!(p.leaks.scheme_logged, 0, "no preset logs the scheme yet");
        let keys = p.keys();
        assert_eq!(keys[0].0, "https://idp");
        assert_eq!((keys[0].1, keys[0].2.first_ms, keys[0].2.last_ms), ("k1", 0, 2_000));
    }

    /// The posture metrics (per event) and the report (per distinct token) class a token
    /// alike: with each token seen once, their lifetime buckets are the same counts, `none`
    /// in any case is `none` in both, and an unregistered `alg` is `other` in the metrics
    /// while the report names it.
    #[test]
    fn the_metrics_and_the_report_class_tokens_alike() {
        let posture = crate::posture::Posture::default();
        let (mut metrics, mut report) = (crate::posture::PostureStats::default(), ReportStats::new());
        let tokens = [
            token("a", "RS256", "k1", 200),
            token("b", "None", "k1", 3 * 3_600),
            token("c", "RS1", "k1", 40 * 86_400),
            token("d", "HS256", "k1", -5),
            token("e", "ES256", "k1", 86_400),
        ];
        for (i, t) in tokens.into_iter().enumerate() {
            let ev = event(i as i64, "/x", Some(t), i == 0);
            metrics.observe(&ev, &posture);
            report.observe(&ev, &[]);
        }
        assert_eq!(metrics.lifetime, report.lifetimes);
        assert_eq!(report.lifetimes, [2, 0, 0, 1, 1, 0, 0, 1]);
        let by_alg = &metrics.by_issuer[0].by_alg;
        let count = |name: &str| {
            let i = REGISTERED_ALGS
                .iter()
                .position(|r| *r == name)
                .unwrap_or(REGISTERED_ALGS.len());
            by_alg[i]
        };
        assert_eq!((count("none"), count("other"), count("RS256")), (1, 1, 1));
        let names: Vec<&str> = report.algorithms.ranked().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ES256", "HS256", "RS1", "RS256", "none"]);
        assert_eq!((metrics.by_issuer[0].in_url, report.leaks.url_requests), (1, 1));
    }

    #[test]
    fn names_past_the_cap_are_counted_as_other_and_paths_are_clipped() {
        let mut t = TopN::new(2);
        t.add("a", 1);
        t.add("b", 2);
        t.add("c", 5);
        t.add("a", 1);
        assert_eq!(t.ranked(), vec![("a", 2), ("b", 2)], "ties by name");
        assert_eq!((t.other(), t.total()), (5, 9));
        let mut long = TopN::new(1);
        long.add(&"/p".repeat(10_000), 1);
        assert!(long.ranked()[0].0.len() <= crate::decision::MAX_TEXT_BYTES);
    }

    #[test]
    fn the_timeline_widens_by_merging_buckets_and_findings_rank_by_risk() {
        let mut p = ReportStats::new();
        let t0 = 1_795_910_400_000;
        p.observe(&event(t0, "/", None, false), &[decision(t0, "low-rule", Severity::Low)]);
        let many: Vec<_> = (0..5)
            .map(|_| decision(t0 + 600_000, "low-rule", Severity::Low))
            .collect();
        p.observe(&event(t0 + 600_000, "/", None, false), &many);
        let crit = decision(t0 + 86_400_000 - 1, "crit-rule", Severity::Critical);
        p.observe(&event(t0 + 86_400_000 - 1, "/", None, false), &[crit]);
        assert_eq!(p.timeline.width_ms, 30 * 60_000, "a day in 48 buckets of 30 min");
        let f = p.findings();
        assert_eq!((&*f[0].rule, f[0].risk()), ("crit-rule", 64));
        assert_eq!((&*f[1].rule, f[1].decisions, f[1].risk()), ("low-rule", 6, 6));
        assert_eq!(f[1].series[0], 6, "10 min apart: one 30-min bucket");
        assert_eq!(f[0].series[TIME_BUCKETS - 1], 1);
        assert_eq!(f[1].examples.len(), MAX_EXAMPLES);
        assert_eq!(f[1].revoked(), 6);
    }

    #[test]
    fn the_pipeline_feeds_every_request_its_url_token_and_their_decisions() {
        use crate::pipeline::{Pipeline, PipelineConfig};
        use serde_json::json;
        let jwt = |jti: &str, alg: &str| {
            let claims =
                json!({"iss": "https://idp", "sub": "u", "jti": jti, "iat": 1_795_910_400, "exp": 1_795_911_300});
            crate::token::encode_unsigned_parts(&json!({"alg": alg, "kid": "k1"}), &claims, b"a-signature-segment")
        };
        let line = json!({"ts": 1_795_910_400, "client_ip": "198.51.100.7", "method": "GET",
                          "path": format!("/export?access_token={}", jwt("in-url", "none")),
                          "status": 200, "authorization": format!("Bearer {}", jwt("in-header", "RS256"))})
        .to_string();
        let mut p = Pipeline::new(crate::defaults::rules().unwrap(), None, PipelineConfig::default()).unwrap();
        p.set_posture_stats(Some(ReportStats::new()));
        let mut out = Vec::new();
        p.process_line(line.as_bytes(), &mut out);
        let posture = p.take_posture_stats().unwrap();
        assert_eq!((posture.events, posture.with_token, posture.tokens), (1, 1, 2));
        assert_eq!(posture.leaks.url_requests, 1);
        assert_eq!(posture.leaks.url_paths.ranked(), vec![("/export", 1)]);
        let found: u64 = posture.findings().iter().map(|r| r.decisions).sum();
        assert_eq!(found, out.len() as u64);
        assert!(found > 0, "unsigned-token fires on the URL's token");
        assert!(p.take_posture_stats().is_none(), "taken once");
    }
}
