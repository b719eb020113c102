//! `tokenwatch demo`: generated traffic with known attacks through the default rules, and a
//! score of what was caught.
//!
//! Everything it needs is inside the binary (rules, a test GeoIP database, the generator),
//! so it runs on a fresh machine. [`score`] compares decisions with the generator's labels;
//! the recall/precision test uses the same function.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Instant;

use crate::decision::Decision;
use crate::gen::{GenConfig, Generator, Label};
use crate::pipeline::{Pipeline, PipelineConfig};

/// Detection measured against the labels, per rule: (detected, missed, false).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Score {
    pub per_rule: BTreeMap<String, (u64, u64, u64)>,
    pub missed: Vec<Label>,
    pub false_positives: Vec<Decision>,
}

impl Score {
    pub fn totals(&self) -> (u64, u64, u64) {
        self.per_rule
            .values()
            .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2))
    }

    pub fn recall(&self) -> f64 {
        let (d, m, _) = self.totals();
        if d + m == 0 {
            1.0
        } else {
            d as f64 / (d + m) as f64
        }
    }

    pub fn precision(&self) -> f64 {
        let (d, _, f) = self.totals();
        if d + f == 0 {
            1.0
        } else {
            d as f64 / (d + f) as f64
        }
    }
}

fn key_of(rule: &str, token_id: Option<&str>, subject: Option<&str>) -> [String; 2] {
    [
        format!("{rule}\u{0}t\u{0}{}", token_id.unwrap_or("")),
        format!("{rule}\u{0}s\u{0}{}", subject.unwrap_or("")),
    ]
}

/// Matches decisions to labels by rule and key (a label names the token_id or the subject
/// the rule keys on). A label is detected when a decision of its rule names its key.
pub fn score(labels: &[Label], decisions: &[Decision]) -> Score {
    let mut s = Score::default();
    let mut fired: HashSet<String> = HashSet::new();
    for d in decisions {
        for k in key_of(&d.rule, d.token_id.as_deref(), d.subject.as_deref()) {
            fired.insert(k);
        }
    }
    let mut labelled: HashSet<String> = HashSet::new();
    for l in labels {
        let keys = key_of(&l.rule, l.token_id.as_deref(), l.subject.as_deref());
        let k = if l.token_id.is_some() { &keys[0] } else { &keys[1] };
        labelled.insert(k.clone());
        let e = s.per_rule.entry(l.rule.clone()).or_default();
        if fired.contains(k) {
            e.0 += 1;
        } else {
            e.1 += 1;
            s.missed.push(l.clone());
        }
    }
    for d in decisions {
        let keys = key_of(&d.rule, d.token_id.as_deref(), d.subject.as_deref());
        if !keys.iter().any(|k| labelled.contains(k)) {
            s.per_rule.entry(d.rule.to_string()).or_default().2 += 1;
            s.false_positives.push(d.clone());
        }
    }
    s
}

/// Runs generated traffic through the default rules; returns the decisions, the labels and
/// the number of lines.
pub fn run_generated(
    cfg: GenConfig,
    mut on_decision: impl FnMut(&Decision),
) -> Result<(Vec<Decision>, Vec<Label>, u64, Pipeline), String> {
    let rules = crate::defaults::rules().map_err(|e| e.to_string())?;
    let geo = crate::defaults::test_geo_db();
    let mut pipeline = Pipeline::new(rules, Some(geo), PipelineConfig::default())?;
    let mut decisions = Vec::new();
    let mut labels = Vec::new();
    let mut lines = 0u64;
    let mut out = Vec::new();
    for g in Generator::new(cfg) {
        lines += 1;
        labels.extend(g.labels);
        pipeline.process_line(g.line.as_bytes(), &mut out);
        for d in out.drain(..) {
            on_decision(&d);
            decisions.push(d);
        }
    }
    Ok((decisions, labels, lines, pipeline))
}

/// The demo's report: decisions as they happen, then the score.
pub fn demo(cfg: GenConfig, w: &mut dyn Write) -> Result<Score, String> {
    let start = Instant::now();
    let _ = writeln!(
        w,
        "tokenwatch demo: generated gateway traffic, default rules, MaxMind test GeoIP database\n"
    );
    let mut shown = 0usize;
    let (decisions, labels, lines, pipeline) = run_generated(cfg, |d| {
        if shown < 40 {
            shown += 1;
            let _ = writeln!(
                w,
                "{}  {:<24} {:<14} {:<8} {}",
                crate::decision::fmt_ts(d.ts),
                d.rule,
                d.action.as_str(),
                d.severity.as_str(),
                d.reason
            );
        }
    })?;
    let secs = start.elapsed().as_secs_f64();
    let sc = score(&labels, &decisions);
    let _ = writeln!(
        w,
        "\n{lines} lines, {} events, {} decisions in {secs:.2} s ({:.0} lines/s)",
        pipeline.stats.events,
        decisions.len(),
        lines as f64 / secs
    );
    let _ = writeln!(w, "\n{:<26} {:>9} {:>7} {:>6}", "rule", "detected", "missed", "false");
    for (rule, (d, m, f)) in &sc.per_rule {
        let _ = writeln!(w, "{rule:<26} {d:>9} {m:>7} {f:>6}");
    }
    let revoked_tokens = decisions
        .iter()
        .filter(|d| d.action == crate::rules::Action::RevokeToken && !d.shadow)
        .count();
    let revoked_subjects = decisions
        .iter()
        .filter(|d| d.action == crate::rules::Action::RevokeSubject && !d.shadow)
        .count();
    let _ = writeln!(
        w,
        "\nrevoked: {revoked_tokens} tokens, {revoked_subjects} subjects; recall {:.3}, precision {:.3}",
        sc.recall(),
        sc.precision()
    );
    Ok(sc)
}
