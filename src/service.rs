//! `tokenwatch run`: the long-lived service. Kafka in, the same pipeline as `replay`,
//! revocations to Redis, every decision to the alert outputs, metrics over HTTP.
//!
//! The loop works in batches ([`consume`]): it reads messages until a batch is full or its
//! wait is over, runs their lines through the pipeline, then performs the batch's side effects
//! (alert lines flushed, revocations acknowledged by Redis) and only then commits the batch's
//! offsets. So a crash loses nothing (uncommitted messages are read again, and the Redis script
//! makes their writes idempotent), and a slow or absent Redis stops consumption instead of
//! growing memory: nothing is read while a batch waits for Redis, and nothing past an unwritten
//! revocation is committed.
//!
//! A failed alert delivery (the file, or the alerts topic) is retried the same way as a Redis
//! write: with backoff, reading nothing new and committing nothing past the batch meanwhile
//! ([`retry`]). Readiness does not wait for a write to fail: a health check PINGs Redis every
//! [`REDIS_HEALTH_INTERVAL`], beside the loop, and keeps `/readyz` and `tokenwatch_redis_up`
//! current even when nothing is being revoked ([`redis_health`]).
//!
//! Rules hot-reload between batches, when a file under the rule directory changes or on
//! SIGHUP ([`reload`], a task of its own); an invalid edit keeps the running rules.
//! SIGTERM/SIGINT end the loop after the current batch; the loop then commits, synchronously,
//! the offsets of every batch it finished. If the current batch's side effects cannot finish
//! within the shutdown timeout (Redis or the alerts topic down), the loop gives up on that
//! batch, commits only the batches before it, and `run` returns an error: the `tokenwatch run`
//! process exits with status 2, and the next run reads the unfinished batch again.
//!
//! The service is put together in one place, [`Service::builder`] ([`assemble`]), which
//! `tokenwatch run` ([`serve`]), `tokenwatch demo` and the tests all use.

mod assemble;
mod consume;
mod detect;
mod feed;
mod ingest;
mod metric_sync;
mod redis_health;
mod reload;
mod retry;
pub mod shuffle;

use std::path::PathBuf;
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

pub use assemble::{Service, ServiceBuilder};
#[cfg(test)]
use metric_sync::MetricSync;
pub use redis_health::REDIS_HEALTH_INTERVAL;
pub use shuffle::ShuffleConfig;

#[cfg(test)]
use crate::metrics::Metrics;
use tokenwatch_core::eventtime::EventTimeConfig;
#[cfg(test)]
use tokenwatch_core::pipeline::Pipeline;
use tokenwatch_core::pipeline::PipelineConfig;

/// Everything `run` needs, resolved from the config file, the environment and the flags.
pub struct ServiceConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub kafka: std::collections::BTreeMap<String, String>,
    pub rules_dir: PathBuf,
    pub geoip: Option<PathBuf>,
    pub pipeline: PipelineConfig,
    pub max_line: usize,
    pub redis: crate::sinks::redis::RedisConfig,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub shutdown_timeout: Duration,
    pub alerts: crate::sinks::alerts::AlertTarget,
    /// Where items an output refused for good go; `None`: stderr.
    pub dead_letter: Option<PathBuf>,
    pub alerts_topic: Option<String>,
    /// Per-partition event time: idleness and watermark alignment.
    pub event_time: EventTimeConfig,
    /// How often state is checkpointed to Redis; `None`: never.
    pub checkpoint_interval: Option<Duration>,
    /// Dead letters go to this Kafka topic instead of `dead_letter` (a file) or stderr.
    pub dead_letter_topic: Option<String>,
    /// The stages this instance runs, and the internal topic between them.
    pub shuffle: ShuffleConfig,
}

/// What a run did, for the final log line and the tests.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub stats: tokenwatch_core::pipeline::Stats,
    pub revocations_written: u64,
    pub batches: u64,
}

/// Why the service did not start, or stopped with work unfinished. Everything but
/// [`ServiceError::GaveUp`] and [`ServiceError::ShutdownTimeout`] happens at start and names
/// the setting, file or server to fix; those two say a batch was left for the next run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid rules in {}:\n{source}", dir.display())]
    Rules {
        dir: PathBuf,
        #[source]
        source: tokenwatch_core::rules::LoadErrors,
    },
    #[error(transparent)]
    GeoIp(#[from] tokenwatch_core::geo::GeoError),
    /// The pipeline's settings: a format that cannot read lines.
    #[error(transparent)]
    Pipeline(#[from] tokenwatch_core::input::FormatError),
    #[error(transparent)]
    Redis(#[from] crate::sinks::redis::RedisOpError),
    #[error(transparent)]
    DeadLetters(#[from] crate::sinks::dead_letter::DeadLetterError),
    #[error(transparent)]
    Alerts(#[from] crate::sinks::alerts::AlertError),
    #[error("kafka producer for alerts_topic {topic}: {source}")]
    AlertsProducer {
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error(transparent)]
    Kafka(#[from] crate::source::kafka::SourceError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::StoreError),
    #[error(transparent)]
    Shuffle(#[from] shuffle::ShuffleError),
    #[error("metrics_addr {addr}: cannot listen: {source}")]
    MetricsListener {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the ingest stage's decoding threads ([shuffle] decode_threads, run --threads): {0}")]
    DecodeThreads(#[source] std::io::Error),
    /// The shutdown timeout passed while a batch's side effects were being retried.
    #[error("shutdown timeout passed with {0}; their offsets were not committed")]
    GaveUp(Undelivered),
    /// The backstop of [`serve`]: the loop did not return within the shutdown timeout.
    #[error("shutdown timeout passed before in-flight work finished")]
    ShutdownTimeout,
}

/// What a batch left undone when the shutdown timeout passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    AlertLines,
    Revocations,
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Undelivered::AlertLines => "alert lines undelivered",
            Undelivered::Revocations => "revocations unwritten",
        })
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The whole service as `tokenwatch run` starts it: the metrics listener on `metrics_addr`,
/// SIGTERM/SIGINT (stop) and SIGHUP (reload rules), the service, and a backstop: after a stop
/// signal, the loop has the shutdown timeout (and a second) to finish its batch.
pub async fn serve(cfg: ServiceConfig, metrics_addr: std::net::SocketAddr) -> Result<RunSummary, ServiceError> {
    let listener =
        tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|source| ServiceError::MetricsListener {
                addr: metrics_addr,
                source,
            })?;
    tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz, /readyz");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hup_tx, hup_rx) = watch::channel(0u64);
    spawn_signals(stop_tx, hup_tx)?;
    // The loop gives up on its batch at the timeout; this a second later.
    let mut backstop = retry::Shutdown::new(stop_rx.clone(), cfg.shutdown_timeout + Duration::from_secs(1));
    let service = Service::builder(cfg)
        .metrics_listener(listener)
        .reload_requests(hup_rx)
        .build()
        .await?;
    tokio::select! {
        r = service.run(stop_rx) => r,
        _ = backstop.expired() => Err(ServiceError::ShutdownTimeout),
    }
}

fn spawn_signals(stop: watch::Sender<bool>, hup: watch::Sender<u64>) -> Result<(), ServiceError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: finishing in-flight work"); let _ = stop.send(true); }
                _ = int.recv() => { tracing::info!("SIGINT: finishing in-flight work"); let _ = stop.send(true); }
                _ = sighup.recv() => { tracing::info!("SIGHUP: reloading rules"); hup.send_modify(|n| *n += 1); }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each format lacked reaches /metrics, as increments since the last sync.
    #[test]
    fn missing_fields_and_redacted_headers_are_published() {
        use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
        let rules = Arc::new(tokenwatch_core::rules::RuleSet::default());
        let mut p = Pipeline::new(rules, None, PipelineConfig::default()).unwrap();
        let m = Metrics::new();
        let mut sync = MetricSync::default();
        let kong = r#"{"started_at":1795910400000,"client_ip":"1.2.3.4","request":{"method":"GET","uri":"/k","headers":{"authorization":"REDACTED"}}}"#;
        let envoy = r#"{"start_time":"2026-11-29T00:00:00Z","method":"GET","path":"/e"}"#;
        let mut out = Vec::new();
        for line in [kong, envoy, envoy] {
            p.process_line(line.as_bytes(), &mut out);
        }
        sync.sync(&p, &m);
        p.process_line(envoy.as_bytes(), &mut out);
        sync.sync(&p, &m);
        let text = m.render();
        for want in [
            "tokenwatch_authorization_redacted_total 1",
            "tokenwatch_format_events_total{format=\"envoy\"} 3",
            "tokenwatch_format_events_total{format=\"kong\"} 1",
            "tokenwatch_events_missing_field_total{field=\"client_ip\",format=\"envoy\"} 3",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert!(!text.contains("field=\"path\""), "nothing lacked a path:\n{text}");
    }

    #[test]
    fn authenticated_events_are_exported_and_stay_0_without_evidence() {
        let m = Metrics::new();
        for name in [
            "tokenwatch_authenticated_events_total 0",
            "tokenwatch_attestation_mismatches_total 0",
            "tokenwatch_jwks_errors_total 0",
        ] {
            assert!(m.render().contains(name), "{name}");
        }
        let rules = tokenwatch_core::defaults::rules().unwrap();
        let mut p = Pipeline::new(rules, None, PipelineConfig::default()).unwrap();
        let t = tokenwatch_core::token::encode_unsigned_parts(
            &serde_json::json!({"alg": "RS256"}),
            &serde_json::json!({"sub": "u", "jti": "j"}),
            b"sig",
        );
        let mut out = Vec::new();
        for attest in [
            "",
            r#","authenticated":true"#,
            r#","authenticated":true,"jwt_claims":{"sub":"x"}"#,
        ] {
            let line = format!(r#"{{"ts":1,"status":200,"authorization":"Bearer {t}"{attest}}}"#);
            p.process_line(line.as_bytes(), &mut out);
        }
        let mut sync = MetricSync::default();
        sync.sync(&p, &m);
        assert_eq!(m.authenticated_events.get(), 1);
        assert_eq!(m.attestation_mismatches.get(), 1);
        sync.sync(&p, &m);
        assert_eq!(m.authenticated_events.get(), 1, "increments, not totals");
        assert!(PipelineConfig::default().evidence_warning().is_some());
    }

    /// Evictions reach /metrics per rule and class, as increments (a second sync adds none).
    #[test]
    fn evictions_are_published_by_rule_and_class() {
        let rules = tokenwatch_core::defaults::rules().unwrap();
        let engine = tokenwatch_core::engine::EngineConfig {
            max_keys_per_rule: 10,
            ..Default::default()
        };
        let cfg = PipelineConfig {
            engine,
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(rules, None, cfg).unwrap();
        let mut out = Vec::new();
        for i in 0..30 {
            let t = tokenwatch_core::token::encode_unsigned_parts(
                &serde_json::json!({"alg": "RS256"}),
                &serde_json::json!({"sub": "u", "jti": format!("j{i}")}),
                b"sig",
            );
            let line =
                format!(r#"{{"ts":{i},"status":200,"client_ip":"198.51.100.7","authenticated":true,"token":"{t}"}}"#);
            p.process_line(line.as_bytes(), &mut out);
        }
        let (m, mut sync) = (Metrics::new(), MetricSync::default());
        sync.sync(&p, &m);
        sync.sync(&p, &m);
        let (_, evicted, _) = p
            .engine()
            .evictions_by_rule()
            .find(|(r, _, _)| &***r == "token-replay")
            .unwrap();
        assert!(evicted[1] >= 20, "{evicted:?}");
        let text = m.render();
        for want in [
            format!(
                "tokenwatch_evicted_keys_total{{class=\"authenticated\",rule=\"token-replay\"}} {}",
                evicted[1]
            ),
            "tokenwatch_evicted_keys_total{class=\"progress\",rule=\"token-replay\"} 0".into(),
            "tokenwatch_refused_keys_total{rule=\"token-replay\"} 0".into(),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
    }
}
