//! The one place the service is put together — for `tokenwatch run` ([`super::serve`]),
//! `tokenwatch demo` and the tests alike — in the spirit of mini-redis's
//! `server::run(listener, shutdown)`: the caller binds the metrics listener (tests bind
//! `127.0.0.1:0`, so no port is raced for) and owns the shutdown signal.
//!
//! [`ServiceBuilder::build`] does what can fail at once (rules, GeoIP, the alert and
//! dead-letter outputs, the metrics server); [`Service::run`] does what waits on other
//! systems (Redis, retried until shutdown; the checkpoint; the feed follower; Kafka) and then
//! runs the loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::consume::{BatchLimits, Consume, Parts};
use super::detect::{self, Detect};
use super::feed::{self, Undone};
use super::ingest::{self, Ingest};
use super::reload::{self, Fingerprint};
use super::retry::Shutdown;
use super::shuffle::{self, ShuffleConfig};
use super::{redis_health, RunSummary, ServiceConfig, ServiceError};
use crate::checkpoint::{CheckpointStore, Checkpointing};
use crate::config::Role;
use crate::metrics::Metrics;
use crate::sinks::alerts::AlertSink;
use crate::sinks::dead_letter::DeadLetters;
use crate::sinks::memory::MemoryStore;
use crate::sinks::RevocationStore;
use crate::source::kafka;
use tokenwatch_core::eventtime::Sequencer;
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::record::Router;
use tokenwatch_core::rules::{Field, RuleSet};

/// Options beyond the [`ServiceConfig`]; see [`Service::builder`].
pub struct ServiceBuilder {
    cfg: ServiceConfig,
    metrics: Option<Arc<Metrics>>,
    listener: Option<TcpListener>,
    rules: Option<Arc<RuleSet>>,
    geo: Option<GeoDb>,
    memory: Option<Arc<Mutex<MemoryStore>>>,
    reload_requests: Option<watch::Receiver<u64>>,
}

/// Where the rules come from: a directory, hot-reloaded; or a fixed set (the demo's
/// built-in rules), never reloaded.
enum Rules {
    /// The directory's fingerprint and the rules loaded from it.
    Dir(Fingerprint, Arc<RuleSet>),
    Fixed,
}

/// A service built and ready to [`run`](Service::run).
pub struct Service {
    cfg: ServiceConfig,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    pipeline: Pipeline,
    rules: Rules,
    /// The rules loaded at start (the detect stage builds an engine per partition from them).
    set: Arc<RuleSet>,
    reload_requests: Option<watch::Receiver<u64>>,
    memory: Option<Arc<Mutex<MemoryStore>>>,
    dead: Arc<Mutex<DeadLetters>>,
    alerts: AlertSink,
}

impl Service {
    /// Starts building the service that `cfg` describes.
    pub fn builder(cfg: ServiceConfig) -> ServiceBuilder {
        ServiceBuilder {
            cfg,
            metrics: None,
            listener: None,
            rules: None,
            geo: None,
            memory: None,
            reload_requests: None,
        }
    }

    /// The metrics the service updates (what `/metrics` and `/readyz` show).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Where `/metrics` is served, when a listener was given.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Runs the stages of the configured role ([`ShuffleConfig::role`]) until `shutdown`
    /// turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<RunSummary, ServiceError> {
        match self.cfg.shuffle.role {
            Role::Local => self.run_local(shutdown).await,
            Role::Ingest => {
                let partitions = internal_topics(&self.cfg, &self.set).await?;
                let mut stop = Shutdown::new(shutdown, self.cfg.shutdown_timeout);
                let ingest = ingest(&self.cfg, self.pipeline, &self.set, &self.metrics, partitions)?;
                ingest.run(&mut stop).await.map(|()| RunSummary::default())
            }
            Role::Detect | Role::Both => self.run_detect(shutdown).await,
        }
    }

    /// Connects to Redis (retrying while it does not answer, until `shutdown`), restores the
    /// checkpoint, joins the Kafka group, and runs the loop until `shutdown` turns true.
    /// Shutdown before Redis answered ends with an empty summary.
    async fn run_local(self, shutdown: watch::Receiver<bool>) -> Result<RunSummary, ServiceError> {
        let Service {
            cfg,
            metrics,
            mut pipeline,
            rules,
            reload_requests,
            memory,
            dead,
            alerts,
            ..
        } = self;
        let mut stop = Shutdown::new(shutdown, cfg.shutdown_timeout);
        // Checkpoints of the local loop and of the detect stage's tasks must not mix.
        let Some((mut store, _health)) = connect_store(memory, &cfg, &metrics, dead, &mut stop).await? else {
            return Ok(RunSummary::default());
        };
        let (undone, _feed) = follow_feed(&store);
        let mut checkpoints = match (cfg.checkpoint_interval, &mut store) {
            (Some(every), RevocationStore::Redis(w)) => {
                let at = CheckpointStore::new(&cfg.redis.key_prefix, &cfg.group);
                Some(Checkpointing::restore(at, every, w.handle(), pipeline.engine_mut(), metrics.clone()).await?)
            }
            _ => None,
        };
        let start_at = checkpoints
            .as_ref()
            .map(Checkpointing::start_offsets)
            .unwrap_or_default();
        let (source, assigned, committed) = kafka::connect_at(
            &cfg.brokers,
            &cfg.group,
            &cfg.topics,
            &gateway_consumer(&cfg),
            metrics.clone(),
            start_at,
        )?;
        if let Some(c) = &mut checkpoints {
            c.set_committed(committed);
        }
        let (rules, _reload) = watch_rules(&cfg, rules, &metrics, reload_requests);
        let parts = Parts {
            limits: batch_limits(&cfg),
            metrics,
            pipeline,
            store,
            source,
            assigned,
            alerts,
            checkpoints,
            rules,
            undone,
            order: Sequencer::new(cfg.event_time),
        };
        Consume::new(parts).run(&mut stop).await
    }

    /// The detect stage (and, for role `both`, the ingest stage beside it, on a task of its
    /// own): Redis, the internal topic's consumer group, an engine per partition.
    async fn run_detect(self, shutdown: watch::Receiver<bool>) -> Result<RunSummary, ServiceError> {
        let Service {
            cfg,
            metrics,
            pipeline,
            rules,
            set,
            reload_requests,
            memory,
            dead,
            alerts,
            ..
        } = self;
        let mut stop = Shutdown::new(shutdown.clone(), cfg.shutdown_timeout);
        let partitions = internal_topics(&cfg, &set).await?;
        let Some((store, _health)) = connect_store(memory, &cfg, &metrics, dead, &mut stop).await? else {
            return Ok(RunSummary::default());
        };
        let (undone, _feed) = follow_feed(&store);
        let (reloads, _reload) = watch_rules(&cfg, rules, &metrics, reload_requests);
        let ingest = match cfg.shuffle.role {
            Role::Both => {
                let mut ingest = ingest(&cfg, pipeline, &set, &metrics, partitions)?;
                if let Some(rx) = &reloads {
                    ingest.follow_rules(rx.clone());
                }
                let mut stop = Shutdown::new(shutdown, cfg.shutdown_timeout);
                Some(tokio::spawn(async move { ingest.run(&mut stop).await }))
            }
            _ => None,
        };
        let mut topics = vec![cfg.shuffle.events_topic.clone()];
        if partitions.by_key.is_some() {
            topics.push(cfg.shuffle.by_key_topic.clone());
        }
        let (source, assigned) = kafka::connect_paused(
            &cfg.brokers,
            &ShuffleConfig::detect_group(&cfg.group),
            &topics,
            &cfg.kafka,
            metrics.clone(),
        )?;
        let gateway = shuffle::gateway_partitions(&producer_config(&cfg), &cfg.topics)?;
        let parts = detect::Parts {
            gateway,
            limits: batch_limits(&cfg),
            metrics,
            source,
            assigned,
            topics,
            store,
            alerts,
            rules: set,
            reloads,
            undone,
            pipeline: per_partition(&cfg.pipeline, partitions.events + partitions.by_key.unwrap_or(0)),
            event_time: cfg.event_time,
            checkpoints: cfg.checkpoint_interval.map(|every| {
                (
                    cfg.redis.key_prefix.clone(),
                    ShuffleConfig::detect_group(&cfg.group),
                    every,
                )
            }),
        };
        let summary = Detect::new(parts).run(&mut stop).await;
        if let Some(task) = ingest {
            match task.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => tracing::error!(error = %e, "the ingest stage panicked"),
                Ok(Ok(())) => {}
            }
        }
        summary
    }
}

/// The batch bounds of every loop.
fn batch_limits(cfg: &ServiceConfig) -> BatchLimits {
    BatchLimits {
        max: cfg.batch_max,
        wait: cfg.batch_wait,
        max_line: cfg.max_line,
    }
}

/// Creates the internal topics when absent: `{prefix}events`, and `{prefix}events-by-key`
/// only when `rules` hold a rule keyed by a field that subject partitioning does not serve.
/// Returns their partition counts.
async fn internal_topics(cfg: &ServiceConfig, rules: &RuleSet) -> Result<ingest::Partitions, ServiceError> {
    let client = producer_config(cfg);
    let events = shuffle::ensure_topic(&client, &cfg.shuffle, &cfg.shuffle.events_topic).await?;
    tracing::info!(topic = %cfg.shuffle.events_topic, partitions = events, "internal topic");
    let by_key_fields = Router::by_key_fields(rules, &cfg.pipeline.posture);
    let by_key = if by_key_fields.is_empty() {
        None
    } else {
        let n = shuffle::ensure_topic(&client, &cfg.shuffle, &cfg.shuffle.by_key_topic).await?;
        let fields: Vec<String> = by_key_fields.iter().map(Field::name).collect();
        tracing::info!(topic = %cfg.shuffle.by_key_topic, partitions = n, fields = %fields.join(", "), "internal topic by key");
        Some(n)
    };
    Ok(ingest::Partitions { events, by_key })
}

/// The settings of one detect task's engine: `[engine] state_bytes`, `max_keys_per_rule` and
/// `token_cache_bytes` (its decoded tokens: [`tokenwatch_core::record::TokenMemo`]) bound the
/// process, and one instance may hold every internal partition's engine, so each gets its
/// share.
fn per_partition(cfg: &PipelineConfig, partitions: i32) -> PipelineConfig {
    let mut cfg = cfg.clone();
    let n = usize::try_from(partitions).unwrap_or(1).max(1);
    cfg.engine.state_bytes = (cfg.engine.state_bytes / n).max(1);
    cfg.engine.max_keys_per_rule = (cfg.engine.max_keys_per_rule / n).max(1);
    cfg.token_cache_bytes = (cfg.token_cache_bytes / n).max(1);
    cfg
}

/// The `[kafka]` settings of a gateway topic's consumer. Whether a partition is idle also
/// asks librdkafka's statistics whether messages of it wait unread
/// ([`kafka::Assigned::unread`]): unless set, they come twice per idle timeout.
fn gateway_consumer(cfg: &ServiceConfig) -> std::collections::BTreeMap<String, String> {
    let mut settings = cfg.kafka.clone();
    let every = (cfg.event_time.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    settings
        .entry("statistics.interval.ms".into())
        .or_insert_with(|| every.as_millis().to_string());
    settings
}

/// The ingest stage over the service's decoding `pipeline`, ready to run.
fn ingest(
    cfg: &ServiceConfig,
    pipeline: Pipeline,
    rules: &RuleSet,
    metrics: &Arc<Metrics>,
    partitions: ingest::Partitions,
) -> Result<Ingest, ServiceError> {
    let (source, assigned) = kafka::connect(
        &cfg.brokers,
        &cfg.group,
        &cfg.topics,
        &gateway_consumer(cfg),
        metrics.clone(),
    )?;
    let producer = ingest::producer(producer_config(cfg), &cfg.shuffle.events_topic)?;
    let parts = ingest::Parts {
        source,
        assigned,
        out: ingest::Out {
            pipeline,
            sender: ingest::Sender::new(producer),
            shuffle: cfg.shuffle.clone(),
            partitions,
            decode_threads: cfg.shuffle.decode_threads,
            router: Router::new(
                rules,
                cfg.pipeline.posture.clone(),
                partitions.events,
                partitions.by_key,
            ),
            limits: batch_limits(cfg),
            metrics: metrics.clone(),
        },
        idle_timeout: cfg.event_time.idle_timeout,
        max_skew_ms: cfg.event_time.max_skew_ms,
    };
    Ingest::new(parts)
}

/// The rule reloads, when the rules come from a directory: a receiver, and the task that
/// watches the directory (stopped when the guard drops).
fn watch_rules(
    cfg: &ServiceConfig,
    rules: Rules,
    metrics: &Arc<Metrics>,
    requests: Option<watch::Receiver<u64>>,
) -> (Option<watch::Receiver<Arc<RuleSet>>>, Option<AbortOnDrop>) {
    match rules {
        Rules::Fixed => (None, None),
        Rules::Dir(seen, loaded) => {
            let (tx, rx) = watch::channel(loaded);
            let task = reload::watch_rules(cfg.rules_dir.clone(), seen, metrics.clone(), requests, tx);
            (Some(rx), Some(AbortOnDrop(tokio::spawn(task))))
        }
    }
}

/// With Redis, the task that follows the feed for `unrevoke` entries ([`super::feed`]), and
/// the channel on which it hands them to the loop.
fn follow_feed(store: &RevocationStore) -> (Option<mpsc::Receiver<Undone>>, Option<AbortOnDrop>) {
    let RevocationStore::Redis(w) = store else {
        return (None, None);
    };
    let (tx, rx) = mpsc::channel(feed::CHANNEL);
    let task = tokio::spawn(feed::follow(w.config().clone(), tx));
    (Some(rx), Some(AbortOnDrop(task)))
}

/// The revocation store: memory, or Redis (with its health check, stopped when the returned
/// guard drops). `None` when shutdown came before Redis answered.
async fn connect_store(
    memory: Option<Arc<Mutex<MemoryStore>>>,
    cfg: &ServiceConfig,
    metrics: &Arc<Metrics>,
    dead: Arc<Mutex<DeadLetters>>,
    stop: &mut Shutdown,
) -> Result<Option<(RevocationStore, Option<AbortOnDrop>)>, ServiceError> {
    if let Some(m) = memory {
        metrics.redis_up.set(1);
        return Ok(Some((RevocationStore::Memory(m), None)));
    }
    let Some(writer) = redis_health::connect(&cfg.redis, metrics, stop).await? else {
        return Ok(None);
    };
    let health = redis_health::watch(writer.handle(), metrics.clone(), cfg.redis.response_timeout);
    let health = AbortOnDrop(tokio::spawn(health));
    Ok(Some((
        RevocationStore::Redis(writer.with_dead_letters(dead)),
        Some(health),
    )))
}

impl ServiceBuilder {
    /// The metrics to update (default: new ones); the demo and tests read them.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on this listener.
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Judges with this rule set instead of `rules_dir`, and never reloads.
    pub fn rules(mut self, rules: Arc<RuleSet>) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Geolocates with this database instead of the `geoip` file.
    pub fn geo(mut self, geo: GeoDb) -> Self {
        self.geo = Some(geo);
        self
    }

    /// Writes revocations to this in-memory store instead of Redis (the demo).
    pub fn memory_store(mut self, store: Arc<Mutex<MemoryStore>>) -> Self {
        self.memory = Some(store);
        self
    }

    /// Reloads the rules whenever this changes (SIGHUP), besides when their files change.
    pub fn reload_requests(mut self, requests: watch::Receiver<u64>) -> Self {
        self.reload_requests = Some(requests);
        self
    }

    /// Loads what the service needs and can fail at once on: the rules, the GeoIP database,
    /// the alert and dead-letter outputs; starts the metrics server.
    pub async fn build(self) -> Result<Service, ServiceError> {
        let cfg = self.cfg;
        let metrics = self.metrics.unwrap_or_else(Metrics::new);
        let (rules, set) = match self.rules {
            Some(set) => (Rules::Fixed, set),
            None => {
                // Before loading: a change made meanwhile is reloaded, never missed.
                let seen = reload::fingerprint(&cfg.rules_dir);
                let set = tokenwatch_core::rules::load_dir(&cfg.rules_dir).map_err(|source| ServiceError::Rules {
                    dir: cfg.rules_dir.clone(),
                    source,
                })?;
                let set = Arc::new(set);
                (Rules::Dir(seen, set.clone()), set)
            }
        };
        reload::publish_rules(&set, &metrics);
        let geo = match self.geo {
            Some(g) => Some(g),
            None => cfg.geoip.as_deref().map(GeoDb::open).transpose()?,
        };
        if let Some(w) = cfg.pipeline.evidence_warning() {
            tracing::warn!("{w}");
        }
        let pipeline = Pipeline::new(set.clone(), geo, cfg.pipeline.clone()).map_err(ServiceError::Pipeline)?;
        let dead = Arc::new(Mutex::new(match (&cfg.dead_letter_topic, &cfg.dead_letter) {
            (Some(topic), _) => DeadLetters::topic(&producer_config(&cfg), topic)?,
            (None, Some(path)) => DeadLetters::file(path)?,
            (None, None) => DeadLetters::stderr(),
        }));
        tracing::info!(
            output = dead.lock().map(|d| d.name().to_string()).unwrap_or_default(),
            "dead letters"
        );
        let alerts = AlertSink::new(&cfg.alerts, alerts_producer(&cfg)?)?.with_dead_letters(dead.clone());
        let metrics_addr = match self.listener {
            Some(l) => {
                let addr = l.local_addr().ok();
                tokio::spawn(crate::metrics::serve(l, metrics.clone()));
                addr
            }
            None => None,
        };
        Ok(Service {
            cfg,
            metrics,
            metrics_addr,
            pipeline,
            rules,
            set,
            reload_requests: self.reload_requests,
            memory: self.memory,
            dead,
            alerts,
        })
    }
}

/// The producer of the alerts topic, when there is one.
fn alerts_producer(cfg: &ServiceConfig) -> Result<Option<(rdkafka::producer::FutureProducer, String)>, ServiceError> {
    let Some(topic) = &cfg.alerts_topic else {
        return Ok(None);
    };
    let pc = producer_config(cfg);
    let p = pc.create().map_err(|source| ServiceError::AlertsProducer {
        topic: topic.clone(),
        source: Box::new(source),
    })?;
    Ok(Some((p, topic.clone())))
}

/// The producer settings of the alerts topic and the dead-letter topic: the brokers and the
/// `[kafka]` properties.
fn producer_config(cfg: &ServiceConfig) -> rdkafka::ClientConfig {
    let mut pc = rdkafka::ClientConfig::new();
    pc.set("bootstrap.servers", &cfg.brokers);
    // A record the topic cannot take fails after 30 s (librdkafka: 5 min), so the failure is
    // counted and logged, and the loop retries it.
    pc.set("message.timeout.ms", "30000");
    for (k, v) in &cfg.kafka {
        pc.set(k, v);
    }
    pc
}

/// Aborts a background task when the service stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine budgets bound the process: 12 internal partitions on one instance hold no
    /// more than one `--role local` engine would.
    #[test]
    fn each_detect_partition_gets_its_share_of_the_engine_budgets() {
        let cfg = PipelineConfig::default();
        let one = per_partition(&cfg, 12);
        assert!(one.engine.state_bytes * 12 <= cfg.engine.state_bytes);
        assert!(one.engine.state_bytes * 12 > cfg.engine.state_bytes - 12);
        assert_eq!(one.engine.max_keys_per_rule, cfg.engine.max_keys_per_rule / 12);
        assert_eq!(one.token_cache_bytes, cfg.token_cache_bytes / 12);
        assert_eq!(per_partition(&cfg, 1).engine.state_bytes, cfg.engine.state_bytes);
    }
}
