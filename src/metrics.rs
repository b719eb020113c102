//! Prometheus metrics and the small HTTP server that exposes them.
//!
//! Label values come only from fixed vocabularies (skip reasons, rule ids from the operator's
//! own files, actions, severities, topic names and partition numbers): never a token, a
//! subject or an address, so a flood of distinct tokens cannot blow up the series count or
//! leak anything to the monitoring system.
//!
//! The HTTP server answers `GET /metrics`, `/healthz` (the process is alive) and `/readyz`
//! (partitions assigned and Redis reachable: the service PINGs Redis every few seconds, so an
//! outage shows even when nothing is being revoked). It is deliberately tiny: one request per
//! connection, bounded request size, no keep-alive.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use tokenwatch_core::posture::LIFETIME_BUCKETS;

/// Increments of a labelled counter gathered over a batch and added once at its end: one
/// labelled update per record (a hash and a lock) cost the loops more than the work counted.
pub struct BatchCounts<const N: usize> {
    labels: [&'static str; N],
    counts: [u64; N],
}

impl<const N: usize> BatchCounts<N> {
    pub const fn new(labels: [&'static str; N]) -> Self {
        BatchCounts { labels, counts: [0; N] }
    }

    /// One more for the label at `i`.
    pub fn add(&mut self, i: usize) {
        self.add_n(i, 1);
    }

    /// `n` more for the label at `i`.
    pub fn add_n(&mut self, i: usize, n: u64) {
        self.counts[i] += n;
    }

    /// Adds the counts to `counter` and starts over.
    pub fn publish(&mut self, counter: &IntCounterVec) {
        for (label, n) in self.labels.iter().zip(std::mem::replace(&mut self.counts, [0; N])) {
            if n > 0 {
                counter.with_label_values(&[label]).inc_by(n);
            }
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub authorization_redacted: IntCounter,
    pub format_events: IntCounterVec,
    pub missing_fields: IntCounterVec,
    pub decisions: IntCounterVec,
    pub revocations: IntCounterVec,
    pub redis_errors: IntCounter,
    /// 1 when the last Redis operation succeeded: half of `/readyz`.
    pub redis_up: IntGauge,
    pub alert_errors: IntCounter,
    pub consumer_lag: IntGaugeVec,
    /// The other half of `/readyz`: ready once this is above 0.
    pub assigned_partitions: IntGauge,
    pub tracked_keys: IntGauge,
    /// Keys evicted from rule state, by rule and eviction class.
    pub evicted_keys: IntCounterVec,
    pub late_events: IntCounter,
    /// The event-time buffer ([`tokenwatch_core::eventtime`]): lines held, the most ever held, and
    /// partitions paused for running too far ahead.
    pub held_lines: IntGauge,
    pub held_lines_peak: IntGauge,
    pub paused_partitions: IntGauge,
    /// Checkpoints ([`crate::checkpoint`]): failures by operation (restore, save), and the
    /// size of the last one written, how long the loop stopped for one (the snapshot) and
    /// how long writing it took beside the loop.
    pub checkpoint_errors: IntCounterVec,
    pub checkpoint_bytes: IntGauge,
    pub checkpoint_pause: Histogram,
    pub checkpoint_write: Histogram,
    pub rules_loaded: IntGauge,
    pub rule_reloads: IntCounterVec,
    pub decision_delay: Histogram,
    pub build_info: IntGaugeVec,
    pub http_accept_errors: IntCounter,
    /// 1 for a rule that tripped its revocation budget (its decisions are shadow until re-armed).
    pub rule_tripped: IntGaugeVec,
    /// Items an output refused for good, by output (`redis`, `alerts_topic`).
    pub dead_letters: IntCounterVec,
    /// 1 while Redis answers but refuses writes until an operator acts (OOM, NOAUTH,
    /// READONLY...); the code is in /readyz.
    pub redis_refused: IntGauge,
    /// The Redis error code while refused, for /readyz.
    pub redis_refusal: std::sync::Mutex<Option<String>>,
    pub authenticated_events: IntCounter,
    pub attestation_mismatches: IntCounter,
    pub jwks_errors: IntCounter,
    /// Lines the event-time buffer released early for being over `engine.max_buffered_lines`.
    pub event_time_forced: IntCounter,
    /// Checkpoints not written because another instance of the group writes them.
    pub checkpoint_conflicts: IntCounter,
    /// Live revocations the engine's revoked-token memory could not hold (it was full).
    pub revoked_memory_full: IntCounter,
    /// `unrevoke` entries of the feed applied to the engine's memory.
    pub feed_unrevokes: IntCounter,
    /// Unauthenticated critical decisions folded into a per-network count, not emitted.
    pub aggregated_decisions: IntCounter,
    /// New unauthenticated keys a rule refused because every key it held had progress.
    pub refused_keys: IntCounterVec,
    /// Posture ([`tokenwatch_core::posture`]): labels are configured issuers (else `other`),
    /// registered algorithms (else `other`) and configured JWKS key ids only.
    pub posture_tokens: IntCounterVec,
    pub posture_lifetime: Arc<TotalsHistogram>,
    pub posture_in_url: IntCounterVec,
    pub posture_over_http: IntCounterVec,
    pub posture_unverified: IntCounterVec,
    pub posture_key_age: IntGaugeVec,
    /// The internal topics ([`crate::service::shuffle`]): records produced by kind (event,
    /// event_by_key, watermark), and consumed by what became of them (applied, watermark, duplicate,
    /// refused).
    pub shuffle_produced: IntCounterVec,
    pub shuffle_consumed: IntCounterVec,
    families: Vec<Family>,
}

/// One exported metric family, as Prometheus stores it: a histogram is stored as its
/// `_bucket`, `_sum` and `_count` series (dashboards and alerts name those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub histogram: bool,
}

/// Names and help texts, grouped by the stage they watch: the one list of what tokenwatch
/// exports (a data table; [`Metrics::new`] registers each under its field).
type Def = (&'static str, &'static str);
// The input: lines, formats, decoding and authentication.
const EVENTS: Def = ("tokenwatch_events_total", "Log lines by result (decoded, skipped).");
const DECODE_ERRORS: Def = (
    "tokenwatch_decode_errors_total",
    "Skipped lines and undecodable tokens, by reason.",
);
const AUTHORIZATION_REDACTED: Def = (
    "tokenwatch_authorization_redacted_total",
    "Decoded events whose Authorization header the gateway logged as REDACTED.",
);
const FORMAT_EVENTS: Def = (
    "tokenwatch_format_events_total",
    "Decoded events by the input format that read them.",
);
const MISSING_FIELDS: Def = (
    "tokenwatch_events_missing_field_total",
    "Decoded events without a client address, method or path, by input format and field.",
);
const AUTHENTICATED_EVENTS: Def = (
    "tokenwatch_authenticated_events_total",
    "Events whose token is authenticated (signature verified with a JWKS, or attested by \
     the gateway): the only events revoking rules act on. Stays 0 without --jwks or a \
     gateway attestation.",
);
const ATTESTATION_MISMATCHES: Def = (
    "tokenwatch_attestation_mismatches_total",
    "Lines whose gateway attested claims that are not those of the logged token (treated \
     as unauthenticated).",
);
const JWKS_ERRORS: Def = (
    "tokenwatch_jwks_errors_total",
    "Failed JWKS reloads after the start (the last good keys stay in use).",
);
// The engine: decisions, rules, state and event time.
const DECISIONS: Def = ("tokenwatch_decisions_total", "Decisions by rule, action and severity.");
const DECISION_DELAY: Def = (
    "tokenwatch_decision_delay_seconds",
    "Delay from a firing event's time to its decision (wall clock).",
);
const RULES_LOADED: Def = ("tokenwatch_rules_loaded", "Rules currently loaded.");
const RULE_RELOADS: Def = ("tokenwatch_rule_reloads_total", "Rule reloads by result (ok, error).");
const RULE_TRIPPED: Def = (
    "tokenwatch_rule_tripped",
    "1 while a rule has tripped its revocation budget: it decides in shadow until re-armed.",
);
const TRACKED_KEYS: Def = ("tokenwatch_tracked_keys", "Keys held in rule state.");
const EVICTED_KEYS: Def = (
    "tokenwatch_evicted_keys_total",
    "Keys evicted because a rule reached its key cap or state byte budget, by rule and class \
     (unauthenticated: fed only by unauthenticated events, evicted first; authenticated; \
     progress: partway to a revoking rule's threshold, evicted last: a detection may be lost).",
);
const LATE_EVENTS: Def = (
    "tokenwatch_late_events_total",
    "Events later than the allowed lateness.",
);
const HELD_LINES: Def = (
    "tokenwatch_event_time_held_lines",
    "Decoded lines waiting for the slowest partition's event time.",
);
const HELD_LINES_PEAK: Def = (
    "tokenwatch_event_time_held_lines_peak",
    "The most lines the event-time buffer has held at once.",
);
const PAUSED_PARTITIONS: Def = (
    "tokenwatch_event_time_paused_partitions",
    "Partitions paused for running more than engine.max_skew ahead of the slowest.",
);
// Kafka.
const CONSUMER_LAG: Def = (
    "tokenwatch_consumer_lag",
    "Messages behind the partition's high watermark.",
);
const ASSIGNED_PARTITIONS: Def = (
    "tokenwatch_kafka_assigned_partitions",
    "Partitions assigned to this instance (with --role both, the gateway and internal topics' together).",
);
// The outputs: Redis, alerts, dead letters, checkpoints.
const REVOCATIONS: Def = (
    "tokenwatch_revocations_total",
    "New revocations written to Redis, by kind (token, subject).",
);
const REDIS_ERRORS: Def = (
    "tokenwatch_redis_errors_total",
    "Failed Redis connection attempts and revocation writes (both retried).",
);
const REDIS_UP: Def = (
    "tokenwatch_redis_up",
    "1 when the last Redis operation (a write or the periodic PING) succeeded.",
);
const REDIS_REFUSED: Def = (
    "tokenwatch_redis_refused",
    "1 while Redis refuses writes for a reason an operator must fix (OOM, NOAUTH, READONLY...).",
);
const ALERT_ERRORS: Def = (
    "tokenwatch_alert_errors_total",
    "Failed deliveries of a batch's alert lines (file or alerts topic), retried.",
);
const DEAD_LETTERS: Def = (
    "tokenwatch_dead_letters_total",
    "Items an output refused for good and that went to the dead-letter output, by output.",
);
const CHECKPOINT_ERRORS: Def = (
    "tokenwatch_checkpoint_errors_total",
    "Checkpoints refused at restore (damaged, other format) or not saved, by operation.",
);
const CHECKPOINT_BYTES: Def = ("tokenwatch_checkpoint_bytes", "Size of the last checkpoint written.");
const CHECKPOINT_PAUSE: Def = (
    "tokenwatch_checkpoint_pause_seconds",
    "Time the consume loop stopped reading for a checkpoint (the engine's snapshot, and waiting for the write before).",
);
const CHECKPOINT_WRITE: Def = (
    "tokenwatch_checkpoint_write_seconds",
    "Time a checkpoint took to encode and write to Redis, beside the consume loop.",
);
const CHECKPOINT_CONFLICTS: Def = (
    "tokenwatch_checkpoint_conflicts_total",
    "Checkpoints not written because another live instance of the consumer group writes them.",
);
const SHUFFLE_PRODUCED: Def = (
    "tokenwatch_shuffle_produced_total",
    "Records the ingest stage produced to the internal topics, by kind (event by subject, event_by_key, watermark).",
);
const SHUFFLE_CONSUMED: Def = (
    "tokenwatch_shuffle_consumed_total",
    "Records the detect stage read from the internal topics, by result (event, watermark, duplicate, refused).",
);
const EVENT_TIME_FORCED: Def = (
    "tokenwatch_event_time_forced_total",
    "Lines applied before their event-time turn because the buffer was over engine.max_buffered_lines.",
);
// The process.
const BUILD_INFO: Def = ("tokenwatch_build_info", "Build information.");
const HTTP_ACCEPT_ERRORS: Def = (
    "tokenwatch_http_accept_errors_total",
    "Failed accepts on the metrics listener (e.g. out of file descriptors).",
);

// The engine's revoked-token memory.
const REVOKED_MEMORY_FULL: Def = (
    "tokenwatch_revoked_memory_full_total",
    "Live revocations dropped from the engine's memory because it held engine.max_revocations: \
     reuse of such a token is no longer detected (Redis still blocks it).",
);
const FEED_UNREVOKES: Def = (
    "tokenwatch_feed_unrevokes_total",
    "Unrevoke entries of the feed (tokenwatch unrevoke) applied to the engine's memory.",
);
const AGGREGATED_DECISIONS: Def = (
    "tokenwatch_aggregated_decisions_total",
    "Unauthenticated critical decisions not emitted: counted into their (rule, network) \
     group's aggregate (emitted at counts 1, 10, 100... per 10 min window).",
);

const REFUSED_KEYS: Def = (
    "tokenwatch_refused_keys_total",
    "New keys of unauthenticated events a rule did not track because every key it held had \
     progress towards a revoking threshold (those are never evicted for unauthenticated keys).",
);
// Posture: token hygiene (issue 14).
const POSTURE_TOKENS: Def = (
    "tokenwatch_posture_tokens_total",
    "Events with a token, by issuer (configured issuers; `other`) and algorithm (registered \
     JOSE algorithms; `other`).",
);
const POSTURE_LIFETIME: Def = (
    "tokenwatch_posture_token_lifetime_seconds",
    "Lifetime (exp - iat) of the tokens of events.",
);
const POSTURE_IN_URL: Def = (
    "tokenwatch_posture_tokens_in_url_total",
    "Events whose token was in the URL query, by issuer.",
);
const POSTURE_OVER_HTTP: Def = (
    "tokenwatch_posture_tokens_over_http_total",
    "Events whose token was sent over plain HTTP (formats that log the scheme), by issuer.",
);
const POSTURE_UNVERIFIED: Def = (
    "tokenwatch_posture_unverified_tokens_total",
    "Events whose token was neither verified with a JWKS nor attested by the gateway, by issuer.",
);
const POSTURE_KEY_AGE: Def = (
    "tokenwatch_posture_signing_key_age_seconds",
    "Time since tokenwatch first saw each key of a configured issuer's JWKS sign a genuine token.",
);

/// From a small state's snapshot (well under a millisecond) to a few million keys' write.
const CHECKPOINT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const DELAY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Registers metrics as they are made, remembering each family for [`Metrics::families`].
struct Registrar {
    registry: Registry,
    families: Vec<Family>,
}

impl Registrar {
    fn add<T: Collector + Clone + 'static>(&mut self, c: T, histogram: bool) -> T {
        for d in c.desc() {
            self.families.push(Family {
                name: d.fq_name.clone(),
                histogram,
            });
        }
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&mut self, (name, help): Def) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"), false)
    }

    fn counter_vec(&mut self, (name, help): Def, labels: &[&str]) -> IntCounterVec {
        self.add(
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            false,
        )
    }

    fn gauge(&mut self, (name, help): Def) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"), false)
    }

    fn gauge_vec(&mut self, (name, help): Def, labels: &[&str]) -> IntGaugeVec {
        self.add(
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            false,
        )
    }

    fn totals_histogram(&mut self, (name, help): Def, buckets: &[f64]) -> Arc<TotalsHistogram> {
        let h = Arc::new(TotalsHistogram::new(name, help, buckets));
        self.add(SharedCollector(h.clone()), true);
        h
    }

    fn histogram(&mut self, (name, help): Def, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"), true)
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registrar {
            registry: Registry::new(),
            families: Vec::new(),
        };
        let m = Metrics {
            events: r.counter_vec(EVENTS, &["result"]),
            decode_errors: r.counter_vec(DECODE_ERRORS, &["reason"]),
            authorization_redacted: r.counter(AUTHORIZATION_REDACTED),
            format_events: r.counter_vec(FORMAT_EVENTS, &["format"]),
            missing_fields: r.counter_vec(MISSING_FIELDS, &["format", "field"]),
            decisions: r.counter_vec(DECISIONS, &["rule", "action", "severity"]),
            revocations: r.counter_vec(REVOCATIONS, &["kind"]),
            redis_errors: r.counter(REDIS_ERRORS),
            redis_up: r.gauge(REDIS_UP),
            alert_errors: r.counter(ALERT_ERRORS),
            consumer_lag: r.gauge_vec(CONSUMER_LAG, &["topic", "partition"]),
            assigned_partitions: r.gauge(ASSIGNED_PARTITIONS),
            tracked_keys: r.gauge(TRACKED_KEYS),
            evicted_keys: r.counter_vec(EVICTED_KEYS, &["rule", "class"]),
            late_events: r.counter(LATE_EVENTS),
            held_lines: r.gauge(HELD_LINES),
            held_lines_peak: r.gauge(HELD_LINES_PEAK),
            paused_partitions: r.gauge(PAUSED_PARTITIONS),
            checkpoint_errors: r.counter_vec(CHECKPOINT_ERRORS, &["op"]),
            checkpoint_bytes: r.gauge(CHECKPOINT_BYTES),
            checkpoint_pause: r.histogram(CHECKPOINT_PAUSE, CHECKPOINT_BUCKETS),
            checkpoint_write: r.histogram(CHECKPOINT_WRITE, CHECKPOINT_BUCKETS),
            rules_loaded: r.gauge(RULES_LOADED),
            rule_reloads: r.counter_vec(RULE_RELOADS, &["result"]),
            decision_delay: r.histogram(DECISION_DELAY, DELAY_BUCKETS),
            build_info: r.gauge_vec(BUILD_INFO, &["version"]),
            http_accept_errors: r.counter(HTTP_ACCEPT_ERRORS),
            rule_tripped: r.gauge_vec(RULE_TRIPPED, &["rule"]),
            dead_letters: r.counter_vec(DEAD_LETTERS, &["output"]),
            redis_refused: r.gauge(REDIS_REFUSED),
            redis_refusal: std::sync::Mutex::new(None),
            authenticated_events: r.counter(AUTHENTICATED_EVENTS),
            attestation_mismatches: r.counter(ATTESTATION_MISMATCHES),
            jwks_errors: r.counter(JWKS_ERRORS),
            event_time_forced: r.counter(EVENT_TIME_FORCED),
            checkpoint_conflicts: r.counter(CHECKPOINT_CONFLICTS),
            revoked_memory_full: r.counter(REVOKED_MEMORY_FULL),
            feed_unrevokes: r.counter(FEED_UNREVOKES),
            aggregated_decisions: r.counter(AGGREGATED_DECISIONS),
            refused_keys: r.counter_vec(REFUSED_KEYS, &["rule"]),
            posture_tokens: r.counter_vec(POSTURE_TOKENS, &["issuer", "alg"]),
            posture_lifetime: r.totals_histogram(POSTURE_LIFETIME, &LIFETIME_BUCKETS.map(|(s, _)| s as f64)),
            posture_in_url: r.counter_vec(POSTURE_IN_URL, &["issuer"]),
            posture_over_http: r.counter_vec(POSTURE_OVER_HTTP, &["issuer"]),
            posture_unverified: r.counter_vec(POSTURE_UNVERIFIED, &["issuer"]),
            posture_key_age: r.gauge_vec(POSTURE_KEY_AGE, &["issuer", "kid"]),
            shuffle_produced: r.counter_vec(SHUFFLE_PRODUCED, &["kind"]),
            shuffle_consumed: r.counter_vec(SHUFFLE_CONSUMED, &["result"]),
            registry: r.registry,
            families: r.families,
        };
        m.export_known_labels();
        Arc::new(m)
    }

    /// Series whose labels are known up front start at 0, so that a rate or an increase sees
    /// the first event.
    fn export_known_labels(&self) {
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for output in ["redis", "alerts_topic"] {
            self.dead_letters.with_label_values(&[output]);
        }
        for res in ["decoded", "skipped"] {
            self.events.with_label_values(&[res]).inc_by(0);
        }
        for res in ["ok", "error"] {
            self.rule_reloads.with_label_values(&[res]).inc_by(0);
        }
        for kind in ["token", "subject"] {
            self.revocations.with_label_values(&[kind]).inc_by(0);
        }
    }

    /// Every family registered, in registration order, including labelled ones that have no
    /// series yet (which the registry's `gather` leaves out): what dashboards may name.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// `up`, `down`, or `refuses writes (CODE)`.
    pub fn redis_state(&self) -> String {
        if let Some(code) = self.redis_refusal.lock().ok().and_then(|r| r.clone()) {
            return format!("refuses writes ({code}): an operator must act, see tokenwatch_redis_refused");
        }
        if self.redis_up.get() == 1 { "up" } else { "down" }.to_string()
    }

    /// Partitions assigned, Redis answering and taking writes: read from the gauges
    /// `/metrics` shows, so readiness and the metrics never disagree.
    pub fn ready(&self) -> bool {
        self.assigned_partitions.get() > 0 && self.redis_up.get() == 1 && self.redis_refused.get() == 0
    }
}

/// A histogram whose counts are set, not observed: the pipeline counts per bucket on its hot
/// path without touching a metric ([`tokenwatch_core::posture::PostureStats`]), and the
/// metric sync publishes the totals, exact sum included.
pub struct TotalsHistogram {
    desc: prometheus::core::Desc,
    bounds: Vec<f64>,
    /// Per bucket (not cumulative, the last above every bound), and the sum.
    totals: std::sync::Mutex<(Vec<u64>, f64)>,
}

impl TotalsHistogram {
    fn new(name: &str, help: &str, bounds: &[f64]) -> TotalsHistogram {
        TotalsHistogram {
            desc: prometheus::core::Desc::new(name.into(), help.into(), vec![], Default::default())
                .expect("valid metric"),
            bounds: bounds.to_vec(),
            totals: std::sync::Mutex::new((vec![0; bounds.len() + 1], 0.0)),
        }
    }

    /// Replaces the counts (one per bound, then one above) and the sum.
    pub fn set(&self, counts: &[u64], sum: f64) {
        if let Ok(mut t) = self.totals.lock() {
            t.0.clear();
            t.0.extend_from_slice(counts);
            t.0.resize(self.bounds.len() + 1, 0);
            t.1 = sum;
        }
    }
}

/// Registers an `Arc`'d collector (the registry wants an owned box).
#[derive(Clone)]
struct SharedCollector(Arc<TotalsHistogram>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto;
        let (counts, sum) = self.0.totals.lock().map(|t| t.clone()).unwrap_or_default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.0.bounds.len());
        for (ub, n) in self.0.bounds.iter().zip(&counts) {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*ub);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let mut h = proto::Histogram::default();
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum);
        h.set_bucket(buckets);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut f = proto::MetricFamily::default();
        f.set_name(self.0.desc.fq_name.clone());
        f.set_help(self.0.desc.help.clone());
        f.set_field_type(proto::MetricType::HISTOGRAM);
        f.set_metric(vec![m]);
        vec![f]
    }
}

/// At most this many connections are answered at once. Further clients wait in the kernel's
/// accept backlog, which costs no file descriptor of ours: a flood of connections cannot take
/// the descriptors that reading rules, Kafka and Redis need.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection gets this long, in all, to send its request head and read the answer, so a
/// client that trickles one byte at a time (slowloris) holds a slot for seconds, not hours.
pub const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves /metrics, /healthz and /readyz for as long as the task runs.
///
/// Shaped like mini-redis's listener: a semaphore bounds the connections in flight (a permit is
/// taken before `accept`, so excess clients wait in the backlog), and a failing `accept`
/// (EMFILE when the process is out of descriptors, ENOBUFS...) is retried after a pause that
/// doubles up to a second instead of at once, which would spin a core.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut pause = FIRST_PAUSE;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                pause = FIRST_PAUSE;
                sock
            }
            Err(e) => {
                metrics.http_accept_errors.inc();
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "metrics server: accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(sock, &m)).await;
        });
    }
}

/// Reads one request head (at most 2 KiB) and writes the answer.
async fn answer(mut sock: tokio::net::TcpStream, m: &Metrics) {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].windows(2).any(|w| w == b"\n\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", m.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if m.ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            format!(
                "not ready: assigned partitions {}, redis {}\n",
                m.assigned_partitions.get(),
                m.redis_state()
            ),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// A minimal HTTP GET for tests and the demo: returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let m = Metrics::new();
        m.decisions
            .with_label_values(&["token-replay", "revoke_token", "high"])
            .inc();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, m.clone()));
        let (code, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains(
                "tokenwatch_decisions_total{action=\"revoke_token\",rule=\"token-replay\",severity=\"high\"} 1"
            ),
            "{body}"
        );
        assert!(body.contains("tokenwatch_build_info{version="));
        assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 503);
        m.assigned_partitions.set(2);
        m.redis_up.set(1);
        assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
        assert_eq!(http_get(addr, "/nope").await.unwrap().0, 404);
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(std::iter::Iterator::count)
            .unwrap_or(0)
    }

    /// Slow clients that trickle a byte at a time (slowloris) cannot take the process's file
    /// descriptors, nor keep /healthz from answering: the server holds at most
    /// MAX_CONNECTIONS of them, each for at most CONNECTION_DEADLINE. (On the unbounded
    /// server every one of them held a descriptor for as long as it kept trickling.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_clients_cannot_exhaust_descriptors_or_stall_health() {
        let m = Metrics::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, m.clone()));
        let before = open_fds();
        const SLOW: usize = 300;
        let mut slow = Vec::new();
        for _ in 0..SLOW {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"G").await.unwrap();
            slow.push(s);
        }
        // keep trickling, so that only a deadline (not an idle-read timeout) can end them
        let trickle = tokio::spawn(async move {
            for _ in 0..20 {
                for s in &mut slow {
                    let _ = s.write_all(b"E").await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let held = open_fds().saturating_sub(before + SLOW);
        assert!(
            held <= MAX_CONNECTIONS + 8,
            "the server holds {held} descriptors for {SLOW} slow clients"
        );
        let (code, _) = tokio::time::timeout(std::time::Duration::from_secs(60), http_get(addr, "/healthz"))
            .await
            .expect("/healthz answered while slow clients trickle")
            .unwrap();
        assert_eq!(code, 200);
        trickle.abort();
    }
}
