//! `distinct_count`: at least N distinct values of a field per key within a window.
//!
//! Per key, each distinct value keeps only the newest time it was seen, and only values seen
//! within the window that ends at the key's newest event are kept; beyond N the oldest is
//! dropped. So a key costs at most N small entries however many requests it makes. A late
//! event counts in the window that ends at the newest event of its key.
//!
//! A string value (any JWT in it redacted first, [`crate::token::redact_jwts`]) is kept as a
//! 64-bit hash under the engine's seeded hasher, which decides whether two values are the
//! same, plus the clipped copy that decisions and `explain` quote
//! ([`crate::decision::clip_text`]): a key costs at most N clipped strings whatever the
//! attacker sends, and a rule with `distinct: user_agent` never keeps or prints a token put
//! there. Values that fit the clip are quoted exactly as before.

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::json;

use super::keymap::Heap;
use super::state::{Env, KindStep, View};
use super::trace::progress;
use super::{said, Fired};
use crate::decision::{clip_text, fmt_ts};
use crate::rules::{fmt_duration, Ctx, Field, Rule, Val};
use crate::token::redact_jwts;

/// A `distinct_count` rule's parameters.
pub struct Distinct {
    pub field: Field,
    pub threshold: u32,
    pub window_ms: i64,
}

impl KindStep for Distinct {
    type Data = DistinctState;
    /// The event's value of the field (never missing), as stored.
    type Input<'e> = Probe<'e>;
    /// The values in the window.
    type Hit<'s> = &'s [(i64, DVal)];
    const SEES_LATE: bool = false;

    fn input<'e>(&self, cx: &'e Ctx<'e>, env: &mut Env<'_>) -> Option<Probe<'e>> {
        Probe::of(&self.field.get(cx), env.hasher)
    }

    fn step<'s>(&self, data: &'s mut DistinctState, ts: i64, v: Probe<'_>) -> Option<&'s [(i64, DVal)]> {
        data.add(ts, v, self.threshold, self.window_ms)
    }

    fn progress(&self, data: &DistinctState) -> bool {
        data.vals.len() >= 2
    }

    fn fired(&self, rule: &Rule, _: &Ctx<'_>, vals: &[(i64, DVal)]) -> Fired {
        let mut seen: Vec<_> = vals.iter().map(|(t, v)| (*t, v.to_json())).collect();
        seen.sort_by_key(|(t, _)| *t);
        let n = seen.len();
        let (fname, threshold, window) = (self.field.name(), self.threshold, fmt_duration(self.window_ms));
        let values: Vec<_> = seen
            .iter()
            .map(|(t, v)| json!({"value": v, "last_seen": fmt_ts(*t)}))
            .collect();
        Fired {
            reason: format!(
                "{}: {n} distinct {fname} values for this {} within {window} (threshold {threshold}).",
                said(rule),
                rule.key.name(),
            ),
            evidence: json!({
                "field": fname,
                "distinct": n,
                "threshold": threshold,
                "window": window,
                "values": values,
            }),
            not_before_ms: None,
        }
    }

    fn view(&self, data: Option<&DistinctState>, _: &Ctx<'_>) -> View {
        let vals = data.map(DistinctState::values).unwrap_or_default();
        let what = format!("distinct {}", self.field.name());
        let p = progress(vals.len(), self.threshold, &what, self.window_ms);
        View {
            window: vals
                .iter()
                .map(|(t, v)| json!({"value": v.to_json(), "last_seen": fmt_ts(*t)}))
                .collect(),
            why_not: format!("below the threshold: {p}"),
            progress: Some(p),
        }
    }
}

/// A stored field value, small for the common cases (networks, addresses).
#[derive(Debug, Clone, PartialEq)]
pub enum DVal {
    Net(ipnet::IpNet),
    Ip(IpAddr),
    Num(f64),
    Bool(bool),
    /// Text: its seeded hash (what tells values apart) and its clipped copy (what is shown).
    Str {
        hash: u64,
        shown: Box<str>,
    },
}

impl DVal {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            DVal::Net(n) => n.to_string().into(),
            DVal::Ip(ip) => ip.to_string().into(),
            DVal::Num(n) => serde_json::json!(n),
            DVal::Bool(b) => (*b).into(),
            DVal::Str { shown, .. } => (**shown).into(),
        }
    }
}

impl Heap for DistinctState {
    fn heap_bytes(&self) -> usize {
        let shown: usize = self
            .vals
            .iter()
            .map(|(_, v)| match v {
                DVal::Str { shown, .. } => crate::heap::alloc_bytes(shown.len()),
                _ => 0,
            })
            .sum();
        crate::heap::vec_bytes::<(i64, DVal)>(self.vals.capacity()) + shown
    }
}

/// A value as it would be stored, computed once per event: strings redacted (a scan, and a
/// hash per JWT found) and hashed, so that comparing it with each kept value costs no more
/// than `==` on a number.
pub enum Probe<'a> {
    Net(ipnet::IpNet),
    Ip(IpAddr),
    Num(f64),
    Bool(bool),
    Str(u64, Cow<'a, str>),
}

impl<'a> Probe<'a> {
    /// `None` for a missing value.
    pub(super) fn of(v: &Val<'a>, hasher: &crate::hash::Seeded) -> Option<Probe<'a>> {
        let text = |t: Cow<'a, str>| Probe::Str(hasher.hash_one(&*t), t);
        Some(match *v {
            Val::Net(n) => Probe::Net(n),
            Val::Ip(ip) => Probe::Ip(ip),
            Val::Num(n) => Probe::Num(n),
            Val::Bool(b) => Probe::Bool(b),
            Val::Str(s) => text(redact_jwts(s)),
            Val::StrList(l) => text(Cow::Owned(redact_jwts(&l.join(",")).into_owned())),
            Val::Missing => return None,
        })
    }

    fn same(&self, d: &DVal) -> bool {
        match (d, self) {
            (DVal::Net(a), Probe::Net(b)) => a == b,
            (DVal::Ip(a), Probe::Ip(b)) => a == b,
            (DVal::Num(a), Probe::Num(b)) => a == b,
            (DVal::Bool(a), Probe::Bool(b)) => a == b,
            (DVal::Str { hash, .. }, Probe::Str(h, _)) => hash == h,
            _ => false,
        }
    }

    fn to_owned_val(&self) -> DVal {
        match self {
            Probe::Net(n) => DVal::Net(*n),
            Probe::Ip(ip) => DVal::Ip(*ip),
            Probe::Num(n) => DVal::Num(*n),
            Probe::Bool(b) => DVal::Bool(*b),
            Probe::Str(hash, s) => DVal::Str {
                hash: *hash,
                shown: clip_text(s).into(),
            },
        }
    }
}

#[derive(Default, Debug)]
pub struct DistinctState {
    /// (newest time seen, value)
    pub(super) vals: Vec<(i64, DVal)>,
}

impl DistinctState {
    /// Records `v` at `ts`; returns the values in the window when there are at least
    /// `threshold` of them.
    pub fn add(&mut self, ts: i64, probe: Probe<'_>, threshold: u32, window_ms: i64) -> Option<&[(i64, DVal)]> {
        match self.vals.iter_mut().find(|(_, d)| probe.same(d)) {
            Some((t, _)) => *t = (*t).max(ts),
            None => {
                let d = probe.to_owned_val();
                // Most keys (a token's networks) only ever hold one value: allocate for one,
                // not the four a first push would reserve (this is per live token).
                if self.vals.capacity() == 0 {
                    self.vals.reserve_exact(1);
                }
                self.vals.push((ts, d));
            }
        }
        let newest = self.vals.iter().map(|(t, _)| *t).max().unwrap_or(ts);
        self.vals.retain(|(t, _)| newest - *t <= window_ms);
        if self.vals.len() > threshold as usize {
            self.vals.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
            self.vals.truncate(threshold as usize);
        }
        (self.vals.len() >= threshold as usize).then_some(&self.vals[..])
    }

    /// The values in the window, each with the newest time it was seen (for `explain`).
    pub fn values(&self) -> &[(i64, DVal)] {
        &self.vals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Val<'static> {
        Val::Net(s.parse().unwrap())
    }

    fn add<'s>(s: &'s mut DistinctState, ts: i64, v: Val<'_>, threshold: u32, w: i64) -> Option<&'s [(i64, DVal)]> {
        let hasher = crate::hash::Seeded::with_seeds([1, 2, 3, 4]);
        s.add(ts, Probe::of(&v, &hasher).unwrap(), threshold, w)
    }

    #[test]
    fn three_networks_within_ten_minutes_inclusive() {
        let mut s = DistinctState::default();
        let w = 600_000;
        assert!(add(&mut s, 0, net("1.1.1.0/24"), 3, w).is_none());
        assert!(add(&mut s, 1, net("1.1.1.0/24"), 3, w).is_none());
        assert!(add(&mut s, 300_000, net("2.2.2.0/24"), 3, w).is_none());
        let hit = add(&mut s, 600_000, net("3.3.3.0/24"), 3, w).unwrap();
        assert_eq!(hit.len(), 3);
    }

    #[test]
    fn a_value_outside_the_window_no_longer_counts() {
        let mut s = DistinctState::default();
        let w = 600_000;
        add(&mut s, 0, net("1.1.1.0/24"), 3, w);
        add(&mut s, 300_000, net("2.2.2.0/24"), 3, w);
        assert!(add(&mut s, 600_001, net("3.3.3.0/24"), 3, w).is_none());
        // seeing the first network again renews it
        assert!(add(&mut s, 600_002, net("1.1.1.0/24"), 3, w).is_some());
    }

    #[test]
    fn a_late_event_counts_in_the_window_of_the_newest() {
        let mut s = DistinctState::default();
        let w = 600_000;
        add(&mut s, 0, net("1.1.1.0/24"), 3, w);
        add(&mut s, 590_000, net("3.3.3.0/24"), 3, w);
        assert!(add(&mut s, 550_000, net("2.2.2.0/24"), 3, w).is_some());
    }

    #[test]
    fn string_values_are_kept_without_tokens() {
        let t = crate::token::encode_unsigned_parts(
            &serde_json::json!({"alg":"RS256"}),
            &serde_json::json!({"sub":"u"}),
            b"signature-of-the-token",
        );
        let sig = t.rsplit('.').next().unwrap();
        let ua = format!("curl/8 {t}");
        let mut s = DistinctState::default();
        add(&mut s, 0, Val::Str(&ua), 2, 1_000);
        // the same value again is the same value, not a second one
        assert!(add(&mut s, 1, Val::Str(&ua), 2, 1_000).is_none());
        let vals = add(&mut s, 2, Val::Str("other"), 2, 1_000).unwrap();
        let shown: Vec<_> = vals.iter().map(|(_, v)| v.to_json().to_string()).collect();
        assert!(shown.iter().all(|v| !v.contains(sig)), "{shown:?}");
        assert!(shown.iter().any(|v| v.contains("curl/8 <jwt sha256:")), "{shown:?}");
    }

    #[test]
    fn bounded_by_the_threshold() {
        let mut s = DistinctState::default();
        for i in 0..100u32 {
            add(&mut s, i64::from(i), Val::Num(f64::from(i)), 3, 1_000_000);
        }
        assert_eq!(s.vals.len(), 3);
    }

    #[test]
    fn long_values_are_kept_as_hashes_and_clipped_copies() {
        let (a, b) = (format!("{}a", "x".repeat(100_000)), format!("{}b", "x".repeat(100_000)));
        let mut s = DistinctState::default();
        add(&mut s, 0, Val::Str(&a), 2, 1_000);
        // they differ only past the clip: still two values
        let vals = add(&mut s, 1, Val::Str(&b), 2, 1_000).unwrap();
        assert_eq!(vals.len(), 2);
        assert!(vals[0].1.to_json().as_str().unwrap().ends_with("…(100001 bytes)"));
        let most = 2 * crate::decision::MAX_TEXT_BYTES + 300;
        assert!(s.heap_bytes() <= most, "{} > {most}", s.heap_bytes());
    }
}
