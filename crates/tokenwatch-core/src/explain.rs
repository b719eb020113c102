//! `tokenwatch explain`: what one rule did with every event of one token or subject, and why
//! it fired or not.
//!
//! The log is replayed through the whole rule set (revocations and all, as `replay` would),
//! with the engine's trace ([`crate::engine::trace`]) turned on for one rule and one token or
//! subject. Each traced step is tied to the `file:line` it came from. Output is for a person
//! at a terminal ([`Explained::render`]) or, with `--json`, for tools ([`Explained::to_json`]).
//! It quotes token ids, subjects and field values as decisions do, never a raw token.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::decision::{fmt_ts, Decision};
use crate::engine::trace::{describe, Outcome, Step, Trace, Who};
use crate::input::lines::{Line, LineReader};
use crate::pipeline::Pipeline;
use crate::replay::{Input, ReadError};
use crate::rules::{fmt_duration, Cooldown, Kind, Rule};

/// One traced step and the line it came from.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// `file:line`.
    pub at: String,
    pub step: Step,
}

/// Everything `explain` found.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The rule, described as its file says it.
    pub(crate) rule: String,
    pub(crate) who: Who,
    pub(crate) entries: Vec<Entry>,
    /// The rule's decisions about the token or subject.
    pub(crate) decisions: Vec<(String, Decision)>,
}

/// Why `explain` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// `known`: the ids of the rules there are, comma-separated.
    #[error("no rule `{rule}` in the rule set (rules: {known})")]
    NoRule { rule: String, known: String },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Replays `inputs` through `pipeline`, tracing `rule_id` for `who`.
pub fn explain(
    pipeline: &mut Pipeline,
    rule_id: &str,
    who: Who,
    inputs: Vec<Input>,
    max_line: usize,
) -> Result<Explained, ExplainError> {
    let rule = pipeline
        .engine()
        .rules()
        .rules
        .iter()
        .find(|r| &*r.id == rule_id)
        .cloned()
        .ok_or_else(|| {
            let ids: Vec<_> = pipeline
                .engine()
                .rules()
                .rules
                .iter()
                .map(|r| r.id.to_string())
                .collect();
            ExplainError::NoRule {
                rule: rule_id.to_string(),
                known: ids.join(", "),
            }
        })?;
    pipeline.engine_mut().set_trace(Some(Trace::new(rule_id, who.clone())));
    let mut out = Explained {
        rule: describe_rule(&rule),
        who: who.clone(),
        entries: Vec::new(),
        decisions: Vec::new(),
    };
    let mut decisions = Vec::new();
    for (name, input) in inputs {
        let mut reader = LineReader::new(input, max_line);
        let mut n = 0u64;
        loop {
            n += 1;
            let line = reader.next_line().map_err(|source| ReadError {
                name: name.clone(),
                source,
            })?;
            match line {
                None => break,
                Some(Line::Ok(l)) => pipeline.process_line(l, &mut decisions),
                Some(Line::TooLong(_)) => pipeline.line_too_long(),
            }
            let at = format!("{name}:{n}");
            for step in pipeline.engine_mut().take_steps() {
                out.entries.push(Entry { at: at.clone(), step });
            }
            for d in decisions.drain(..) {
                if *d.rule == *rule_id && concerns(&d, &who) {
                    out.decisions.push((at.clone(), d));
                }
            }
        }
    }
    pipeline.engine_mut().set_trace(None);
    Ok(out)
}

fn concerns(d: &Decision, who: &Who) -> bool {
    match who {
        Who::Token(id) => d.token_id.as_deref() == Some(&**id),
        Who::Subject(s) => d.subject.as_deref() == Some(&**s),
    }
}

/// `token-replay: distinct_count of network per token_id, threshold 3 within 10m, where
/// accepted eq true, cooldown forever, revoke_token`.
fn describe_rule(r: &Rule) -> String {
    let mut s = format!("{} ({}, key {}", r.id, r.kind.name(), r.key.name());
    match &r.kind {
        Kind::Count { threshold, window_ms } => {
            let _ = write!(s, ", {threshold} events within {}", fmt_duration(*window_ms));
        }
        Kind::DistinctCount {
            field,
            threshold,
            window_ms,
        } => {
            let _ = write!(
                s,
                ", {threshold} distinct {} within {}",
                field.name(),
                fmt_duration(*window_ms)
            );
        }
        Kind::GeoVelocity {
            max_gap_ms,
            min_distance_km,
            max_speed_kmh,
            min_time_ms,
        } => {
            let _ = write!(
                s,
                ", >= {min_distance_km} km, > {max_speed_kmh} km/h, < {} apart, time >= {}",
                fmt_duration(*max_gap_ms),
                fmt_duration(*min_time_ms)
            );
        }
        Kind::Match | Kind::RevokedUse => {}
    }
    for c in &r.filter.conds {
        let _ = write!(s, ", where {} {}", c.field.name(), describe(&c.op));
    }
    let cooldown = match r.cooldown {
        Cooldown::Forever => "forever".to_string(),
        Cooldown::Ms(ms) => fmt_duration(ms),
    };
    let _ = write!(s, ", cooldown {cooldown}, {}", r.action.as_str());
    if r.shadow {
        s.push_str(", shadow");
    }
    s.push(')');
    s
}

impl Explained {
    fn who_text(&self) -> String {
        match &self.who {
            Who::Token(t) => format!("token {t}"),
            Who::Subject(s) => format!("subject {s}"),
        }
    }

    /// Why the rule fired, or why it never did.
    pub fn verdict(&self) -> String {
        if self.entries.is_empty() {
            return format!("no event of {} reached the rule", self.who_text());
        }
        if let Some((at, d)) = self.decisions.first() {
            let more = match self.decisions.len() {
                1 => String::new(),
                n => format!(" ({n} decisions in all)"),
            };
            return format!("fired at {at} ({}): {}{more}", fmt_ts(d.ts), d.reason);
        }
        let mut filtered = std::collections::BTreeMap::<String, usize>::new();
        let mut late = 0;
        for e in &self.entries {
            match &e.step.outcome {
                Outcome::WhereFailed { field, condition, .. } => {
                    *filtered.entry(format!("{field} {condition}")).or_default() += 1;
                }
                Outcome::Allowlisted { entry } => *filtered.entry(format!("allowed by {entry}")).or_default() += 1,
                Outcome::Late { .. } => late += 1,
                _ => {}
            }
        }
        let mut parts = Vec::new();
        let last = self.entries.iter().rev().find_map(|e| match &e.step.outcome {
            Outcome::Evaluated(v) => v.why_not.clone().map(|w| (e.at.clone(), w)),
            _ => None,
        });
        if let Some((at, why)) = last {
            parts.push(format!("at its last evaluation ({at}) {why}"));
        }
        for (cond, n) in filtered {
            parts.push(format!("{n} event(s) stopped by `{cond}`"));
        }
        if late > 0 {
            parts.push(format!("{late} event(s) too late for the windows"));
        }
        format!("did not fire: {}", parts.join("; "))
    }

    /// The terminal form: the rule, one block per event, the verdict.
    pub fn render(&self) -> String {
        let mut s = format!("rule {}\nfor {}\n", self.rule, self.who_text());
        for e in &self.entries {
            let st = &e.step;
            let ip = st.client_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            let status = st.status.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            let tok = st.token_id.as_deref().unwrap_or("-");
            let _ = writeln!(s, "\n{} {} token {tok} from {ip} status {status}", e.at, fmt_ts(st.ts));
            render_outcome(&mut s, &st.outcome);
        }
        let _ = writeln!(s, "\nverdict: {}", self.verdict());
        s
    }

    pub fn to_json(&self) -> Value {
        let (kind, id) = match &self.who {
            Who::Token(t) => ("token_id", t),
            Who::Subject(s) => ("subject", s),
        };
        let mut v = json!({
            "rule": self.rule,
            "events": self.entries.iter().map(|e| {
                let mut v = serde_json::to_value(&e.step).unwrap_or(Value::Null);
                v["at"] = json!(e.at);
                v
            }).collect::<Vec<_>>(),
            "decisions": self.decisions.iter().map(|(at, d)| {
                let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
                v["at"] = json!(at);
                v
            }).collect::<Vec<_>>(),
            "verdict": self.verdict(),
        });
        v[kind] = json!(&**id);
        v
    }
}

fn render_outcome(s: &mut String, o: &Outcome) {
    match o {
        Outcome::WhereFailed {
            field,
            value,
            condition,
        } => {
            let _ = writeln!(s, "  where failed: {field} is {value}, needs {condition}");
        }
        Outcome::Allowlisted { entry } => {
            let _ = writeln!(s, "  allowlisted: {entry}");
        }
        Outcome::NoKey { key } => {
            let _ = writeln!(s, "  no {key}: the rule cannot key this event");
        }
        Outcome::Late { behind_ms, lateness_ms } => {
            let _ = writeln!(
                s,
                "  late: {} behind the newest event (allowed {}), windows never see it",
                fmt_duration(*behind_ms),
                fmt_duration(*lateness_ms)
            );
        }
        Outcome::Evaluated(v) => {
            if v.new_key {
                let _ = writeln!(s, "  new key: no state before (first seen, or forgotten/evicted since)");
            }
            if v.evicted > 0 {
                let _ = writeln!(s, "  {} keys evicted from this rule (cap reached)", v.evicted);
            }
            if !v.window.is_empty() {
                let items: Vec<String> = v.window.iter().map(window_item).collect();
                let _ = writeln!(s, "  window: {}", items.join(", "));
            }
            if let Some(p) = &v.progress {
                let _ = writeln!(s, "  progress: {p}");
            }
            match (&v.fired, &v.why_not) {
                (Some(reason), _) => {
                    let _ = writeln!(s, "  FIRED: {reason}");
                }
                (None, Some(w)) => {
                    let _ = writeln!(s, "  not fired: {w}");
                }
                (None, None) => {}
            }
        }
    }
}

fn window_item(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Object(o) if o.contains_key("value") => {
            format!("{} (last seen {})", show(&o["value"]), show(&o["last_seen"]))
        }
        Value::Object(o) => format!("{} at {},{}", show(&o["ts"]), o["lat"], o["lon"]),
        other => other.to_string(),
    }
}

fn show(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}
