//! Hot reload of the rules, as a task of its own: it watches the rule directory (a fingerprint
//! of names, sizes and modification times, looked at every second) and takes reload requests
//! (SIGHUP), and sends each rule set that loads down a `watch` channel. The loop swaps it in
//! between batches, so a batch is always judged by one rule set. An invalid edit is logged
//! (`file:line: message`), counted, and keeps the running rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::metrics::Metrics;
use tokenwatch_core::rules::RuleSet;

/// How often the rule directory is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A fingerprint of the rule directory: names, sizes and modification times.
pub(super) type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub(super) fn fingerprint(dir: &Path) -> Fingerprint {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(std::result::Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Exports every loaded rule's decision counter, at 0 until it fires, so that alerting on its
/// increase sees the first decision after a start or a reload.
pub(super) fn publish_rules(set: &RuleSet, metrics: &Metrics) {
    metrics.rules_loaded.set(set.rules.len() as i64);
    for r in &set.rules {
        metrics
            .decisions
            .with_label_values(&[&r.id, r.action.as_str(), r.severity.as_str()])
            .inc_by(0);
        metrics.rule_tripped.with_label_values(&[&r.id]).set(0);
    }
}

/// Loads the rules for a reload; on failure logs every `file:line: message` and counts it.
fn reload(dir: &Path, metrics: &Metrics) -> Option<Arc<RuleSet>> {
    match tokenwatch_core::rules::load_dir(dir) {
        Ok(set) => {
            metrics.rule_reloads.with_label_values(&["ok"]).inc();
            publish_rules(&set, metrics);
            tracing::info!(rules = set.rules.len(), dir = %dir.display(), "rules reloaded");
            Some(Arc::new(set))
        }
        Err(errors) => {
            metrics.rule_reloads.with_label_values(&["error"]).inc();
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            tracing::error!(
                problems = errors.0.len(),
                "rule reload failed; keeping the running rules"
            );
            None
        }
    }
}

/// The reload task: `seen` is the fingerprint the running rules were loaded from; `requests`
/// changes on SIGHUP (or a test's request). Ends when the loop drops its receiver.
pub(super) async fn watch_rules(
    dir: PathBuf,
    mut seen: Fingerprint,
    metrics: Arc<Metrics>,
    mut requests: Option<watch::Receiver<u64>>,
    rules: watch::Sender<Arc<RuleSet>>,
) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            Ok(()) = changed(&mut requests) => true,
        };
        let now = fingerprint(&dir);
        if !asked && now == seen {
            continue;
        }
        seen = now;
        if let Some(set) = reload(&dir, &metrics) {
            if rules.send(set).is_err() {
                return;
            }
        }
    }
}

/// Completes when a reload is requested; never without a request channel (or once it closed).
async fn changed(requests: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match requests {
        Some(rx) => {
            let r = rx.changed().await;
            if r.is_err() {
                *requests = None;
            }
            r
        }
        None => std::future::pending().await,
    }
}
