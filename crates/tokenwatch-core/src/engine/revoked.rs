//! `revoked_use`: a token used after this engine revoked it, directly or through its
//! subject; and the memory of revocations it reads.
//!
//! A token revocation is remembered as long as its Redis blocklist entry lives (token expiry
//! plus leeway, with a floor), a subject revocation for the subject TTL: the engine's memory
//! and the gateways' blocklist agree on when a revocation ends. Both maps are bounded; when
//! full, the revocations closest to their end are dropped first.
//!
//! The kind keeps no window (only its keys' cooldowns), so events later than the allowed
//! lateness are checked too.

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
}

pub struct Revocations {
    pub(super) tokens: IdMap<Revoked>,
    pub(super) subjects: IdMap<Revoked>,
    cap: usize,
    pub evictions: u64,
}

/// How an event's token was revoked.
pub enum Hit<'a> {
    Token(&'a Revoked),
    Subject(&'a Revoked),
}

impl Revocations {
    pub fn new(cap: usize) -> Self {
        Revocations {
            tokens: IdMap::default(),
            subjects: IdMap::default(),
            cap: cap.max(10),
            evictions: 0,
        }
    }

    pub fn revoke_token(&mut self, key: u64, r: Revoked) {
        bounded_insert(&mut self.tokens, key, r, self.cap, &mut self.evictions);
    }

    pub fn revoke_subject(&mut self, key: u64, r: Revoked) {
        // A later revocation with a later not_before supersedes an earlier one.
        if let Some(old) = self.subjects.get(&key) {
            if old.not_before_s >= r.not_before_s && old.until_ms >= r.until_ms {
                return;
            }
        }
        bounded_insert(&mut self.subjects, key, r, self.cap, &mut self.evictions);
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
        self.tokens.retain(|_, r| r.until_ms > now);
        self.subjects.retain(|_, r| r.until_ms > now);
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bounded_insert(map: &mut IdMap<Revoked>, key: u64, r: Revoked, cap: usize, evictions: &mut u64) {
    if map.len() >= cap && !map.contains_key(&key) {
        let mut ends: Vec<i64> = map.values().map(|r| r.until_ms).collect();
        let n_drop = cap / 10 + 1;
        let (_, cut, _) = ends.select_nth_unstable(n_drop - 1);
        let cut = *cut;
        let before = map.len();
        map.retain(|_, r| r.until_ms > cut);
        *evictions += (before - map.len()) as u64;
    }
    map.insert(key, r);
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
        assert!(r.len() <= 10);
        assert!(r.evictions > 0);
        r.sweep(2_000);
        assert!(r.is_empty());
    }
}
