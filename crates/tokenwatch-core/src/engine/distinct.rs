//! `distinct_count`: at least N distinct values of a field per key within a window.
//!
//! Per key, each distinct value keeps only the newest time it was seen, and only values seen
//! within the window that ends at the key's newest event are kept; beyond N the oldest is
//! dropped. So a key costs at most N small entries however many requests it makes. A late
//! event counts in the window that ends at the newest event of its key.
//!
//! Values are stored and quoted in decisions, so a string value is kept with any JWT in it
//! redacted ([`crate::token::redact_jwts`]): a rule with `distinct: user_agent` (or any
//! other text) never keeps or prints a token that an attacker put there. Decisions and
//! `explain` quote a value clipped ([`crate::decision::clip_text`]).

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::json;

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
    /// The event's value of the field (never missing).
    type Input<'e> = Val<'e>;
    /// The values in the window.
    type Hit<'s> = &'s [(i64, DVal)];
    const SEES_LATE: bool = false;

    fn input<'e>(&self, cx: &'e Ctx<'e>, _: &mut Env<'_>) -> Option<Val<'e>> {
        Some(self.field.get(cx)).filter(|v| *v != Val::Missing)
    }

    fn step<'s>(&self, data: &'s mut DistinctState, ts: i64, v: Val<'_>) -> Option<&'s [(i64, DVal)]> {
        data.add(ts, &v, self.threshold, self.window_ms)
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

/// An owned copy of a field value, small for the common cases (networks, addresses).
#[derive(Debug, Clone, PartialEq)]
pub enum DVal {
    Net(ipnet::IpNet),
    Ip(IpAddr),
    Num(f64),
    Bool(bool),
    Str(Box<str>),
}

impl DVal {
    pub fn from_val(v: &Val<'_>) -> Option<DVal> {
        Probe::of(v)?.to_owned_val()
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            DVal::Net(n) => n.to_string().into(),
            DVal::Ip(ip) => ip.to_string().into(),
            DVal::Num(n) => serde_json::json!(n),
            DVal::Bool(b) => (*b).into(),
            // Kept whole (values that differ late still differ), quoted clipped.
            DVal::Str(s) => clip_text(s).into(),
        }
    }
}

/// A value as it would be stored, computed once per event: strings redacted (a scan, and a
/// hash per JWT found), so that comparing it with each kept value costs no more than `==`.
enum Probe<'a> {
    Net(ipnet::IpNet),
    Ip(IpAddr),
    Num(f64),
    Bool(bool),
    Str(Cow<'a, str>),
}

impl<'a> Probe<'a> {
    fn of(v: &Val<'a>) -> Option<Probe<'a>> {
        Some(match *v {
            Val::Net(n) => Probe::Net(n),
            Val::Ip(ip) => Probe::Ip(ip),
            Val::Num(n) => Probe::Num(n),
            Val::Bool(b) => Probe::Bool(b),
            Val::Str(s) => Probe::Str(redact_jwts(s)),
            Val::StrList(l) => Probe::Str(Cow::Owned(redact_jwts(&l.join(",")).into_owned())),
            Val::Missing => return None,
        })
    }

    fn same(&self, d: &DVal) -> bool {
        match (d, self) {
            (DVal::Net(a), Probe::Net(b)) => a == b,
            (DVal::Ip(a), Probe::Ip(b)) => a == b,
            (DVal::Num(a), Probe::Num(b)) => a == b,
            (DVal::Bool(a), Probe::Bool(b)) => a == b,
            (DVal::Str(a), Probe::Str(b)) => **a == **b,
            _ => false,
        }
    }

    fn to_owned_val(&self) -> Option<DVal> {
        Some(match self {
            Probe::Net(n) => DVal::Net(*n),
            Probe::Ip(ip) => DVal::Ip(*ip),
            Probe::Num(n) => DVal::Num(*n),
            Probe::Bool(b) => DVal::Bool(*b),
            Probe::Str(s) => DVal::Str((**s).into()),
        })
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
    pub fn add(&mut self, ts: i64, v: &Val<'_>, threshold: u32, window_ms: i64) -> Option<&[(i64, DVal)]> {
        let probe = Probe::of(v)?;
        match self.vals.iter_mut().find(|(_, d)| probe.same(d)) {
            Some((t, _)) => *t = (*t).max(ts),
            None => {
                let d = probe.to_owned_val()?;
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

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn three_networks_within_ten_minutes_inclusive() {
        let mut s = DistinctState::default();
        let w = 600_000;
        assert!(s.add(0, &Val::Net(net("1.1.1.0/24")), 3, w).is_none());
        assert!(s.add(1, &Val::Net(net("1.1.1.0/24")), 3, w).is_none());
        assert!(s.add(300_000, &Val::Net(net("2.2.2.0/24")), 3, w).is_none());
        let hit = s.add(600_000, &Val::Net(net("3.3.3.0/24")), 3, w).unwrap();
        assert_eq!(hit.len(), 3);
    }

    #[test]
    fn a_value_outside_the_window_no_longer_counts() {
        let mut s = DistinctState::default();
        let w = 600_000;
        s.add(0, &Val::Net(net("1.1.1.0/24")), 3, w);
        s.add(300_000, &Val::Net(net("2.2.2.0/24")), 3, w);
        assert!(s.add(600_001, &Val::Net(net("3.3.3.0/24")), 3, w).is_none());
        // seeing the first network again renews it
        assert!(s.add(600_002, &Val::Net(net("1.1.1.0/24")), 3, w).is_some());
    }

    #[test]
    fn a_late_event_counts_in_the_window_of_the_newest() {
        let mut s = DistinctState::default();
        let w = 600_000;
        s.add(0, &Val::Net(net("1.1.1.0/24")), 3, w);
        s.add(590_000, &Val::Net(net("3.3.3.0/24")), 3, w);
        assert!(s.add(550_000, &Val::Net(net("2.2.2.0/24")), 3, w).is_some());
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
        s.add(0, &Val::Str(&ua), 2, 1_000);
        // the same value again is the same value, not a second one
        assert!(s.add(1, &Val::Str(&ua), 2, 1_000).is_none());
        let vals = s.add(2, &Val::Str("other"), 2, 1_000).unwrap();
        let shown: Vec<_> = vals.iter().map(|(_, v)| v.to_json().to_string()).collect();
        assert!(shown.iter().all(|v| !v.contains(sig)), "{shown:?}");
        assert!(shown.iter().any(|v| v.contains("curl/8 <jwt sha256:")), "{shown:?}");
    }

    #[test]
    fn bounded_by_the_threshold() {
        let mut s = DistinctState::default();
        for i in 0..100u32 {
            s.add(i64::from(i), &Val::Num(f64::from(i)), 3, 1_000_000);
        }
        assert_eq!(s.vals.len(), 3);
    }
}
