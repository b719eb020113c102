//! An observer of one rule for one token or subject: what the engine did with every event of
//! that key, step by step (`tokenwatch explain`).
//!
//! Off unless [`super::Engine::set_trace`] turns it on; then the engine pays one comparison
//! per event to see whether the event is the traced one, and nothing else. When it is, the
//! engine records a [`Step`]: the `where` condition that failed (field, value, condition),
//! an allowlist entry, lateness, or the rule's state for the key after the event (the
//! window's content, the progress towards the threshold, the cooldown) and whether it fired.
//! A step quotes field values as rules see them: paths and other text with any JWT redacted,
//! never a raw token.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use crate::decision::fmt_ts;
use crate::rules::filter::{Const, Op};
use crate::rules::{fmt_duration, Ctx, Rule, Val};
use crate::token::redact_jwts;

/// Whose events are traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Events carrying the token with this `token_id`.
    Token(Box<str>),
    /// Events of this subject (`iss|sub`).
    Subject(Box<str>),
}

/// The trace of one rule for one token or subject.
#[derive(Debug, Clone)]
pub struct Trace {
    pub rule: Arc<str>,
    pub who: Who,
    /// Steps recorded so far (the caller drains them).
    pub steps: Vec<Step>,
}

impl Trace {
    pub fn new(rule: &str, who: Who) -> Self {
        Trace {
            rule: rule.into(),
            who,
            steps: Vec::new(),
        }
    }

    /// Whether `ev` belongs to the traced token or subject.
    pub(super) fn wants(&self, cx: &Ctx<'_>) -> bool {
        let Some(t) = cx.ev.token.as_deref() else { return false };
        match &self.who {
            Who::Token(id) => *t.token_id == **id,
            Who::Subject(s) => *t.subject == **s,
        }
    }
}

/// What one rule did with one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Event time (RFC 3339 in JSON).
    #[serde(serialize_with = "ts_json")]
    pub ts: i64,
    pub token_id: Option<Box<str>>,
    pub client_ip: Option<IpAddr>,
    pub status: Option<u16>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Why the event stopped where it did, or what the rule's state became.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Outcome {
    /// A `where` condition did not hold: the event never reached the rule's state.
    WhereFailed {
        field: String,
        value: Value,
        condition: String,
    },
    /// An `allow` entry exempts the event.
    Allowlisted { entry: String },
    /// The event has no value for the rule's key.
    NoKey { key: String },
    /// Later than the allowed lateness behind the newest event: windows never see it.
    Late { behind_ms: i64, lateness_ms: i64 },
    /// The event reached the rule's state.
    Evaluated(Evaluated),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluated {
    /// The key had no state before this event: first seen, or forgotten (idle past the
    /// rule's retention) or evicted (cap reached) since.
    pub new_key: bool,
    /// Keys this rule evicted while handling the event (its cap was reached).
    pub evicted: u64,
    /// The window (or samples) for the key after the event.
    pub window: Vec<Value>,
    /// Progress towards the threshold (`2 of 3 distinct network`), when the kind has one.
    pub progress: Option<String>,
    /// The rule fired: its reason.
    pub fired: Option<String>,
    /// Not fired because the key is cooling down from an earlier decision: until when
    /// (`forever` while the key stays in use).
    pub cooling_down_until: Option<String>,
    /// Why it did not fire, when it did not.
    pub why_not: Option<String>,
}

fn ts_json<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_ts(*ms))
}

impl Step {
    pub(super) fn new(cx: &Ctx<'_>, outcome: Outcome) -> Step {
        Step {
            ts: cx.ev.ts_ms,
            token_id: cx.ev.token.as_ref().map(|t| t.token_id.clone()),
            client_ip: cx.ev.client_ip,
            status: cx.ev.status,
            outcome,
        }
    }
}

/// The first `where` condition of `rule` that fails for the event, described; `None` when
/// all hold.
pub(super) fn where_failed(rule: &Rule, cx: &Ctx<'_>) -> Option<Outcome> {
    let c = rule.filter.conds.iter().find(|c| !c.holds(cx))?;
    Some(Outcome::WhereFailed {
        field: c.field.name(),
        value: shown(&c.field.get(cx)),
        condition: describe(&c.op),
    })
}

/// The allowlist entry that exempts the event.
pub(super) fn allow_entry(rule: &Rule, cx: &Ctx<'_>) -> Option<Outcome> {
    let a = &rule.allow;
    let entry = |s: String| Some(Outcome::Allowlisted { entry: s });
    if let Some(ip) = cx.ev.client_ip {
        if let Some(n) = a.cidrs.iter().find(|n| n.contains(&ip)) {
            return entry(format!("cidr {n}"));
        }
    }
    let t = cx.ev.token.as_deref()?;
    if a.subjects.iter().any(|s| **s == *t.subject) {
        return entry(format!("subject {}", t.subject));
    }
    let iss = t.iss.as_deref()?;
    a.issuers.iter().any(|s| **s == *iss).then(|| Outcome::Allowlisted {
        entry: format!("issuer {iss}"),
    })
}

/// A field value as a step may show it: text with any JWT in it redacted.
pub fn shown(v: &Val<'_>) -> Value {
    match v {
        Val::Str(s) => json!(redact_jwts(s)),
        Val::StrList(l) => l.iter().map(|s| json!(redact_jwts(s))).collect(),
        other => other.to_json(),
    }
}

/// A `where` operator as a rule author wrote it (`eq true`, `gt 86400`).
pub fn describe(op: &Op) -> String {
    let c = |c: &Const| match c {
        Const::Str(s) => format!("{s:?}"),
        Const::Num(n) => format!("{n}"),
        Const::Bool(b) => format!("{b}"),
        Const::Ip(ip) => ip.to_string(),
        Const::Net(n) => n.to_string(),
    };
    let list = |cs: &[Const]| format!("[{}]", cs.iter().map(c).collect::<Vec<_>>().join(", "));
    let nets = |ns: &[ipnet::IpNet]| {
        format!(
            "[{}]",
            ns.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let arg = match op {
        Op::Eq(x) | Op::Ne(x) => c(x),
        Op::In(xs) | Op::NotIn(xs) => list(xs),
        Op::Gt(x) | Op::Gte(x) | Op::Lt(x) | Op::Lte(x) => format!("{x}"),
        Op::Prefix(p) | Op::Suffix(p) | Op::Contains(p) => format!("{p:?}"),
        Op::Regex(r) => format!("{:?}", r.as_str()),
        Op::Cidr(ns) | Op::NotCidr(ns) => nets(ns),
        Op::Exists(b) => format!("{b}"),
    };
    format!("{} {arg}", op.name())
}

/// `2 of 3 distinct network within 10m`.
pub(super) fn progress(n: usize, threshold: u32, what: &str, window_ms: i64) -> String {
    format!("{n} of {threshold} {what} within {}", fmt_duration(window_ms))
}

/// The rule's state for the key after the event, and why it fired or not. What the state
/// holds and why it did not fire is each kind's to say ([`super::state::KindStep::view`]).
pub(super) fn evaluated(
    state: &super::State,
    rule: &Rule,
    cx: &Ctx<'_>,
    key: u64,
    (behind, lateness_ms): (Option<i64>, i64),
    (had_key, evictions_before): (bool, u64),
    fired: Option<&super::Fired>,
) -> Outcome {
    let ts = cx.ev.ts_ms;
    if let (Some(behind_ms), false) = (behind, state.sees_late()) {
        return Outcome::Late { behind_ms, lateness_ms };
    }
    let evicted = state.evictions() - evictions_before;
    let (view, fired_at) = state.view(key, cx);
    let cooling = match (fired, fired_at) {
        (None, Some(at)) if at != super::keymap::NEVER => cooling_until(rule, at, ts),
        _ => None,
    };
    let why_not = match (fired, &cooling) {
        (Some(_), _) => None,
        (None, Some(until)) => Some(format!("cooling down from an earlier decision until {until}")),
        (None, None) => Some(view.why_not),
    };
    Outcome::Evaluated(Evaluated {
        new_key: !had_key,
        evicted,
        window: view.window,
        progress: view.progress,
        fired: fired.map(|f| f.reason.clone()),
        cooling_down_until: cooling,
        why_not,
    })
}

fn cooling_until(rule: &Rule, fired_at: i64, ts: i64) -> Option<String> {
    match rule.cooldown {
        crate::rules::Cooldown::Forever => Some("forever (while the key stays in use)".into()),
        crate::rules::Cooldown::Ms(c) => (ts < fired_at.saturating_add(c)).then(|| fmt_ts(fired_at.saturating_add(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Pipeline, PipelineConfig};

    const LOG: &str = include_str!("../../../../tests/fixtures/canonical.log");

    fn run(trace: Option<Trace>) -> (Vec<crate::decision::Decision>, Vec<Step>) {
        let rules = crate::defaults::rules().unwrap();
        let geo = Some(crate::defaults::test_geo_db());
        // the fixture's tokens are signed with the test key of this JWKS
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/jwks.json");
        let cfg = PipelineConfig {
            verify: Some(std::sync::Arc::new(
                crate::verify::Verifier::load(&crate::verify::VerifyConfig {
                    jwks: vec![jwks.to_string()],
                    issuers: Vec::new(),
                })
                .unwrap(),
            )),
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(rules, geo, cfg).unwrap();
        p.engine_mut().set_trace(trace);
        let mut out = Vec::new();
        for l in LOG.lines() {
            p.process_line(l.as_bytes(), &mut out);
        }
        (out, p.engine_mut().take_steps())
    }

    #[test]
    fn tracing_records_one_key_and_changes_no_decision() {
        let (plain, none) = run(None);
        assert!(none.is_empty());
        let (traced, steps) = run(Some(Trace::new("token-replay", Who::Token("tok-bob-1".into()))));
        assert_eq!(plain, traced);
        // bob's five requests, all accepted: each evaluated, the fourth fires
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert!(steps.iter().all(|s| s.token_id.as_deref() == Some("tok-bob-1")));
        let fired: Vec<_> = steps
            .iter()
            .map(|s| matches!(&s.outcome, Outcome::Evaluated(e) if e.fired.is_some()))
            .collect();
        assert_eq!(fired, [false, false, false, true, false]);
    }

    #[test]
    fn a_failed_condition_names_field_value_and_condition() {
        let (_, steps) = run(Some(Trace::new(
            "expired-token-accepted",
            Who::Subject("https://idp.example.com|dave".into()),
        )));
        assert_eq!(
            steps[0].outcome,
            Outcome::WhereFailed {
                field: "accepted".into(),
                value: json!(false),
                condition: "eq true".into()
            }
        );
    }

    #[test]
    fn a_late_event_is_shown_as_late_not_as_counted() {
        let t = crate::token::encode_unsigned_parts(
            &json!({"alg": "RS256"}),
            &json!({"jti": "late", "sub": "u"}),
            b"signature",
        );
        let line = |ts: &str, ip: &str| {
            json!({"ts": ts, "client_ip": ip, "status": 200, "authenticated": true, "authorization": format!("Bearer {t}")})
                .to_string()
        };
        let rules = crate::defaults::rules().unwrap();
        let mut p = Pipeline::new(rules, None, PipelineConfig::default()).unwrap();
        p.engine_mut()
            .set_trace(Some(Trace::new("token-replay", Who::Token("late".into()))));
        let mut out = Vec::new();
        p.process_line(line("2026-11-29T00:10:00Z", "198.51.100.7").as_bytes(), &mut out);
        p.process_line(line("2026-11-29T00:00:00Z", "203.0.113.9").as_bytes(), &mut out);
        let steps = p.engine_mut().take_steps();
        assert_eq!(
            steps[1].outcome,
            Outcome::Late {
                behind_ms: 600_000,
                lateness_ms: 60_000
            }
        );
    }
}
