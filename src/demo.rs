//! `tokenwatch demo`: generated traffic with known attacks through the default rules, and a
//! score of what was caught.
//!
//! Everything it needs is inside the binary (rules, a test GeoIP database, the generator),
//! so it runs on a fresh machine. The engine geolocates with the database the traffic was
//! generated for ([`tokenwatch_gen::Networks::geo_db`]): the embedded test database, or the
//! `--geoip` file. [`score`] compares decisions with the generator's labels; the
//! recall/precision test uses the same function.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use crate::metrics::Metrics;
use crate::service::{Service, ServiceConfig};
use crate::sinks::alerts::AlertTarget;
use crate::sinks::memory::MemoryStore;
use crate::sinks::redis::{RedisConfig, RevocationWriter};
use tokenwatch_core::decision::Decision;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_gen::{GenConfig, Generator, Label};

/// Detection measured against the labels, per rule: (detected, missed, false).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Score {
    pub per_rule: BTreeMap<String, (u64, u64, u64)>,
    pub missed: Vec<Label>,
    /// Decisions that match no label at all. Decisions on a forged decoy are false too
    /// (counted in `per_rule`), but listed as `decoys_fired` instead.
    pub false_positives: Vec<Decision>,
    /// Forged decoys per rule: (not fired, fired (false)).
    pub decoys: BTreeMap<String, (u64, u64)>,
    pub decoys_fired: Vec<Label>,
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
/// the rule keys on). A label is detected when a decision of its rule names its key; a
/// decoy's label (`expect: none`) is "fired" when one does, and that decision is false.
pub fn score(labels: &[Label], decisions: &[Decision]) -> Score {
    let mut s = Score::default();
    let mut fired: HashSet<String> = HashSet::new();
    for d in decisions {
        for k in key_of(&d.rule, d.token_id.as_deref(), d.subject.as_deref()) {
            fired.insert(k);
        }
    }
    let mut labelled: HashSet<String> = HashSet::new();
    let mut decoys: HashSet<String> = HashSet::new();
    for l in labels {
        let keys = key_of(&l.rule, l.token_id.as_deref(), l.subject.as_deref());
        let k = if l.token_id.is_some() { &keys[0] } else { &keys[1] };
        if !l.must_fire() {
            decoys.insert(k.clone());
            let e = s.decoys.entry(l.rule.clone()).or_default();
            if fired.contains(k) {
                e.1 += 1;
                s.decoys_fired.push(l.clone());
            } else {
                e.0 += 1;
            }
            continue;
        }
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
            if !keys.iter().any(|k| decoys.contains(k)) {
                s.false_positives.push(d.clone());
            }
        }
    }
    s
}

/// Why the demo could not run. Everything it needs is built in, so most of these are a
/// port or a Redis the `--metrics-addr` or `--redis` flag named.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the built-in rules: {0}")]
    Rules(#[from] tokenwatch_core::rules::LoadErrors),
    #[error("the generator's keys: {0}")]
    Keys(#[from] tokenwatch_core::verify::jwks::JwksError),
    /// The pipeline's settings: a format that cannot read lines.
    #[error(transparent)]
    Pipeline(#[from] tokenwatch_core::input::FormatError),
    #[error("mock Kafka cluster: {0}")]
    MockKafka(#[source] Box<rdkafka::error::KafkaError>),
    #[error("metrics listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("--redis: {0}")]
    Redis(#[from] crate::sinks::redis::RedisOpError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error("the demo consumer did not join its group within 30 s")]
    NotJoined,
    #[error("the traffic producer: {0}")]
    Producer(#[from] tokenwatch_gen::kafka::ProduceError),
    #[error("the traffic producer panicked")]
    ProducerPanicked,
    #[error("service task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The verifier that trusts exactly the generator's public keys for `seed`, each for its own
/// issuer (`[verify] issuers`, [`tokenwatch_gen::issuer_jwks`]): generated tokens are
/// `verified`, forged decoys not, and tokens of any other issuer are unchecked.
pub fn generator_verifier(
    seed: u64,
) -> Result<std::sync::Arc<tokenwatch_core::verify::Verifier>, tokenwatch_core::verify::jwks::JwksError> {
    let issuers = tokenwatch_gen::issuer_jwks(seed);
    tokenwatch_core::verify::Verifier::from_issuer_documents("<the generator's keys>", &issuers)
        .map(std::sync::Arc::new)
}

/// tokenwatch configured for the deployment the generated traffic comes from: the generator's
/// keys per issuer ([`generator_verifier`]) and its posture ([`GenConfig::posture`]: issuers,
/// the API's audience and protected prefix, the maximum key age), everything else as by
/// default. The demo, [`run_generated`] and the tests build their pipelines from this one.
pub fn generator_deployment(cfg: &GenConfig) -> Result<PipelineConfig, tokenwatch_core::verify::jwks::JwksError> {
    Ok(PipelineConfig {
        verify: Some(generator_verifier(cfg.seed)?),
        posture: Arc::new(cfg.posture()),
        ..PipelineConfig::default()
    })
}

/// The engine's defaults, without the aggregation of unauthenticated critical decisions: the
/// demo scores every labelled attack by its own decision, while aggregation would fold the
/// generator's `alg: none` attacks from one attacker network into one decision
/// (`[engine] aggregate_window`, on by default in `run` and `replay`).
fn scoring_engine() -> tokenwatch_core::engine::EngineConfig {
    tokenwatch_core::engine::EngineConfig {
        aggregate_window_ms: 0,
        ..Default::default()
    }
}

/// Runs generated traffic through the default rules, geolocating with the database the
/// traffic was built for and verifying with the generator's keys; returns the decisions, the
/// labels and the number of lines.
pub fn run_generated(
    cfg: GenConfig,
    mut on_decision: impl FnMut(&Decision),
) -> Result<(Vec<Decision>, Vec<Label>, u64, Pipeline), DemoError> {
    let rules = tokenwatch_core::defaults::rules()?;
    let geo = cfg.networks.geo_db();
    let pcfg = PipelineConfig {
        engine: scoring_engine(),
        ..generator_deployment(&cfg)?
    };
    let mut pipeline = Pipeline::new(rules, Some(geo), pcfg).map_err(DemoError::Pipeline)?;
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

/// What the live demo needs.
pub struct DemoOptions {
    pub traffic: GenConfig,
    /// Event time runs this many times faster than the wall clock.
    pub speedup: f64,
    pub duration: Duration,
    /// Revocations to this Redis instead of memory.
    pub redis: Option<String>,
    pub metrics_addr: String,
    /// Redraw a full-screen view (a terminal) instead of printing status lines.
    pub full_screen: bool,
    /// Verifies the generated tokens' signatures (`--jwks`); `None`: with the generator's own
    /// public keys, as a gateway's JWKS would.
    pub verify: Option<Arc<tokenwatch_core::verify::Verifier>>,
}

/// The demo's one topic. One partition: event time is accelerated, so partitions drifting
/// apart by a fraction of a second would already exceed the engine's 60 s of allowed lateness.
const TOPIC: &str = "gateway-logs";

/// The live demo: the generator feeds librdkafka's in-process mock cluster in (accelerated)
/// real time, and the real service ([`Service::builder`], as `tokenwatch run` builds it, with
/// the built-in rules and revocations in memory unless `--redis`) consumes it, decides,
/// revokes and serves /metrics.
pub async fn live(opts: DemoOptions, w: &mut (dyn Write + Send)) -> Result<Score, DemoError> {
    let mock = MockCluster::new(1).map_err(|e| DemoError::MockKafka(Box::new(e)))?;
    mock.create_topic(TOPIC, 1, 1)
        .map_err(|e| DemoError::MockKafka(Box::new(e)))?;
    let brokers = mock.bootstrap_servers();
    let listener = metrics_listener(&opts.metrics_addr, w).await?;
    let metrics_url = format!("http://{}/metrics", listener.local_addr().map_err(DemoError::Listener)?);
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let service = demo_service(&opts, &brokers, listener, decisions.clone(), w).await?;
    let metrics = service.metrics();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(service.run(stop_rx));

    // The mock cluster keeps only ~5 MiB per partition: start producing once the consumer is
    // in its group, so it reads in step instead of finding the oldest lines dropped.
    let joined = Instant::now();
    while metrics.assigned_partitions.get() == 0 {
        if task.is_finished() {
            // It could not start (the mock cluster refused it): say why.
            task.await??;
            return Err(DemoError::NotJoined);
        }
        if joined.elapsed() > Duration::from_secs(30) {
            return Err(DemoError::NotJoined);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer = start_traffic(&opts, &brokers, stop_producing.clone());
    let view = View {
        opts: &opts,
        metrics: &metrics,
        decisions: &decisions,
        metrics_url: &metrics_url,
    };
    view.until_done(w).await;
    stop_producing.store(true, Ordering::Relaxed);
    let produced = producer
        .join()
        .map_err(|_| DemoError::ProducerPanicked)?
        .map_err(DemoError::Producer)?;
    // Let the service read what was produced before it stops.
    let drain_until = Instant::now() + Duration::from_secs(15);
    while seen(&metrics) < produced.lines && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let summary = task.await??;
    drop(mock);
    let all = decisions.lock().map(|d| d.clone()).unwrap_or_default();
    let sc = score(&produced.labels, &all);
    if opts.full_screen {
        let _ = write!(w, "\x1b[2J\x1b[H");
    }
    let store = if opts.redis.is_some() {
        " in Redis"
    } else {
        " in memory"
    };
    let _ = writeln!(
        w,
        "tokenwatch demo: {} lines of generated gateway traffic through Kafka (in-process), {} read, {} decisions, {} new revocations{store}",
        produced.lines,
        summary.stats.lines,
        all.len(),
        summary.revocations_written,
    );
    write_report(w, &all, &sc);
    let _ = writeln!(
        w,
        "\nrecall {:.3}, precision {:.3}; metrics were at {metrics_url}",
        sc.recall(),
        sc.precision()
    );
    Ok(sc)
}

/// Lines the service has read (decoded and skipped).
fn seen(metrics: &Metrics) -> u64 {
    metrics.events.with_label_values(&["decoded"]).get() + metrics.events.with_label_values(&["skipped"]).get()
}

/// The metrics listener on `addr`, or on a free port when `addr` is taken.
async fn metrics_listener(addr: &str, w: &mut (dyn Write + Send)) -> Result<tokio::net::TcpListener, DemoError> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) => {
            let _ = writeln!(w, "metrics address {addr} is not free ({e}); using a free port instead");
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(DemoError::Listener)
        }
    }
}

/// The service `tokenwatch run` would build for the mock cluster, with the built-in rules,
/// the traffic's GeoIP database, the generator's keys (or `--jwks`), decisions kept in
/// `decisions`, and revocations in memory (or in `--redis`, which must answer now).
async fn demo_service(
    opts: &DemoOptions,
    brokers: &str,
    listener: tokio::net::TcpListener,
    decisions: Arc<Mutex<Vec<Decision>>>,
    w: &mut (dyn Write + Send),
) -> Result<Service, DemoError> {
    let mut pipeline = PipelineConfig {
        engine: scoring_engine(),
        ..generator_deployment(&opts.traffic)?
    };
    if let Some(v) = &opts.verify {
        pipeline.verify = Some(v.clone());
    }
    if let Some(warning) = pipeline.evidence_warning() {
        let _ = writeln!(w, "warning: {warning}");
    }
    // `tokenwatch run`'s defaults, from the one place they are written.
    let defaults = crate::config::Config::default();
    let redis = RedisConfig {
        urls: opts.redis.iter().cloned().collect(),
        cluster: false,
        key_prefix: defaults.key_prefix.clone(),
        policy: defaults.revocation_policy(),
        stream_maxlen: defaults.revocation.stream_maxlen,
        response_timeout: defaults.revocation.redis_timeout,
        ca_file: None,
    };
    if opts.redis.is_some() {
        // Fail now, naming the URL, rather than retry while the demo waits.
        RevocationWriter::connect(redis.clone()).await?;
    }
    let cfg = ServiceConfig {
        brokers: brokers.to_string(),
        topics: vec![TOPIC.into()],
        group: "tokenwatch-demo".into(),
        kafka: Default::default(),
        rules_dir: PathBuf::new(),
        geoip: None,
        pipeline,
        max_line: tokenwatch_core::input::lines::DEFAULT_MAX_LINE,
        redis,
        batch_max: defaults.batch.max_messages.get(),
        batch_wait: defaults.batch.max_wait,
        shutdown_timeout: Duration::from_secs(10),
        alerts: AlertTarget::Memory(decisions),
        dead_letter: None,
        dead_letter_topic: None,
        alerts_topic: None,
        event_time: tokenwatch_core::eventtime::EventTimeConfig::default(),
        checkpoint_interval: None,
        shuffle: crate::service::ShuffleConfig::default(),
    };
    let mut builder = Service::builder(cfg)
        .metrics_listener(listener)
        .rules(tokenwatch_core::defaults::rules()?)
        .geo(opts.traffic.networks.geo_db());
    if opts.redis.is_none() {
        builder = builder.memory_store(Arc::new(Mutex::new(MemoryStore::default())));
    }
    Ok(builder.build().await?)
}

/// The traffic, started now, in accelerated real time, on a thread of its own.
fn start_traffic(
    opts: &DemoOptions,
    brokers: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<tokenwatch_gen::kafka::Produced, tokenwatch_gen::kafka::ProduceError>> {
    let mut traffic = opts.traffic.clone();
    traffic.start_ms = crate::service::now_ms();
    traffic.events = None;
    traffic.duration_secs = Some((opts.duration.as_secs_f64() * opts.speedup) as u64 + 1);
    let pace = tokenwatch_gen::kafka::Pace::Realtime { speedup: opts.speedup };
    let brokers = brokers.to_string();
    std::thread::spawn(move || {
        tokenwatch_gen::kafka::produce(Generator::new(traffic), &brokers, TOPIC, pace, &[], &stop)
    })
}

/// The live view, redrawn every second until the demo's duration is over or Ctrl-C.
struct View<'a> {
    opts: &'a DemoOptions,
    metrics: &'a Metrics,
    decisions: &'a Mutex<Vec<Decision>>,
    metrics_url: &'a str,
}

impl View<'_> {
    async fn until_done(&self, w: &mut (dyn Write + Send)) {
        let start = Instant::now();
        let mut last_events = 0u64;
        loop {
            let mut interrupted = false;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => { interrupted = true; }
            }
            let events = seen(self.metrics);
            let view = render_view(
                start.elapsed(),
                self.opts.duration,
                events,
                events.saturating_sub(last_events),
                &self.decisions.lock().map(|d| d.clone()).unwrap_or_default(),
                self.metrics_url,
                self.opts.speedup,
            );
            last_events = events;
            if self.opts.full_screen {
                let _ = write!(w, "\x1b[2J\x1b[H{view}");
            } else if start.elapsed().as_secs() % 5 == 0 {
                let first = view.lines().nth(1).unwrap_or("");
                let _ = writeln!(w, "{first}");
            }
            let _ = w.flush();
            if interrupted || start.elapsed() >= self.opts.duration {
                return;
            }
        }
    }
}

/// What was revoked, and the score against the generator's labels.
fn write_report(w: &mut (dyn Write + Send), all: &[Decision], sc: &Score) {
    let revoked: Vec<&Decision> = all
        .iter()
        .filter(|d| !d.shadow && d.action != tokenwatch_core::rules::Action::Alert)
        .collect();
    let _ = writeln!(w, "\nrevoked ({}):", revoked.len());
    for d in revoked.iter().take(12) {
        let who = match d.action {
            tokenwatch_core::rules::Action::RevokeSubject => format!("subject {}", d.subject.as_deref().unwrap_or("?")),
            _ => format!("token {}", d.token_id.as_deref().unwrap_or("?")),
        };
        let _ = writeln!(w, "  {:<24} {who}", d.rule);
    }
    if revoked.len() > 12 {
        let _ = writeln!(w, "  ... and {} more", revoked.len() - 12);
    }
    let _ = writeln!(w, "\ncompared with the attacks the generator injected:");
    let _ = writeln!(w, "{:<26} {:>9} {:>7} {:>6}", "rule", "detected", "missed", "false");
    for (rule, (d, m, f)) in &sc.per_rule {
        let _ = writeln!(w, "{rule:<26} {d:>9} {m:>7} {f:>6}");
    }
    for l in sc.missed.iter().take(5) {
        let _ = writeln!(
            w,
            "  missed: {} {} (fired at {})",
            l.rule,
            l.key().unwrap_or("?"),
            tokenwatch_core::decision::fmt_ts(l.ts)
        );
    }
    for d in sc.false_positives.iter().take(5) {
        let _ = writeln!(
            w,
            "  false: {} {} — {}",
            d.rule,
            d.token_id.as_deref().unwrap_or("?"),
            d.reason
        );
    }
    write_decoys(w, sc);
}

/// The forged decoys: each must be "not fired"; one that fired is a forged token revoking
/// (or alerting on) a victim.
fn write_decoys(w: &mut (dyn Write + Send), sc: &Score) {
    if sc.decoys.is_empty() {
        return;
    }
    let _ = writeln!(w, "\nforged decoys (bad signatures, alg none), which must not fire:");
    let _ = writeln!(w, "{:<26} {:>10} {:>14}", "rule", "not fired", "fired (false)");
    for (rule, (quiet, fired)) in &sc.decoys {
        let _ = writeln!(w, "{rule:<26} {quiet:>10} {fired:>14}");
    }
    for l in sc.decoys_fired.iter().take(5) {
        let _ = writeln!(
            w,
            "  fired on a decoy: {} {} ({}, at {})",
            l.rule,
            l.key().unwrap_or("?"),
            l.decoy.as_deref().unwrap_or("decoy"),
            tokenwatch_core::decision::fmt_ts(l.ts)
        );
    }
}

fn render_view(
    elapsed: Duration,
    total: Duration,
    events: u64,
    per_sec: u64,
    decisions: &[Decision],
    metrics_url: &str,
    speedup: f64,
) -> String {
    let mut by_rule: BTreeMap<&str, u64> = BTreeMap::new();
    for d in decisions {
        *by_rule.entry(&d.rule).or_default() += 1;
    }
    let mut s = format!(
        "tokenwatch demo  {:>3}s / {}s   event time x{speedup:.0}   Ctrl-C ends early\n",
        elapsed.as_secs(),
        total.as_secs()
    );
    s.push_str(&format!(
        "events {events}  ({per_sec}/s)   decisions {}   metrics {metrics_url}\n\n",
        decisions.len()
    ));
    s.push_str(&format!("{:<26} {:>9}\n", "rule", "decisions"));
    for (r, n) in &by_rule {
        s.push_str(&format!("{r:<26} {n:>9}\n"));
    }
    s.push_str("\nlatest decisions\n");
    for d in decisions.iter().rev().take(8) {
        let reason: String = d.reason.chars().take(90).collect();
        s.push_str(&format!(
            "  {} {:<24} {:<14} {}\n",
            tokenwatch_core::decision::fmt_ts(d.ts).get(11..19).unwrap_or(""),
            d.rule,
            d.action.as_str(),
            reason
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwatch_core::rules::{Action, Severity};
    use tokenwatch_gen::Expect;

    fn label(rule: &str, token_id: &str, expect: Expect) -> Label {
        Label {
            rule: rule.into(),
            token_id: Some(token_id.into()),
            subject: Some("https://idp.example.com|user-7".into()),
            ts: 1,
            expect,
            decoy: (expect == Expect::Never).then(|| "forged-replay".into()),
        }
    }

    fn decision(rule: &str, token_id: &str) -> Decision {
        Decision {
            ts: 1,
            rule: rule.into(),
            severity: Severity::High,
            action: Action::RevokeToken,
            token_id: Some(token_id.into()),
            subject: Some("https://idp.example.com|user-7".into()),
            revocation_key: None,
            iss: None,
            sub: None,
            client_ip: None,
            expires_at: None,
            not_before: None,
            shadow: false,
            reason: String::new(),
            evidence: serde_json::Value::Null,
        }
    }

    /// A decoy whose rule fired is "fired (false)": false in its rule's row and in the
    /// precision, listed apart from the decisions no label explains; one that did not fire
    /// is "not fired" and counts for nothing else.
    #[test]
    fn decoys_are_scored_not_fired_or_fired_false() {
        let labels = [
            label("token-replay", "attack", Expect::Fire),
            label("token-replay", "victim-a", Expect::Never),
            label("token-replay", "victim-b", Expect::Never),
            label("revoked-token-used", "victim-b", Expect::Never),
        ];
        let decisions = [
            decision("token-replay", "attack"),
            decision("token-replay", "victim-a"),
            decision("token-in-url", "nobody"),
        ];
        let s = score(&labels, &decisions);
        assert_eq!(s.per_rule["token-replay"], (1, 0, 1));
        assert_eq!(s.per_rule["token-in-url"], (0, 0, 1));
        assert_eq!(s.decoys["token-replay"], (1, 1));
        assert_eq!(s.decoys["revoked-token-used"], (1, 0));
        assert_eq!(s.decoys_fired, vec![labels[1].clone()]);
        assert_eq!(s.false_positives.len(), 1);
        assert_eq!(&*s.false_positives[0].rule, "token-in-url");
        assert_eq!((s.recall(), s.precision()), (1.0, 1.0 / 3.0));

        let quiet = score(&labels, &decisions[..1]);
        assert!(quiet.decoys_fired.is_empty() && quiet.false_positives.is_empty());
        assert_eq!(quiet.decoys["token-replay"], (2, 0));
        assert_eq!(quiet.precision(), 1.0);

        let mut out = Vec::new();
        write_decoys(&mut out, &s);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("token-replay                        1              1"),
            "{text}"
        );
        assert!(
            text.contains("fired on a decoy: token-replay victim-a (forged-replay"),
            "{text}"
        );
    }
}
