//! Aggregation of unauthenticated critical decisions per source network: one forger must not
//! page a thousand times.
//!
//! 1,000 `alg: none` tokens with fresh `jti`s sent to a 404 are 1,000 distinct keys for a rule
//! keyed by token, so cooldowns do not help: each was a critical decision, and a page. A
//! decision of `critical` severity about an event that is *not* authenticated (nothing shows
//! the token is genuine, so its sender chose every claim) is therefore grouped by (rule, source
//! network: the engine's /24 for IPv4, /64 for IPv6; events without an address form one group)
//! over a fixed window of event time (`[engine] aggregate_window`, [`WINDOW_MS`] by default;
//! `0` turns aggregation off), opened by the group's first decision:
//!
//! - the first decision of a window is emitted at once, with `"aggregated": 1`;
//! - later ones are emitted only when their count in the window reaches 10, 100, 1,000, ...,
//!   carrying `"aggregated": N` (the decisions this group has had in the window so far); the
//!   others are suppressed and counted ([`Aggregator::suppressed`],
//!   `tokenwatch_aggregated_decisions_total`).
//!
//! So a flood of N decisions from one network gives about log10(N) + 1 decisions, each with
//! the count so far, without waiting for a window to close: everything depends on event time
//! and order only, and `replay` decides exactly what `run` does. Authenticated decisions, and
//! decisions below critical, are never aggregated: a real token's misuse is always reported.
//!
//! The groups are bounded ([`MAX_GROUPS`]): past it, closed windows are dropped, and if every
//! window is still open all groups are forgotten (counted in `resets`); a forgotten group
//! starts afresh, which can only add decisions, never hide one. Groups are part of the
//! engine's checkpoint, so a restarted `run` still decides what `replay` does.

use std::hash::{BuildHasher, Hash, Hasher};

use serde_json::json;

use super::keymap::IdMap;
use crate::decision::Decision;
use crate::rules::{Ctx, Severity};

/// How long (event time) a group's window lasts from its first decision, by default.
pub const WINDOW_MS: i64 = 600_000;
/// Groups held at most.
pub const MAX_GROUPS: usize = 100_000;

/// One (rule, network) group's current window.
pub(super) struct Group {
    pub(super) start_ms: i64,
    pub(super) count: u64,
}

/// The open windows, by hash of (rule, network).
#[derive(Default)]
pub struct Aggregator {
    /// The window (ms); 0: every decision is emitted.
    window_ms: i64,
    pub(super) groups: IdMap<Group>,
    /// Decisions suppressed (folded into a group's count).
    pub suppressed: u64,
    /// Times every group was forgotten because [`MAX_GROUPS`] windows were open.
    pub resets: u64,
}

impl Aggregator {
    pub fn new(window_ms: i64) -> Self {
        Aggregator {
            window_ms,
            ..Aggregator::default()
        }
    }

    /// Whether `d`, decided for the event of `cx`, is emitted; an aggregated decision that is
    /// emitted gets its `aggregated` count in the evidence.
    pub fn admit(&mut self, hasher: &crate::hash::Seeded, cx: &Ctx<'_>, d: &mut Decision) -> bool {
        if self.window_ms <= 0 || d.severity != Severity::Critical || cx.ev.authenticated {
            return true;
        }
        let mut h = hasher.build_hasher();
        10u8.hash(&mut h);
        d.rule.hash(&mut h);
        cx.network.hash(&mut h);
        let key = h.finish();
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            self.sweep(d.ts);
            if self.groups.len() >= MAX_GROUPS {
                self.groups.clear();
                self.resets += 1;
            }
        }
        let g = self.groups.entry(key).or_insert(Group {
            start_ms: d.ts,
            count: 0,
        });
        if d.ts >= g.start_ms.saturating_add(self.window_ms) {
            *g = Group {
                start_ms: d.ts,
                count: 0,
            };
        }
        g.count += 1;
        if !is_power_of_ten(g.count) {
            self.suppressed += 1;
            return false;
        }
        if let Some(e) = d.evidence.as_object_mut() {
            e.insert("aggregated".into(), json!(g.count));
        }
        true
    }

    /// Drops the groups whose window has closed by `now`.
    pub fn sweep(&mut self, now: i64) {
        let window = self.window_ms;
        self.groups.retain(|_, g| now < g.start_ms.saturating_add(window));
    }
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n % 10 == 0 {
        n /= 10;
    }
    n == 1
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;
    use crate::decision::Decision;
    use crate::engine::{Engine, EngineConfig};
    use crate::input::Event;
    use crate::rules::RuleSet;
    use crate::token::TokenInfo;

    const T0: i64 = 1_795_910_400_000; // 2026-11-29T00:00:00Z

    #[test]
    fn powers_of_ten() {
        let p: Vec<u64> = (1..=1_000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(p, [1, 10, 100, 1_000]);
    }

    fn unsigned(jti: &str) -> Arc<TokenInfo> {
        Arc::new(TokenInfo {
            alg: Some("none".into()),
            unsigned: true,
            verified: false,
            ..TokenInfo::test_token(jti, "x")
        })
    }

    fn ev(ts: i64, ip: &str, tok: Arc<TokenInfo>, authenticated: bool) -> Event<'static> {
        Event {
            ts_ms: ts,
            client_ip: Some(ip.parse().unwrap()),
            method: Cow::Borrowed("GET"),
            path: Cow::Borrowed("/nope"),
            status: Some(404),
            user_agent: Cow::Borrowed("ua"),
            token: Some(tok),
            token_in_url: false,
            authenticated,
            geo: None,
            scheme: None,
            second_token: false,
        }
    }

    fn engine() -> Engine {
        let rules = crate::defaults::rules().unwrap();
        let r = rules.rules.iter().find(|r| &*r.id == "unsigned-token").unwrap().clone();
        let set = Arc::new(RuleSet {
            rules: vec![r],
            files: 1,
        });
        Engine::new(set, EngineConfig::default())
    }

    /// The flood: 1,000 `alg: none` tokens with fresh `jti`s from one /24 to a 404, in
    /// under ten minutes. On main: 1,000 critical decisions (pages). Now: four, at counts 1,
    /// 10, 100 and 1,000, and the other 996 counted.
    #[test]
    fn an_unauthenticated_flood_from_one_network_gives_a_handful_of_decisions_with_the_count() {
        let mut e = engine();
        let mut out = Vec::new();
        for i in 0..1_000i64 {
            let ip = format!("203.0.113.{}", i % 250);
            e.process(&ev(T0 + i * 500, &ip, unsigned(&format!("f{i}")), false), &mut out);
        }
        let counts: Vec<u64> = out.iter().map(|d| d.evidence["aggregated"].as_u64().unwrap()).collect();
        assert_eq!(counts, [1, 10, 100, 1_000]);
        assert!(out.iter().all(|d| &*d.rule == "unsigned-token"));
        assert_eq!(e.stats().aggregated, 996);

        // another network is its own group; the first network's window closes after 10 min
        let mut more = Vec::new();
        e.process(&ev(T0 + 500_000, "198.51.100.9", unsigned("g1"), false), &mut more);
        e.process(&ev(T0 + WINDOW_MS, "203.0.113.1", unsigned("g2"), false), &mut more);
        let counts: Vec<u64> = more
            .iter()
            .map(|d| d.evidence["aggregated"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [1, 1]);
    }

    #[test]
    fn authenticated_decisions_are_never_aggregated() {
        let mut e = engine();
        let mut out = Vec::new();
        for i in 0..100i64 {
            e.process(
                &ev(T0 + i * 500, "203.0.113.7", unsigned(&format!("a{i}")), true),
                &mut out,
            );
        }
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|d| d.evidence.get("aggregated").is_none()));
        assert_eq!(e.stats().aggregated, 0);
    }

    /// The groups are part of the checkpoint: a restored engine goes on counting, so `run`
    /// after a restart emits what `replay` does.
    #[test]
    fn groups_survive_a_checkpoint() {
        let flood = |e: &mut Engine, from: i64, to: i64, out: &mut Vec<Decision>| {
            for i in from..to {
                e.process(&ev(T0 + i * 500, "203.0.113.7", unsigned(&format!("c{i}")), false), out);
            }
        };
        let mut e = engine();
        let mut out = Vec::new();
        flood(&mut e, 0, 5, &mut out);
        let mut bytes = Vec::new();
        e.snapshot(&mut bytes);
        let mut restored = engine();
        restored.restore(&bytes).unwrap();
        flood(&mut restored, 5, 10, &mut out);
        let counts: Vec<u64> = out.iter().map(|d| d.evidence["aggregated"].as_u64().unwrap()).collect();
        assert_eq!(counts, [1, 10]);
    }

    #[test]
    fn a_zero_window_turns_aggregation_off() {
        let mut e = engine();
        e.cfg.aggregate_window_ms = 0;
        e.aggregate = Aggregator::new(0);
        let mut out = Vec::new();
        for i in 0..20i64 {
            e.process(
                &ev(T0 + i * 500, "203.0.113.7", unsigned(&format!("z{i}")), false),
                &mut out,
            );
        }
        assert_eq!(out.len(), 20);
    }
}
