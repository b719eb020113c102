//! `revoked_use`: a token used after this engine revoked it, directly or through its
//! subject; and the memory of revocations it reads.
//!
//! A token revocation is remembered as long as its Redis blocklist entry lives (token expiry
//! plus leeway, clamped to `[min_token_ttl, max_token_ttl]`), a subject revocation for the
//! subject TTL: the engine's memory and the gateways' blocklist agree on when a revocation
//! ends, and an entry leaves the memory when its Redis key expires.
//!
//! The memory holds every revocation that is still live. Both maps (tokens, subjects) have a
//! cap (`max_revocations`, 1,000,000 each by default); a revocation past the cap first makes
//! room by dropping what has expired. Only when every remembered revocation is still live is
//! one dropped: the one closest to its end (possibly the new one), because it is the one whose
//! reuse the gateways' blocklist stops guarding soonest, and an attacker cannot push a
//! revocation out with ones that end *sooner*. Such a drop is never silent: it is counted
//! (`full`, `tokenwatch_revoked_memory_full_total`, a warning and an alert rule). Revocations
//! come only from authenticated evidence and each revoking rule has a budget, so a full memory
//! means a real surge, not a forged flood.
//!
//! `tokenwatch unrevoke` deletes a revocation in Redis and appends an `unrevoke` entry to the
//! feed; a running service follows the feed and [`Revocations::forget_token`] /
//! [`Revocations::forget_subject`] drop the revocation here too, by the feed's key id.
//!
//! The kind keeps no window (only its keys' cooldowns), so events later than the allowed
//! lateness are checked too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde_json::json;

use super::keymap::IdMap;
use super::state::{Env, KindStep, View};
use super::{said, Fired};
use crate::decision::fmt_ts;
use crate::rules::{Ctx, Rule};

/// A `revoked_use` rule has no parameters.
pub struct RevokedUse;

/// How the event's token is revoked: `"token"` or `"subject"`, and by what.
pub type Via = (&'static str, Revoked);

impl KindStep for RevokedUse {
    type Data = ();
    type Input<'e> = Via;
    type Hit<'s> = Via;
    const SEES_LATE: bool = true;

    fn input<'e>(&self, cx: &'e Ctx<'e>, env: &mut Env<'_>) -> Option<Via> {
        let tok = cx.ev.token.as_ref()?;
        let tk = env.memo.token_id(env.hasher, cx)?;
        let sk = env.memo.subject(env.hasher, cx)?;
        env.revoked.check(tk, sk, tok.iat, cx.ev.ts_ms).map(|h| match h {
            Hit::Token(r) => ("token", r.clone()),
            Hit::Subject(r) => ("subject", r.clone()),
        })
    }

    fn step(&self, (): &mut (), _: i64, via: Via) -> Option<Via> {
        Some(via)
    }

    fn fired(&self, rule: &Rule, cx: &Ctx<'_>, (via, r): Via) -> Fired {
        let mut evidence = json!({
            "revoked": via,
            "revoked_by": &*r.rule,
            "revoked_at": fmt_ts(r.revoked_at_ms),
        });
        if via == "subject" {
            evidence["not_before"] = json!(r.not_before_s);
            evidence["token_iat"] = json!(cx.ev.token.as_ref().and_then(|t| t.iat));
        }
        let what = if via == "token" {
            "a revoked token"
        } else {
            "a token of a revoked subject"
        };
        Fired {
            reason: format!(
                "{}: {what}, revoked by rule {} at {}.",
                said(rule),
                r.rule,
                fmt_ts(r.revoked_at_ms)
            ),
            evidence,
            not_before_ms: None,
        }
    }

    fn view(&self, _: Option<&()>, _: &Ctx<'_>) -> View {
        View {
            window: Vec::new(),
            progress: None,
            why_not: "the token is not revoked, directly or by its subject".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Revoked {
    pub rule: Arc<str>,
    pub revoked_at_ms: i64,
    pub until_ms: i64,
    /// Subjects: tokens issued before this (epoch seconds) are revoked.
    pub not_before_s: i64,
    /// The hash (engine seeds) of the revocation's key id in Redis and the feed
    /// (`TokenInfo::token_revocation_key` / `subject_revocation_key`): what an `unrevoke`
    /// entry of the feed names.
    pub feed_id: u64,
}

/// One kind of revocation (tokens or subjects): the entries by state key, and their ends in a
/// min-heap so that expired entries and the one closest to its end are found without a scan.
/// The heap may hold stale pairs (an entry replaced or forgotten); they are skipped when met
/// and compacted away when they outnumber the live ones.
#[derive(Default)]
pub struct Memory {
    pub(super) map: IdMap<Revoked>,
    ends: BinaryHeap<Reverse<(i64, u64)>>,
}

impl Memory {
    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &Revoked)> {
        self.map.iter()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, key: &u64) -> Option<&Revoked> {
        self.map.get(key)
    }

    /// Is `(until, key)` the entry's current end?
    fn current(&self, until: i64, key: u64) -> bool {
        self.map.get(&key).is_some_and(|r| r.until_ms == until)
    }

    /// Drops every entry that ended at or before `now`.
    fn expire(&mut self, now: i64) {
        while let Some(&Reverse((until, key))) = self.ends.peek() {
            if until > now {
                break;
            }
            self.ends.pop();
            if self.current(until, key) {
                self.map.remove(&key);
            }
        }
    }

    /// The end of the live entry closest to its end.
    fn soonest(&mut self) -> Option<(i64, u64)> {
        while let Some(&Reverse((until, key))) = self.ends.peek() {
            if self.current(until, key) {
                return Some((until, key));
            }
            self.ends.pop();
        }
        None
    }

    /// Inserts `r` under `key` with at most `cap` entries; returns whether a live revocation
    /// had to be dropped (the new one or the one closest to its end).
    fn insert(&mut self, key: u64, r: Revoked, cap: usize) -> bool {
        let mut dropped = false;
        if !self.map.contains_key(&key) && self.map.len() >= cap {
            self.expire(r.revoked_at_ms);
            if self.map.len() >= cap {
                dropped = true;
                match self.soonest() {
                    Some((until, old)) if until < r.until_ms => {
                        self.map.remove(&old);
                    }
                    _ => return true,
                }
            }
        }
        self.ends.push(Reverse((r.until_ms, key)));
        self.map.insert(key, r);
        if self.ends.len() > 2 * self.map.len() + 64 {
            self.ends = self.map.iter().map(|(k, r)| Reverse((r.until_ms, *k))).collect();
        }
        dropped
    }

    /// Drops the entries whose feed id is `feed_id`; true when there was one.
    fn forget(&mut self, feed_id: u64) -> bool {
        let before = self.map.len();
        self.map.retain(|_, r| r.feed_id != feed_id);
        before != self.map.len()
    }
}

pub struct Revocations {
    pub(super) tokens: Memory,
    pub(super) subjects: Memory,
    cap: usize,
    /// Live revocations dropped because the memory was full.
    pub full: u64,
}

/// How an event's token was revoked.
pub enum Hit<'a> {
    Token(&'a Revoked),
    Subject(&'a Revoked),
}

impl Revocations {
    pub fn new(cap: usize) -> Self {
        Revocations {
            tokens: Memory::default(),
            subjects: Memory::default(),
            cap: cap.max(10),
            full: 0,
        }
    }

    pub fn revoke_token(&mut self, key: u64, r: Revoked) {
        if self.tokens.insert(key, r, self.cap) {
            self.full += 1;
        }
    }

    pub fn revoke_subject(&mut self, key: u64, r: Revoked) {
        // A later revocation with a later not_before supersedes an earlier one.
        if let Some(old) = self.subjects.get(&key) {
            if old.not_before_s >= r.not_before_s && old.until_ms >= r.until_ms {
                return;
            }
        }
        if self.subjects.insert(key, r, self.cap) {
            self.full += 1;
        }
    }

    /// Forgets the token revocation with this feed id (an `unrevoke` entry of the feed).
    pub fn forget_token(&mut self, feed_id: u64) -> bool {
        self.tokens.forget(feed_id)
    }

    /// Forgets the subject revocation with this feed id.
    pub fn forget_subject(&mut self, feed_id: u64) -> bool {
        self.subjects.forget(feed_id)
    }

    /// Was the token (by id key) or its subject (with the token's `iat`) revoked before `ts`?
    pub fn check(&self, token_key: u64, subject_key: u64, iat: Option<i64>, ts: i64) -> Option<Hit<'_>> {
        if let Some(r) = self.tokens.get(&token_key) {
            if r.revoked_at_ms < ts && ts < r.until_ms {
                return Some(Hit::Token(r));
            }
        }
        if let (Some(r), Some(iat)) = (self.subjects.get(&subject_key), iat) {
            if r.revoked_at_ms < ts && ts < r.until_ms && r.not_before_s > iat {
                return Some(Hit::Subject(r));
            }
        }
        None
    }

    pub fn sweep(&mut self, now: i64) {
        self.tokens.expire(now);
        self.subjects.expire(now);
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(at: i64, until: i64, nb: i64) -> Revoked {
        Revoked {
            rule: "r".into(),
            revoked_at_ms: at,
            until_ms: until,
            not_before_s: nb,
            feed_id: 0,
        }
    }

    #[test]
    fn token_revocations_apply_after_and_until() {
        let mut r = Revocations::new(100);
        r.revoke_token(1, rev(1_000, 10_000, 0));
        assert!(r.check(1, 2, None, 1_000).is_none(), "not the revoking event itself");
        assert!(matches!(r.check(1, 2, None, 1_001), Some(Hit::Token(_))));
        assert!(r.check(1, 2, None, 10_000).is_none(), "expired");
    }

    #[test]
    fn subject_revocations_cover_tokens_issued_before_not_before() {
        let mut r = Revocations::new(100);
        r.revoke_subject(2, rev(1_000, 100_000, 50));
        assert!(matches!(r.check(1, 2, Some(49), 2_000), Some(Hit::Subject(_))));
        assert!(
            r.check(1, 2, Some(50), 2_000).is_none(),
            "issued at not_before: new token"
        );
        assert!(r.check(1, 2, None, 2_000).is_none(), "no iat: cannot tell");
    }

    #[test]
    fn bounded_and_swept() {
        let mut r = Revocations::new(10);
        for k in 0..25 {
            r.revoke_token(k, rev(0, 1_000 + k as i64, 0));
        }
        assert_eq!(r.len(), 10);
        assert_eq!(r.full, 15, "every live revocation dropped is counted");
        r.sweep(2_000);
        assert!(r.is_empty());
    }

    /// The issue's blinding: a flood of revocations must not push out a live one while the
    /// memory can still hold every live revocation (on main a full map dropped a tenth of it
    /// at once, live entries included); when it truly cannot, the one closest to its end goes
    /// and the drop is counted.
    #[test]
    fn a_flood_cannot_evict_a_live_revocation_until_the_cap_is_exhausted() {
        let cap = 100;
        let mut r = Revocations::new(cap);
        let real = 1u64 << 40;
        r.revoke_token(real, rev(0, 1_000_000_000, 0));
        // One revocation a second, each live for 99 s: with the real one, never more than
        // `cap` live at once.
        for i in 0..1_000i64 {
            r.revoke_token(i as u64, rev(i * 1_000, i * 1_000 + 99_000, 0));
            let now = i * 1_000 + 1;
            for j in (i - 98).max(0)..=i {
                assert!(
                    r.check(j as u64, 0, None, now).is_some(),
                    "live revocation {j} lost at {i}"
                );
            }
            assert!(r.check(real, 0, None, now).is_some(), "the real revocation lost at {i}");
        }
        assert_eq!(r.full, 0, "nothing live was dropped");
        assert!(r.len() <= cap);
        // Now 200 revocations live at once: the cap is exhausted; those closest to their end
        // go (never the real one, which ends last), and each drop is counted.
        for i in 0..200u64 {
            r.revoke_token(10_000 + i, rev(999_500, 2_000_000 + i as i64, 0));
        }
        assert!(r.check(real, 0, None, 999_501).is_some());
        assert_eq!(r.len(), cap);
        assert_eq!(r.full, 200 + 100 - cap as u64);
        // A revocation ending sooner than every one held is itself the one dropped.
        r.revoke_token(99_999, rev(999_500, 1_500_000, 0));
        assert!(r.check(99_999, 0, None, 999_501).is_none());
        assert_eq!(r.full, 201);
    }

    #[test]
    fn forgotten_by_feed_id() {
        let mut r = Revocations::new(100);
        r.revoke_token(
            1,
            Revoked {
                feed_id: 11,
                ..rev(0, 10_000, 0)
            },
        );
        r.revoke_subject(
            2,
            Revoked {
                feed_id: 22,
                ..rev(0, 10_000, 50)
            },
        );
        assert!(!r.forget_token(22), "a subject's id is not a token's");
        assert!(r.forget_token(11));
        assert!(r.check(1, 3, None, 5).is_none());
        assert!(matches!(r.check(1, 2, Some(1), 5), Some(Hit::Subject(_))));
        assert!(r.forget_subject(22));
        assert!(r.is_empty());
    }

    /// An undone revocation is forgotten by its feed key id, also in an engine restored from a
    /// checkpoint (the id is part of it); one not undone is still remembered there.
    #[test]
    fn an_undone_revocation_is_forgotten_also_after_a_checkpoint() {
        use crate::engine::tests::{engine, ev, live, rules, run, T0};
        let set = rules(
            "\
rules:
  - {id: cut, severity: high, action: revoke_token, kind: match, key: token_id, where: {authenticated: true}}
  - {id: used, severity: critical, action: alert, kind: revoked_use, key: token_id, cooldown: 1s}
",
        );
        let t = live("t1", "u");
        let mut e = engine(set.clone());
        let d = run(&mut e, &[ev(T0, "81.2.69.142", 200, &t)]);
        assert_eq!(d.len(), 1);
        let mut bytes = Vec::new();
        e.snapshot(&mut bytes);
        let later = |s: i64| ev(T0 + s * 1_000, "81.2.69.142", 200, &t);
        let mut kept = engine(set.clone());
        kept.restore(&bytes).unwrap();
        assert_eq!(run(&mut kept, &[later(10)]).len(), 1, "still revoked");
        let mut undone = engine(set);
        undone.restore(&bytes).unwrap();
        assert!(!undone.forget_subject(&t.token_revocation_key()), "not a subject's id");
        assert!(undone.forget_token(&t.token_revocation_key()));
        assert!(run(&mut undone, &[later(10)]).is_empty());
    }
}
