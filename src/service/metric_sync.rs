//! The pipeline's counters published as Prometheus metrics: increments since the last sync,
//! so the pipeline's hot path touches no metric.

use std::collections::HashMap;
use std::sync::Arc;

use tokenwatch_core::engine::keymap::Class;
use tokenwatch_core::pipeline::{Pipeline, Stats};

use crate::metrics::Metrics;

/// Publishes the pipeline's counters as metric increments since the last call.
#[derive(Default)]
pub(super) struct MetricSync {
    pub(super) last: Stats,
    /// The engine's eviction counts per rule at the last sync: per class, then refused.
    evicted: HashMap<Arc<str>, [u64; 4]>,
}

impl MetricSync {
    pub(super) fn sync(&mut self, p: &Pipeline, m: &Metrics) {
        self.input(p, m);
        self.formats(p, m);
        Self::engine(p, m);
        self.evictions(p, m);
        let s = &p.stats;
        m.authenticated_events
            .inc_by(s.authenticated.saturating_sub(self.last.authenticated));
        m.attestation_mismatches.inc_by(
            s.attestation_mismatches
                .saturating_sub(self.last.attestation_mismatches),
        );
        m.jwks_errors
            .inc_by(p.jwks_errors().saturating_sub(m.jwks_errors.get()));
        self.last = s.clone();
    }

    /// Lines decoded and skipped, by reason.
    fn input(&self, p: &Pipeline, m: &Metrics) {
        let s = &p.stats;
        let d_events = s.events - self.last.events;
        let d_skipped = s.skipped_total() - self.last.skipped_total();
        m.events.with_label_values(&["decoded"]).inc_by(d_events);
        m.events.with_label_values(&["skipped"]).inc_by(d_skipped);
        for (reason, n) in s.skipped.iter().chain(s.token_errors.iter()) {
            let before = self
                .last
                .skipped
                .get(reason)
                .or_else(|| self.last.token_errors.get(reason))
                .copied()
                .unwrap_or(0);
            if *n > before {
                m.decode_errors.with_label_values(&[reason]).inc_by(n - before);
            }
        }
        m.authorization_redacted
            .inc_by(s.authorization_redacted - self.last.authorization_redacted);
    }

    /// Events per input format, and the fields each format lacked.
    fn formats(&self, p: &Pipeline, m: &Metrics) {
        for (f, c) in p.stats.by_format.iter() {
            let (format, before) = (f.name(), self.last.by_format.get(f));
            m.format_events
                .with_label_values(&[format])
                .inc_by(c.events - before.events);
            for ((field, n), (_, was)) in c.missing().into_iter().zip(before.missing()) {
                if n > was {
                    m.missing_fields.with_label_values(&[format, field]).inc_by(n - was);
                }
            }
        }
    }

    /// Keys evicted per rule and class, and refused, since the last sync. A rule's counts
    /// start again at 0 when its state does (a reload that changed it, a restore): a count
    /// below the last one is all new.
    fn evictions(&mut self, p: &Pipeline, m: &Metrics) {
        for (rule, evicted, refused) in p.engine().evictions_by_rule() {
            let now = [evicted[0], evicted[1], evicted[2], refused];
            let last = self.evicted.entry(rule.clone()).or_default();
            let delta = |i: usize| if now[i] >= last[i] { now[i] - last[i] } else { now[i] };
            for class in Class::ALL {
                let n = delta(class as usize);
                m.evicted_keys.with_label_values(&[rule, class.name()]).inc_by(n);
            }
            m.refused_keys.with_label_values(&[rule]).inc_by(delta(3));
            *last = now;
        }
    }

    /// Rule state: tracked keys, late events, tripped rules.
    fn engine(p: &Pipeline, m: &Metrics) {
        let es = p.engine().stats();
        m.tracked_keys.set(p.engine().tracked_keys() as i64);
        let late = es.late_events.saturating_sub(m.late_events.get());
        m.late_events.inc_by(late);
        let folded = es.aggregated.saturating_sub(m.aggregated_decisions.get());
        m.aggregated_decisions.inc_by(folded);
        let full = es.revoked_memory_full.saturating_sub(m.revoked_memory_full.get());
        if full > 0 {
            tracing::warn!(
                dropped = full,
                "the revoked-token memory is full (engine.max_revocations): live revocations were \
                 dropped, closest to expiry first; their reuse is no longer detected"
            );
            m.revoked_memory_full.inc_by(full);
        }
        for (rule, at) in p.engine().tripped() {
            m.rule_tripped.with_label_values(&[rule]).set(i64::from(at.is_some()));
        }
    }
}
