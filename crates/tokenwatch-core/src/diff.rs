//! `tokenwatch diff`: what a rule change would have decided differently over real logs.
//!
//! The same lines go, in one pass, through two pipelines: one with the old rule set, one
//! with the new. A decision is the same in both when its rule, event time, action, shadow
//! mode, token id, subject and client address are; the reason may differ (a new threshold
//! reads differently). Per rule, the report counts decisions and revocations added and
//! removed and keeps the first few of each ([`EXAMPLES`]), so memory stays bounded over a
//! week of logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::decision::{fmt_ts, Decision};
use crate::input::lines::{Line, LineReader};
use crate::pipeline::Pipeline;
use crate::replay::{Input, ReadError};
use crate::rules::Action;

/// Examples kept per rule and direction.
pub(crate) const EXAMPLES: usize = 3;

/// What changed for one rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleDiff {
    pub in_old: bool,
    pub in_new: bool,
    pub unchanged: u64,
    pub added: u64,
    pub removed: u64,
    pub added_revocations: u64,
    pub removed_revocations: u64,
    /// The first added / removed decisions, with their `file:line`.
    pub first_added: Vec<(String, Decision)>,
    pub first_removed: Vec<(String, Decision)>,
}

/// The whole comparison.
#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    pub(crate) lines: u64,
    pub(crate) rules: BTreeMap<String, RuleDiff>,
}

impl DiffReport {
    pub fn added_revocations(&self) -> u64 {
        self.rules.values().map(|r| r.added_revocations).sum()
    }

    /// Per rule, changed rules first in name order, then one line for the unchanged.
    pub fn render(&self) -> String {
        let mut s = format!(
            "tokenwatch diff: {} lines through the old and the new rules\n",
            self.lines
        );
        let mut same = Vec::new();
        for (id, r) in &self.rules {
            if r.added == 0 && r.removed == 0 && r.in_old == r.in_new {
                same.push(format!("{id} ({})", r.unchanged));
                continue;
            }
            let status = match (r.in_old, r.in_new) {
                (false, true) => " (new rule)",
                (true, false) => " (removed rule)",
                _ => "",
            };
            let _ = writeln!(
                s,
                "\n{id}{status}: +{} decisions ({} revocations), -{} decisions ({} revocations), {} unchanged",
                r.added, r.added_revocations, r.removed, r.removed_revocations, r.unchanged
            );
            for (sign, list) in [("+", &r.first_added), ("-", &r.first_removed)] {
                for (at, d) in list {
                    let _ = writeln!(s, "  {sign} {}", example(at, d));
                }
            }
        }
        if !same.is_empty() {
            let _ = writeln!(s, "\nunchanged (decisions): {}", same.join(", "));
        }
        let (a, r): (u64, u64) = self
            .rules
            .values()
            .fold((0, 0), |(a, r), d| (a + d.added, r + d.removed));
        let rem_rev: u64 = self.rules.values().map(|d| d.removed_revocations).sum();
        let _ = writeln!(
            s,
            "\ntotal: +{a} decisions ({} revocations), -{r} decisions ({rem_rev} revocations)",
            self.added_revocations()
        );
        s
    }
}

fn example(at: &str, d: &Decision) -> String {
    format!(
        "{at} {} {} token {} subject {}: {}",
        fmt_ts(d.ts),
        d.action.as_str(),
        d.token_id.as_deref().unwrap_or("-"),
        d.subject.as_deref().unwrap_or("-"),
        d.reason
    )
}

fn revokes(d: &Decision) -> bool {
    d.action != Action::Alert && !d.shadow
}

fn same(a: &Decision, b: &Decision) -> bool {
    a.rule == b.rule
        && a.ts == b.ts
        && a.action == b.action
        && a.shadow == b.shadow
        && a.token_id == b.token_id
        && a.subject == b.subject
        && a.client_ip == b.client_ip
}

/// Runs every line of `inputs` through both pipelines and compares their decisions line by
/// line. Only reading the input can fail.
pub fn diff(
    old: &mut Pipeline,
    new: &mut Pipeline,
    inputs: Vec<Input>,
    max_line: usize,
) -> Result<DiffReport, ReadError> {
    let mut report = DiffReport::default();
    for (rules, is_new) in [
        (old.engine().rules().clone(), false),
        (new.engine().rules().clone(), true),
    ] {
        for r in &rules.rules {
            let e = report.rules.entry(r.id.to_string()).or_default();
            if is_new {
                e.in_new = true;
            } else {
                e.in_old = true;
            }
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (name, input) in inputs {
        let mut reader = LineReader::new(input, max_line);
        let mut n = 0u64;
        while let Some(line) = reader.next_line().map_err(|source| ReadError {
            name: name.clone(),
            source,
        })? {
            n += 1;
            report.lines += 1;
            match line {
                Line::Ok(l) => {
                    old.process_line(l, &mut a);
                    new.process_line(l, &mut b);
                }
                Line::TooLong(_) => {
                    old.line_too_long();
                    new.line_too_long();
                }
            }
            if !a.is_empty() || !b.is_empty() {
                compare(&mut report, &format!("{name}:{n}"), &mut a, &mut b);
            }
        }
    }
    Ok(report)
}

/// Matches one line's old decisions with its new ones; the rest were removed or added.
fn compare(report: &mut DiffReport, at: &str, old: &mut Vec<Decision>, new: &mut Vec<Decision>) {
    let mut matched = vec![false; new.len()];
    for d in old.drain(..) {
        let r = report.rules.entry(d.rule.to_string()).or_default();
        match (0..new.len()).find(|&i| !matched[i] && same(&d, &new[i])) {
            Some(i) => {
                matched[i] = true;
                r.unchanged += 1;
            }
            None => {
                r.removed += 1;
                r.removed_revocations += u64::from(revokes(&d));
                if r.first_removed.len() < EXAMPLES {
                    r.first_removed.push((at.to_string(), d));
                }
            }
        }
    }
    for (d, m) in new.drain(..).zip(matched) {
        if m {
            continue;
        }
        let r = report.rules.entry(d.rule.to_string()).or_default();
        r.added += 1;
        r.added_revocations += u64::from(revokes(&d));
        if r.first_added.len() < EXAMPLES {
            r.first_added.push((at.to_string(), d));
        }
    }
}
