//! The pipeline's counters published as Prometheus metrics: increments since the last sync,
//! so the pipeline's hot path touches no metric.

use std::collections::HashMap;
use std::sync::Arc;

use tokenwatch_core::engine::keymap::Class;
use tokenwatch_core::pipeline::{Pipeline, Stats};
use tokenwatch_core::posture::{IssuerStats, PostureStats};

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
        self.posture(p, m);
        self.last = s.clone();
    }

    /// Token hygiene: by issuer and algorithm, lifetimes, leaks, and the configured keys' ages
    /// (wall clock at this edge: first seen is event time, which tracks it in a live stream).
    fn posture(&self, p: &Pipeline, m: &Metrics) {
        let (now, was) = (&p.stats.posture, &self.last.posture);
        let cfg = p.engine().posture();
        let zero = IssuerStats::default();
        for (i, s) in now.by_issuer.iter().enumerate() {
            let before = was.by_issuer.get(i).unwrap_or(&zero);
            let iss = PostureStats::issuer_label(cfg, i);
            for (a, (n, b)) in s.by_alg.iter().zip(&before.by_alg).enumerate() {
                if n > b {
                    let alg = PostureStats::alg_label(a);
                    m.posture_tokens.with_label_values(&[iss, alg]).inc_by(n - b);
                }
            }
            for (c, n, b) in [
                (&m.posture_in_url, s.in_url, before.in_url),
                (&m.posture_over_http, s.over_http, before.over_http),
                (&m.posture_unverified, s.unverified, before.unverified),
            ] {
                c.with_label_values(&[iss]).inc_by(n.saturating_sub(b));
            }
        }
        m.posture_lifetime.set(&now.lifetime, now.lifetime_sum_s);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (iss, kid, first) in p.key_first_seen() {
            let age_s = (now_ms - first).max(0) / 1000;
            m.posture_key_age.with_label_values(&[&*iss, &*kid]).set(age_s);
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
    use tokenwatch_core::posture::Posture;
    use tokenwatch_core::token::encode_unsigned_parts;

    use super::*;

    fn line(alg: &str, iss: &str, lifetime: i64, extra: &str) -> String {
        let t = encode_unsigned_parts(
            &serde_json::json!({"alg": alg}),
            &serde_json::json!({"iss": iss, "sub": "u", "jti": format!("{alg}{iss}{lifetime}{extra}"), "iat": 1_795_910_400, "exp": 1_795_910_400 + lifetime}),
            b"sig",
        );
        format!(r#"{{"ts":1795910400,"path":"/a","status":200,"authorization":"Bearer {t}"{extra}}}"#)
    }

    #[test]
    fn posture_metrics_have_bounded_labels_and_exact_totals() {
        let cfg = PipelineConfig {
            posture: Arc::new(Posture::new(vec!["https://idp".into()], vec![], vec![], vec![], 1)),
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(tokenwatch_core::defaults::rules().unwrap(), None, cfg).unwrap();
        let m = Metrics::new();
        let mut sync = MetricSync::default();
        let mut out = Vec::new();
        for l in [
            line("RS256", "https://idp", 600, r#","scheme":"http""#),
            line("HS256", "https://idp", 3_600, ""),
            // an issuer nobody configured and an algorithm nobody registered: `other`, not
            // their text
            line(
                "XS999",
                "https://attacker-chosen.example",
                86_400 * 40,
                r#","scheme":"https""#,
            ),
        ] {
            p.process_line(l.as_bytes(), &mut out);
        }
        sync.sync(&p, &m);
        p.process_line(line("RS256", "https://idp", 60, "").as_bytes(), &mut out);
        sync.sync(&p, &m);
        let body = m.render();
        for want in [
            r#"tokenwatch_posture_tokens_total{alg="RS256",issuer="https://idp"} 2"#,
            r#"tokenwatch_posture_tokens_total{alg="HS256",issuer="https://idp"} 1"#,
            r#"tokenwatch_posture_tokens_total{alg="other",issuer="other"} 1"#,
            r#"tokenwatch_posture_tokens_over_http_total{issuer="https://idp"} 1"#,
            r#"tokenwatch_posture_unverified_tokens_total{issuer="https://idp"} 3"#,
            r#"tokenwatch_posture_token_lifetime_seconds_bucket{le="300"} 1"#,
            r#"tokenwatch_posture_token_lifetime_seconds_bucket{le="900"} 2"#,
            r#"tokenwatch_posture_token_lifetime_seconds_bucket{le="2592000"} 3"#,
            r#"tokenwatch_posture_token_lifetime_seconds_bucket{le="+Inf"} 4"#,
            r#"tokenwatch_posture_token_lifetime_seconds_sum 3460260"#,
            r#"tokenwatch_posture_token_lifetime_seconds_count 4"#,
        ] {
            assert!(body.contains(want), "missing `{want}` in\n{body}");
        }
        assert!(!body.contains("attacker-chosen") && !body.contains("XS999"), "{body}");
    }

    /// The key-age gauge: for the keys of a configured issuer's JWKS that signed a genuine
    /// token, labelled by that issuer and key id only.
    #[test]
    fn signing_key_age_is_shown_for_configured_keys_only() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let jwks = root.join("tests/fixtures/keys/jwks.json").display().to_string();
        let verify = tokenwatch_core::verify::VerifyConfig {
            jwks: vec![],
            issuers: vec![("https://idp.example.com".into(), jwks)],
        };
        let cfg = PipelineConfig {
            verify: Some(Arc::new(tokenwatch_core::verify::Verifier::load(&verify).unwrap())),
            posture: Arc::new(Posture::new(
                vec!["https://idp.example.com".into()],
                vec![],
                vec![],
                vec![],
                1,
            )),
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(tokenwatch_core::defaults::rules().unwrap(), None, cfg).unwrap();
        let pem = std::fs::read(root.join("tests/fixtures/keys/rsa.pem")).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({"iss": "https://idp.example.com", "sub": "u", "jti": "j1", "iat": 1_795_910_400, "exp": 1_795_914_000});
        let t = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap();
        let l = format!(r#"{{"ts":1795910400,"path":"/a","status":200,"authorization":"Bearer {t}"}}"#);
        let mut out = Vec::new();
        p.process_line(l.as_bytes(), &mut out);
        let m = Metrics::new();
        MetricSync::default().sync(&p, &m);
        let body = m.render();
        let age = body
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"tokenwatch_posture_signing_key_age_seconds{issuer="https://idp.example.com",kid="k1"}"#,
                )
            })
            .unwrap_or_else(|| panic!("no age of k1 in\n{body}"));
        // wall clock minus the event time of 2026-11-29 (0 if the clock were earlier)
        assert!(age.rsplit(' ').next().unwrap().parse::<i64>().is_ok(), "{age}");
        // the JWKS's other keys never signed: no series for them
        assert!(!body.contains(r#"kid="ec1""#), "{body}");
    }
}
