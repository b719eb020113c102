//! `tokenwatch run`: the long-lived service. Kafka in, the same pipeline as `replay`,
//! revocations to Redis, every decision to the alert outputs, metrics over HTTP.
//!
//! The loop works in batches: it reads messages until a batch is full or its wait is over,
//! runs their lines through the pipeline, then performs the batch's side effects (alert lines
//! flushed, revocations acknowledged by Redis) and only then commits the batch's offsets.
//! So a crash loses nothing (uncommitted messages are read again, and the Redis script makes
//! their writes idempotent), and a slow or absent Redis stops consumption instead of growing
//! memory: nothing is read while a batch waits for Redis, and nothing past an unwritten
//! revocation is committed.
//!
//! A failed alert delivery (the file, or the alerts topic) is retried the same way as a Redis
//! write: with backoff, reading nothing new and committing nothing past the batch meanwhile.
//! Readiness does not wait for a write to fail: a health check PINGs Redis every
//! [`REDIS_HEALTH_INTERVAL`], beside the loop, and keeps `/readyz` and `tokenwatch_redis_up`
//! current even when nothing is being revoked.
//!
//! Rules hot-reload between batches, when a file under the rule directory changes or on
//! SIGHUP; an invalid edit keeps the running rules. SIGTERM/SIGINT end the loop after the
//! current batch; the loop then commits, synchronously, the offsets of every batch it finished.
//! If the current batch's side effects cannot finish within the shutdown timeout (Redis or the
//! alerts topic down), the loop gives up on that batch, commits only the batches before it, and
//! `run` returns an error: the `tokenwatch run` process exits with status 2, and the next run
//! reads the unfinished batch again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use tokio::sync::watch;

use crate::checkpoint::{CheckpointStore, Checkpointing};
use crate::metrics::Metrics;
use crate::sinks::alerts::AlertSink;
use crate::sinks::dead_letter::DeadLetters;
use crate::sinks::redis::{ConnectError, HealthProbe, Kind, Revocation, RevocationWriter, WriteError};
use crate::sinks::RevocationStore;
use crate::source::kafka::{self, Offsets};
use tokenwatch_core::decision::Decision;
use tokenwatch_core::eventtime::{EventTimeConfig, Sequencer};
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::input::lines::{Line, LineReader};
use tokenwatch_core::pipeline::HeldLine;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig, Stats};
use tokenwatch_core::rules::RuleSet;

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
}

/// What a run did, for the final log line and the tests.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub stats: Stats,
    pub revocations_written: u64,
    pub batches: u64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fingerprint of the rule directory: names, sizes and modification times.
fn rules_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
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
fn publish_rules(set: &RuleSet, metrics: &Metrics) {
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

/// Publishes the pipeline's counters as metric increments since the last call.
struct MetricSync {
    last: Stats,
}

impl MetricSync {
    fn sync(&mut self, p: &Pipeline, m: &Metrics) {
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
        for (f, c) in s.by_format.iter() {
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
        let es = p.engine().stats();
        m.tracked_keys.set(p.engine().tracked_keys() as i64);
        let ev = es.evictions.saturating_sub(m.evicted_keys.get());
        m.evicted_keys.inc_by(ev);
        let late = es.late_events.saturating_sub(m.late_events.get());
        m.late_events.inc_by(late);
        for (rule, at) in p.engine().tripped() {
            m.rule_tripped.with_label_values(&[rule]).set(i64::from(at.is_some()));
        }
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
}

/// Runs until `shutdown` turns true. `reload_now` is set by SIGHUP.
pub async fn run(
    cfg: ServiceConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    mut reload_now: watch::Receiver<u64>,
) -> Result<RunSummary, String> {
    let rules = tokenwatch_core::rules::load_dir(&cfg.rules_dir)
        .map(Arc::new)
        .map_err(|e| format!("invalid rules:\n{e}"))?;
    publish_rules(&rules, &metrics);
    let geo = cfg
        .geoip
        .as_deref()
        .map(GeoDb::open)
        .transpose()
        .map_err(|e| e.to_string())?;
    if let Some(w) = cfg.pipeline.evidence_warning() {
        tracing::warn!("{w}");
    }
    let mut pipeline = Pipeline::new(rules, geo, cfg.pipeline.clone()).map_err(|e| e.to_string())?;

    let Some(mut writer) = connect_redis(&cfg, &metrics, &mut shutdown).await? else {
        return Ok(RunSummary::default());
    };
    let _health = AbortOnDrop(tokio::spawn(watch_redis(
        writer.health_probe(),
        metrics.clone(),
        cfg.redis.response_timeout,
    )));
    let dead = Arc::new(std::sync::Mutex::new(match &cfg.dead_letter {
        Some(path) => DeadLetters::file(path)?,
        None => DeadLetters::stderr(),
    }));
    tracing::info!(
        output = dead.lock().map(|d| d.name().to_string()).unwrap_or_default(),
        "dead letters"
    );
    let mut checkpoints = match cfg.checkpoint_interval {
        None => None,
        Some(every) => {
            let prefix = &cfg.redis.key_prefix;
            let store = CheckpointStore::new(prefix, &cfg.group);
            Some(Checkpointing::restore(store, every, &mut writer, pipeline.engine_mut(), &metrics).await?)
        }
    };
    let start_at = checkpoints
        .as_ref()
        .map(Checkpointing::start_offsets)
        .unwrap_or_default();
    let (consumer, assigned, committed) = kafka::connect_at(
        &cfg.brokers,
        &cfg.group,
        &cfg.topics,
        &cfg.kafka,
        metrics.clone(),
        start_at,
    )?;
    if let Some(c) = &mut checkpoints {
        c.set_committed(committed);
    }
    let mut store = RevocationStore::Redis(writer.with_dead_letters(dead.clone()));
    let alerts_producer = match &cfg.alerts_topic {
        None => None,
        Some(topic) => {
            let mut pc = rdkafka::ClientConfig::new();
            pc.set("bootstrap.servers", &cfg.brokers);
            // A record the topic cannot take fails after 30 s (librdkafka: 5 min), so the
            // failure is counted and logged, and the loop retries it.
            pc.set("message.timeout.ms", "30000");
            for (k, v) in &cfg.kafka {
                pc.set(k, v);
            }
            let p: rdkafka::producer::FutureProducer = pc
                .create()
                .map_err(|e| format!("kafka producer for alerts_topic {topic}: {e}"))?;
            Some((p, topic.clone()))
        }
    };
    let mut alerts = AlertSink::new(&cfg.alerts, alerts_producer)?.with_dead_letters(dead);
    run_loop(
        &cfg,
        &metrics,
        &mut pipeline,
        &mut store,
        &consumer,
        &assigned,
        &mut alerts,
        &mut shutdown,
        &mut reload_now,
        checkpoints.as_mut(),
    )
    .await
}

/// Connects to Redis, retrying with backoff while it does not answer, until shutdown is
/// asked. A setting that cannot work (a bad URL or CA file, a refused password) fails at once.
pub async fn connect_redis(
    cfg: &ServiceConfig,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<RevocationWriter>, String> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match RevocationWriter::try_connect(cfg.redis.clone()).await {
            Ok(w) => {
                metrics.redis_up.set(1);
                metrics.ready_redis.store(true, Ordering::Relaxed);
                return Ok(Some(w));
            }
            Err(ConnectError::Config(e)) => return Err(e),
            Err(ConnectError::Unavailable(e)) => {
                metrics.redis_errors.inc();
                metrics.redis_up.set(0);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis unreachable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often the health check PINGs Redis.
pub const REDIS_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Aborts a background task when the service stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// PINGs Redis every [`REDIS_HEALTH_INTERVAL`] on its own handle, so that `/readyz` and
/// `tokenwatch_redis_up` follow Redis even while nothing is written, and without ever
/// holding up the consume loop. Logs only the changes.
async fn watch_redis(mut probe: HealthProbe, metrics: Arc<Metrics>, timeout: Duration) {
    let mut tick = tokio::time::interval(REDIS_HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tick.tick().await;
        let r = match tokio::time::timeout(timeout, probe.ping()).await {
            Ok(r) => r,
            Err(_) => Err(format!("redis ping: no answer within {} ms", timeout.as_millis())),
        };
        let up = r.is_ok();
        metrics.redis_up.set(i64::from(up));
        metrics.ready_redis.store(up, Ordering::Relaxed);
        match r {
            Ok(()) if !was_up => tracing::info!("redis answers again"),
            Err(e) if was_up => tracing::warn!(error = %e, "redis health check failed; not ready"),
            _ => {}
        }
        was_up = up;
    }
}

/// The shutdown request as the loop's retries see it: once it is asked, the work in flight
/// has the shutdown timeout, counted from the moment the loop first sees the request.
struct Shutdown<'a> {
    rx: &'a mut watch::Receiver<bool>,
    since: Option<Instant>,
    timeout: Duration,
}

impl Shutdown<'_> {
    fn asked(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown was asked and the shutdown timeout has passed.
    async fn expired(&mut self) {
        while !*self.rx.borrow() {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        tokio::time::sleep_until((since + self.timeout).into()).await;
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run_loop(
    cfg: &ServiceConfig,
    metrics: &Arc<Metrics>,
    pipeline: &mut Pipeline,
    writer: &mut RevocationStore,
    consumer: &kafka::Source,
    assigned: &kafka::AssignmentSet,
    alerts: &mut AlertSink,
    shutdown: &mut watch::Receiver<bool>,
    reload_now: &mut watch::Receiver<u64>,
    mut checkpoints: Option<&mut Checkpointing>,
) -> Result<RunSummary, String> {
    let mut summary = RunSummary::default();
    let mut sync = MetricSync { last: Stats::default() };
    let mut decisions: Vec<Decision> = Vec::new();
    let mut offsets = Offsets::default();
    // The offsets of every batch whose side effects are done: the final commit's content.
    let mut finished = Offsets::default();
    // Lines read and decoded wait here for their turn in event time.
    let mut order: Sequencer<HeldLine> = Sequencer::new(cfg.event_time);
    let mut clock = ReadingClock::new();
    if let Some(c) = checkpoints.as_deref_mut() {
        c.hand_over(&mut order);
    }
    let mut fingerprint = rules_fingerprint(&cfg.rules_dir);
    let mut tripped_seen = HashMap::new();
    let mut last_check = Instant::now();
    let mut stop = Shutdown {
        rx: shutdown,
        since: None,
        timeout: cfg.shutdown_timeout,
    };
    let outcome = loop {
        if stop.asked() {
            break Ok(());
        }
        // Hot reload, between batches.
        let hup = reload_now.has_changed().unwrap_or(false);
        if hup || last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let fp = rules_fingerprint(&cfg.rules_dir);
            if hup || fp != fingerprint {
                reload_now.borrow_and_update();
                fingerprint = fp;
                if let Some(set) = reload(&cfg.rules_dir, metrics) {
                    pipeline.replace_rules(set);
                }
            }
            rearm_tripped(pipeline, writer, &mut tripped_seen).await;
        }

        follow_assignment(&mut order, assigned, clock.now());
        let n = fill(cfg, consumer, pipeline, &mut order, &mut clock, &mut stop).await;
        let released = release(&mut order, pipeline, &mut decisions, consumer, metrics, clock.now());
        if n == 0 && released == 0 && decisions.is_empty() {
            sync.sync(pipeline, metrics);
            continue;
        }

        // Side effects, then offsets.
        let now = now_ms();
        for d in &decisions {
            metrics
                .decisions
                .with_label_values(&[&d.rule, d.action.as_str(), d.severity.as_str()])
                .inc();
            metrics.decision_delay.observe(((now - d.ts) as f64 / 1000.0).max(0.0));
        }
        if let Err(e) = deliver_alerts(alerts, &decisions, metrics, &mut stop).await {
            break Err(e);
        }
        let mut unwritten = None;
        for d in &decisions {
            let Some(r) = Revocation::from_decision(d) else {
                continue;
            };
            match write_with_retry(writer, &r, metrics, &mut stop).await {
                Ok(new) => summary.revocations_written += u64::from(new),
                Err(e) => {
                    unwritten = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = unwritten {
            break Err(e);
        }
        decisions.clear();
        // Checkpoint before committing: a checkpoint never covers less than the committed
        // offsets' lines minus those it can rebuild quietly.
        if let (Some(c), RevocationStore::Redis(w)) = (checkpoints.as_deref_mut(), &mut *writer) {
            if c.due(&order) {
                c.save(&mut order, pipeline.engine(), w, metrics).await;
            }
        }
        for (topic, partition, next) in order.safe_offsets() {
            offsets.advance(topic, partition, next);
        }
        if let Err(e) = offsets.commit(consumer, assigned, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the batch will be read again");
        }
        finished.merge(&offsets);
        finished.retain_assigned(assigned);
        offsets.clear();
        summary.batches += 1;
        sync.sync(pipeline, metrics);
    };
    // The batches' commits were asynchronous and may not have reached the group (or failed):
    // commit every finished batch's offsets once more, and wait for it. Nothing of an
    // unfinished batch is in `finished`.
    match finished.commit(consumer, assigned, CommitMode::Sync) {
        Ok(partitions) => tracing::debug!(partitions, "final offset commit"),
        Err(e) => tracing::warn!(error = %e, "final offset commit failed; the last batches will be read again"),
    }
    // State is checkpointed only when every decision it holds was delivered.
    if let (Ok(()), Some(c), RevocationStore::Redis(w)) = (&outcome, checkpoints, &mut *writer) {
        c.save(&mut order, pipeline.engine(), w, metrics).await;
    }
    summary.stats = pipeline.stats.clone();
    outcome.map(|()| summary)
}

/// Re-arms the tripped rules that an operator asked to re-arm (`tokenwatch rearm RULE` writes
/// the request to Redis, where every instance sees it) after this instance saw them trip.
/// `seen` remembers, per tripped rule, the wall-clock second this instance first saw it tripped,
/// so an old request never re-arms a rule that trips again later.
async fn rearm_tripped(pipeline: &mut Pipeline, store: &mut RevocationStore, seen: &mut HashMap<Arc<str>, i64>) {
    let now_s = now_ms() / 1000;
    let tripped: Vec<Arc<str>> = pipeline
        .engine()
        .tripped()
        .filter(|(_, at)| at.is_some())
        .map(|(r, _)| r.clone())
        .collect();
    seen.retain(|r, _| tripped.contains(r));
    for r in &tripped {
        seen.entry(r.clone()).or_insert(now_s);
    }
    let RevocationStore::Redis(w) = store else { return };
    if tripped.is_empty() {
        return;
    }
    let requests = match w.rearm_requests().await {
        Ok(r) => r,
        Err(e) => return tracing::warn!(error = %e, "cannot read re-arm requests"),
    };
    for (rule, since) in seen.iter() {
        if requests.get(&**rule).is_some_and(|at| at >= since) && pipeline.rearm(rule) {
            tracing::warn!(rule = %rule, "rule re-armed by request: it enforces again");
        }
    }
}

/// The clock of event-time idleness: wall time spent reading, so that time the loop spends
/// on side effects (a stalled Redis, say) makes no partition look idle.
struct ReadingClock {
    base: Instant,
    spent: Duration,
    reading_since: Option<Instant>,
}

impl ReadingClock {
    fn new() -> Self {
        ReadingClock {
            base: Instant::now(),
            spent: Duration::ZERO,
            reading_since: None,
        }
    }

    fn resume(&mut self) {
        self.reading_since.get_or_insert_with(Instant::now);
    }

    fn pause(&mut self) {
        if let Some(t) = self.reading_since.take() {
            self.spent += t.elapsed();
        }
    }

    /// Reading time so far, as an instant (what [`Sequencer`] takes as `now`).
    fn now(&self) -> Instant {
        self.base + self.spent + self.reading_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Tracks the partitions librdkafka assigned: a new one holds event time back until it
/// delivers or goes idle; a revoked one stops holding it at once.
fn follow_assignment(order: &mut Sequencer<HeldLine>, assigned: &kafka::AssignmentSet, now: Instant) {
    let now_assigned = assigned.lock().map(|a| a.clone()).unwrap_or_default();
    let gone: Vec<(String, i32)> = order
        .assigned()
        .filter(|(t, p)| !now_assigned.contains(&(t.to_string(), *p)))
        .map(|(t, p)| (t.to_string(), p))
        .collect();
    for (t, p) in gone {
        order.revoke(&t, p);
    }
    for (t, p) in &now_assigned {
        order.assign(t, *p, now);
    }
}

/// Reads messages until a batch is full or its wait is over (or shutdown is asked), decoding
/// their lines into the event-time buffer. Returns the messages read.
async fn fill(
    cfg: &ServiceConfig,
    consumer: &kafka::Source,
    pipeline: &mut Pipeline,
    order: &mut Sequencer<HeldLine>,
    clock: &mut ReadingClock,
    stop: &mut Shutdown<'_>,
) -> usize {
    clock.resume();
    let n = fill_batch(cfg, consumer, pipeline, order, clock, stop).await;
    clock.pause();
    n
}

async fn fill_batch(
    cfg: &ServiceConfig,
    consumer: &kafka::Source,
    pipeline: &mut Pipeline,
    order: &mut Sequencer<HeldLine>,
    clock: &mut ReadingClock,
    stop: &mut Shutdown<'_>,
) -> usize {
    let mut n = 0usize;
    let start = Instant::now();
    loop {
        let wait = if n == 0 {
            Duration::from_millis(250)
        } else {
            cfg.batch_wait.saturating_sub(start.elapsed())
        };
        let msg = tokio::select! {
            m = tokio::time::timeout(wait, consumer.recv()) => m,
            _ = stop.rx.changed() => return n,
        };
        let m = match msg {
            Err(_) => return n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka receive error");
                return n;
            }
            Ok(Ok(m)) => m,
        };
        let now = clock.now();
        let source = order.assign(m.topic(), m.partition(), now);
        if let Some(payload) = m.payload() {
            hold_message(pipeline, order, (source, m.offset()), payload, cfg.max_line, now);
        }
        order.read(source, m.offset(), now);
        n += 1;
        if n >= cfg.batch_max || start.elapsed() >= cfg.batch_wait {
            return n;
        }
    }
}

/// Decodes the lines of one message into the event-time buffer, numbered in the message; a
/// line that a restored checkpoint already holds is passed over.
fn hold_message(
    pipeline: &mut Pipeline,
    order: &mut Sequencer<HeldLine>,
    (source, offset): (usize, i64),
    payload: &[u8],
    max_line: usize,
    now: Instant,
) {
    let mut reader = LineReader::new(payload, max_line);
    let mut number = 0u32;
    while let Ok(Some(line)) = reader.next_line() {
        number += 1;
        if order.restored(source, offset, number) {
            continue;
        }
        match line {
            Line::Ok([]) => {}
            Line::Ok(l) => {
                if let Some(held) = pipeline.hold_line(l) {
                    order.push(source, offset, number, held.ts_ms(), held.tie(), held, now);
                }
            }
            Line::TooLong(_) => pipeline.line_too_long(),
        }
    }
}

/// Runs the engine over every line whose turn has come, then pauses the partitions that run
/// too far ahead and resumes those the slowest has caught up with. Returns the lines applied.
fn release(
    order: &mut Sequencer<HeldLine>,
    pipeline: &mut Pipeline,
    decisions: &mut Vec<Decision>,
    consumer: &kafka::Source,
    metrics: &Metrics,
    now: Instant,
) -> usize {
    let n = order.release(now, |line, quiet| {
        let before = decisions.len();
        pipeline.apply_held(&line, decisions);
        if quiet {
            // Decided and delivered before a restart: the line only rebuilds state.
            decisions.truncate(before);
        }
    });
    for t in order.skew(now) {
        if let Err(e) = kafka::pause(consumer, &t.topic, t.partition, t.pause) {
            tracing::warn!(error = %e, topic = %t.topic, partition = t.partition, "cannot pause or resume a partition");
        }
    }
    metrics.paused_partitions.set(order.paused() as i64);
    metrics.held_lines.set(order.len() as i64);
    metrics.held_lines_peak.set(order.peak() as i64);
    n
}

/// Delivers a batch's alert lines, retrying with backoff while the file or the alerts topic
/// fails. Gives up only when shutdown was asked and the shutdown timeout has passed.
async fn deliver_alerts(
    alerts: &mut AlertSink,
    decisions: &[Decision],
    metrics: &Metrics,
    stop: &mut Shutdown<'_>,
) -> Result<(), String> {
    let gave_up =
        || "shutdown timeout passed with alert lines undelivered; their offsets were not committed".to_string();
    let mut backoff = Backoff::new();
    loop {
        let r = tokio::select! {
            r = alerts.write(decisions) => r,
            _ = stop.expired() => return Err(gave_up()),
        };
        let dead = alerts.take_dead_lettered();
        if dead > 0 {
            metrics.dead_letters.with_label_values(&["alerts_topic"]).inc_by(dead);
            tracing::error!(
                records = dead,
                "alert records refused by the alerts topic for good; written to the dead-letter output"
            );
        }
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics.alert_errors.inc();
                tracing::warn!(error = %e, retry_in_ms = backoff.ms(), "alert lines not delivered; consumption paused");
            }
        }
        if !backoff.wait(stop).await {
            return Err(gave_up());
        }
    }
}

/// Writes one revocation, retrying with backoff while Redis is unavailable or refuses writes.
/// A revocation Redis rejects for good (WRONGTYPE, a script error) goes to the dead-letter
/// output and counts as done, so it cannot stall the stream. Gives up only when shutdown was
/// asked and the shutdown timeout has passed: then nothing of this batch is committed, and the
/// next run writes it.
async fn write_with_retry(
    writer: &mut RevocationStore,
    r: &Revocation,
    metrics: &Metrics,
    stop: &mut Shutdown<'_>,
) -> Result<bool, String> {
    let gave_up = || "shutdown timeout passed with revocations unwritten; their offsets were not committed".to_string();
    let mut backoff = Backoff::new();
    loop {
        let result = tokio::select! {
            w = writer.write(r, now_ms() / 1000) => w,
            _ = stop.expired() => return Err(gave_up()),
        };
        let refusal = match &result {
            Err(WriteError::Refused { code, .. }) => Some(code.clone()),
            _ => None,
        };
        metrics.redis_refused.set(i64::from(refusal.is_some()));
        if let Ok(mut r) = metrics.redis_refusal.lock() {
            *r = refusal;
        }
        match result {
            Ok(new) => {
                metrics.redis_up.set(1);
                metrics.ready_redis.store(true, Ordering::Relaxed);
                if new {
                    let kind = match r.kind {
                        Kind::Token => "token",
                        Kind::Subject => "subject",
                    };
                    metrics.revocations.with_label_values(&[kind]).inc();
                }
                return Ok(new);
            }
            Err(WriteError::Poison {
                msg,
                dead_lettered: true,
                ..
            }) => {
                metrics.redis_errors.inc();
                metrics.dead_letters.with_label_values(&["redis"]).inc();
                tracing::error!(error = %msg, rule = %r.rule, "revocation rejected by redis for good; written to the dead-letter output");
                return Ok(false);
            }
            Err(e) => {
                metrics.redis_errors.inc();
                if matches!(e, WriteError::Unavailable(_)) {
                    metrics.redis_up.set(0);
                }
                metrics.ready_redis.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, kind = e.kind(), rule = %r.rule, retry_in_ms = backoff.ms(), "revocation not written; consumption paused");
            }
        }
        if !backoff.wait(stop).await {
            return Err(gave_up());
        }
    }
}

/// The wait between attempts at a side effect that must not be skipped (a Redis write, an
/// alert delivery): 50 ms, doubling up to 2 s, cut short when the shutdown timeout passes.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(50))
    }

    fn ms(&self) -> u64 {
        self.0.as_millis() as u64
    }

    /// Waits before the next attempt; false when the shutdown timeout passed instead.
    async fn wait(&mut self, stop: &mut Shutdown<'_>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.0) => {}
            _ = stop.expired() => return false,
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        true
    }
}

/// The whole service as `tokenwatch run` starts it: metrics server, signals, the loop.
pub async fn serve(cfg: ServiceConfig, metrics_addr: std::net::SocketAddr) -> Result<RunSummary, String> {
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| format!("metrics_addr {metrics_addr}: cannot listen: {e}"))?;
    tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hup_tx, hup_rx) = watch::channel(0u64);
    spawn_signals(stop_tx, hup_tx)?;
    let timeout = cfg.shutdown_timeout;
    let mut stop_watch = stop_rx.clone();
    let run = run(cfg, metrics, stop_rx, hup_rx);
    tokio::pin!(run);
    // After a stop signal, the loop has `shutdown_timeout` to finish its batch.
    // (a second more than the loop's own, which gives up on its batch at `timeout`).
    let mut backstop = Shutdown {
        rx: &mut stop_watch,
        since: None,
        timeout: timeout + Duration::from_secs(1),
    };
    tokio::select! {
        r = &mut run => r,
        _ = backstop.expired() => Err("shutdown timeout passed before in-flight work finished".into()),
    }
}

fn spawn_signals(stop: watch::Sender<bool>, hup: watch::Sender<u64>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signal handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signal handler: {e}"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| format!("signal handler: {e}"))?;
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
        let mut sync = MetricSync { last: Stats::default() };
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
        let mut sync = MetricSync { last: Stats::default() };
        sync.sync(&p, &m);
        assert_eq!(m.authenticated_events.get(), 1);
        assert_eq!(m.attestation_mismatches.get(), 1);
        sync.sync(&p, &m);
        assert_eq!(m.authenticated_events.get(), 1, "increments, not totals");
        assert!(PipelineConfig::default().evidence_warning().is_some());
    }
}
