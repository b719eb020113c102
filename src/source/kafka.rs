//! The Kafka source: a consumer-group member that reads access-log messages and commits
//! offsets only for what the service has finished with.
//!
//! Auto-commit and the automatic offset store are off. After a batch's side effects are
//! acknowledged, the service [`store`]s in librdkafka's offset store the *safe* offset of
//! each partition (what the event-time buffer has released and delivered, not the newest
//! read) and [`commit`]s the store asynchronously. librdkafka refuses to store offsets of
//! partitions no longer assigned and clears a partition's stored offset when it is assigned
//! (librdkafka 1.9+), so a partition revoked mid-batch is never committed here by its former
//! owner, and no stale offset survives a rebalance away and back.
//!
//! On shutdown the service commits the store synchronously: the offsets of every batch it
//! finished (the asynchronous per-batch commits may not have reached the group yet), and
//! nothing of an unfinished batch, whose offsets were never stored.
//!
//! The context keeps the assignment (its gauge is what `/readyz` reads) and turns librdkafka's statistics into the
//! per-partition consumer-lag gauge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::ClientContext;

use crate::metrics::Metrics;

/// Settings tokenwatch needs; the operator's `[kafka]` table may override any of them.
pub fn base_config(brokers: &str, group: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "600000")
        // librdkafka's default 500 ms lets a broker hold a fetch that long; revocations should
        // land within a blink (measured: p99 500 ms+ at the default, ~34 ms at 5 ms).
        .set("fetch.wait.max.ms", "5")
        // When its local queue is full (a backlog), librdkafka postpones a partition's next
        // fetch by this; at its default of 1 s the queue ran dry and `run` sat idle for ~0.7 s
        // in every 1.7 (measured: 1,000,000 lines over 6 partitions drained in 9.8 s at the
        // default, 5.9 s at 10 ms). The queue's size bounds stay librdkafka's.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Why the Kafka source failed. Creating the consumer, reading the group's offsets or
/// subscribing fail the start (a setting or broker to fix); a failed commit or pause is
/// logged by the loop and retried with the next batch ([`SourceError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka consumer for {brokers}: {source} (check the [kafka] settings)")]
    Create {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("kafka {brokers}: reading group {group}'s committed offsets: {source}")]
    Committed {
        brokers: String,
        group: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("kafka subscribe to {topics}: {source}")]
    Subscribe {
        topics: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("kafka {} {topic}/{partition}: {source}", if *.pause { "pause" } else { "resume" })]
    Pause {
        pause: bool,
        topic: String,
        partition: i32,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("kafka commit: {0}")]
    Commit(#[source] Box<KafkaError>),
}

impl SourceError {
    /// Whether the next attempt may succeed (a commit or a pause); the others fail the start.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Pause { .. } | SourceError::Commit(_))
    }
}

pub struct SourceContext {
    metrics: Arc<Metrics>,
    assigned: Assignment,
    /// This consumer's share of `tokenwatch_kafka_assigned_partitions`.
    counted: AssignedCount,
    /// Where a restored checkpoint wants partitions to start, on their first assignment
    /// (instead of the group's committed offset).
    start_at: Mutex<HashMap<(String, i32), i64>>,
    /// Partitions are paused as they are assigned, until the loop has restored their state
    /// and resumes them (the detect stage: [`connect_paused`]).
    pause_on_assign: bool,
}

impl SourceContext {
    fn start_from_checkpoint(&self, tpl: &mut TopicPartitionList) {
        let Ok(mut start) = self.start_at.lock() else { return };
        let keys: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for k in keys {
            if let Some(o) = start.remove(&k) {
                let _ = tpl.set_partition_offset(&k.0, k.1, Offset::Offset(o));
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, s: Statistics) {
        let assigned = self.assigned.lock().map(|a| a.now.clone()).unwrap_or_default();
        let mut unread = HashMap::new();
        for (topic, t) in s.topics {
            for (p, part) in t.partitions {
                if p < 0 || !assigned.contains(&(topic.clone(), p)) {
                    continue;
                }
                if part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &p.to_string()])
                        .set(part.consumer_lag);
                }
                // Fetched and not yet handed out, plus not yet fetched; unknown before the
                // partition's first fetch (no offsets yet).
                if part.hi_offset >= 0 && part.next_offset >= 0 {
                    let behind = part.fetchq_cnt.max(0) + (part.hi_offset - part.next_offset).max(0);
                    unread.insert((topic.clone(), p), behind);
                }
            }
        }
        if let Ok(mut a) = self.assigned.lock() {
            a.unread = unread;
        }
    }
}

impl ConsumerContext for SourceContext {
    /// librdkafka's rebalance, as rdkafka does it, except that a partition assigned for the
    /// first time after a checkpoint was restored starts where the checkpoint stands.
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_from_checkpoint(tpl);
                let assigned = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                if self.pause_on_assign && assigned.is_ok() {
                    if let Err(e) = c.pause(tpl) {
                        tracing::warn!(error = %e, "cannot pause partitions as they are assigned");
                    }
                }
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                c.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying a rebalance failed");
        }
        let r = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            _ => return,
        };
        self.post_rebalance(c, &r);
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let Ok(mut a) = self.assigned.lock() else { return };
        a.epoch += 1;
        match r {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    a.now.insert((e.topic().to_string(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    let k = (e.topic().to_string(), e.partition());
                    a.now.remove(&k);
                    a.revoked.push(k);
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        self.counted.set(&self.metrics.assigned_partitions, a.now.len());
    }
}

/// One consumer's count in `tokenwatch_kafka_assigned_partitions`: with `--role both` an
/// instance has two consumers (the gateway topics', the internal topics'), and the gauge is
/// their sum, not whichever rebalanced last.
#[derive(Default)]
struct AssignedCount(std::sync::atomic::AtomicI64);

impl AssignedCount {
    fn set(&self, gauge: &prometheus::IntGauge, now: usize) {
        let now = now as i64;
        let before = self.0.swap(now, std::sync::atomic::Ordering::Relaxed);
        gauge.add(now - before);
    }
}

pub type Source = StreamConsumer<SourceContext>;

/// The partitions assigned to this instance, as the rebalance callback leaves them.
pub type Assignment = Arc<Mutex<Assigned>>;

/// What rebalances did: the partitions assigned now, and those revoked since the consume
/// loop last looked. A partition revoked and assigned again between two looks (away and
/// back within one poll) is in both: the loop must still forget its place, for librdkafka
/// restarts it at the group's committed offset.
#[derive(Debug, Default)]
pub struct Assigned {
    pub now: HashSet<(String, i32)>,
    revoked: Vec<(String, i32)>,
    /// Rebalances so far: the loop looks again only when this moved.
    epoch: u64,
    /// Messages of each assigned partition that the broker holds and the loop has not read
    /// yet, as of librdkafka's last statistics (`statistics.interval.ms`); absent before a
    /// partition's first fetch.
    unread: HashMap<(String, i32), i64>,
}

impl Assigned {
    /// The partitions revoked since the last call, and the rebalance count now.
    pub fn take_revoked(&mut self) -> (Vec<(String, i32)>, u64) {
        (std::mem::take(&mut self.revoked), self.epoch)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Messages of `partition` not read yet, as of the last statistics; `None` while unknown.
    /// A partition with some is not idle, however long nothing came from it: librdkafka may
    /// hand out another partition's fetched messages for longer than the idle timeout (a
    /// backlog) while this one's wait behind them.
    pub fn unread(&self, partition: &(String, i32)) -> Option<i64> {
        self.unread.get(partition).copied()
    }
}

/// Pauses (or resumes) fetching one partition: watermark alignment ([`tokenwatch_core::eventtime`]).
pub fn pause(consumer: &Source, topic: &str, partition: i32, pause: bool) -> Result<(), SourceError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let r = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    r.map_err(|source| SourceError::Pause {
        pause,
        topic: topic.to_string(),
        partition,
        source: Box::new(source),
    })
}

/// Creates the consumer and subscribes; errors name the setting or broker at fault.
pub fn connect(
    brokers: &str,
    group: &str,
    topics: &[String],
    extra: &BTreeMap<String, String>,
    metrics: Arc<Metrics>,
) -> Result<(Source, Assignment), SourceError> {
    let (c, a, _) = connect_at(brokers, group, topics, extra, metrics, HashMap::new())?;
    Ok((c, a))
}

/// [`connect`] for a loop that restores each partition's state before reading it: every
/// partition is paused as it is assigned (in the rebalance callback, before any fetch), and
/// the loop seeks and resumes it ([`seek`], [`pause`]). The cooperative-sticky assignor moves
/// only the partitions that must move, so a rebalance does not restore every partition.
pub fn connect_paused(
    brokers: &str,
    group: &str,
    topics: &[String],
    extra: &BTreeMap<String, String>,
    metrics: Arc<Metrics>,
) -> Result<(Source, Assignment), SourceError> {
    let assigned: Assignment = Arc::default();
    let ctx = SourceContext {
        metrics,
        assigned: assigned.clone(),
        counted: AssignedCount::default(),
        start_at: Mutex::new(HashMap::new()),
        pause_on_assign: true,
    };
    let mut config = base_config(brokers, group, extra);
    if !extra.contains_key("partition.assignment.strategy") {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    let consumer = subscribed(&config, ctx, brokers, topics)?;
    Ok((consumer, assigned))
}

/// A consumer of `config` with `ctx`, subscribed to `topics`.
fn subscribed(
    config: &ClientConfig,
    ctx: SourceContext,
    brokers: &str,
    topics: &[String],
) -> Result<Source, SourceError> {
    let consumer: Source = config.create_with_context(ctx).map_err(|source| SourceError::Create {
        brokers: brokers.to_string(),
        source: Box::new(source),
    })?;
    let t: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&t).map_err(|source| SourceError::Subscribe {
        topics: topics.join(", "),
        source: Box::new(source),
    })?;
    Ok(consumer)
}

/// Moves a paused partition's position to `offset` (where its restored state stands), and
/// returns the group's committed offset for it (what was delivered before).
pub fn seek(consumer: &Source, topic: &str, partition: i32, offset: Option<i64>) -> Result<Option<i64>, SourceError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(tpl, std::time::Duration::from_secs(10))
        .map_err(|e| SourceError::Commit(Box::new(e)))?;
    let committed = committed.elements().first().and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    });
    if let Some(o) = offset {
        consumer
            .seek(topic, partition, Offset::Offset(o), std::time::Duration::from_secs(10))
            .map_err(|e| SourceError::Commit(Box::new(e)))?;
    }
    Ok(committed)
}

/// Offsets per partition.
pub type PartitionOffsets = HashMap<(String, i32), i64>;

/// [`connect`], with partitions starting at `start_at` on their first assignment (a restored
/// checkpoint's offsets). Also returns the group's committed offsets of those partitions.
pub fn connect_at(
    brokers: &str,
    group: &str,
    topics: &[String],
    extra: &BTreeMap<String, String>,
    metrics: Arc<Metrics>,
    start_at: PartitionOffsets,
) -> Result<(Source, Assignment, PartitionOffsets), SourceError> {
    let assigned: Assignment = Arc::default();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in start_at.keys() {
        tpl.add_partition(t, *p);
    }
    let ctx = SourceContext {
        metrics,
        assigned: assigned.clone(),
        counted: AssignedCount::default(),
        start_at: Mutex::new(start_at),
        pause_on_assign: false,
    };
    // Subscribing starts no rebalance: that happens in the first poll, after the committed
    // offsets below are read.
    let consumer = subscribed(&base_config(brokers, group, extra), ctx, brokers, topics)?;
    let mut committed = HashMap::new();
    if tpl.count() > 0 {
        let got = consumer
            .committed_offsets(tpl, std::time::Duration::from_secs(30))
            .map_err(|source| SourceError::Committed {
                brokers: brokers.to_string(),
                group: group.to_string(),
                source: Box::new(source),
            })?;
        for e in got.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }
    Ok((consumer, assigned, committed))
}

/// Stores each partition's safe offset (the next offset whose line is not yet done with) in
/// librdkafka's offset store, for the next [`commit`]. librdkafka refuses to store offsets
/// of partitions no longer assigned, and clears a partition's stored offset when it is
/// (re)assigned, so an offset of a partition revoked mid-batch is never committed here (its
/// new owner re-reads it: at-least-once, and the Redis writes are idempotent). Returns the
/// offsets stored.
pub fn store(consumer: &Source, safe: &[(&str, i32, i64)]) -> Result<usize, SourceError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in safe {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(|e| SourceError::Commit(Box::new(e)))?;
    }
    if tpl.count() == 0 {
        return Ok(0);
    }
    match consumer.store_offsets(&tpl) {
        Ok(()) => Ok(tpl.elements().iter().filter(|e| e.error().is_ok()).count()),
        // None of them assigned any more (a rebalance while the batch was decided).
        Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(0),
        Err(e) => Err(SourceError::Commit(Box::new(e))),
    }
}

/// Commits the stored offsets of the partitions assigned now (nothing stored: nothing to do).
pub fn commit(consumer: &Source, mode: CommitMode) -> Result<(), SourceError> {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(SourceError::Commit(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka (MSK, Confluent Cloud, Aiven...) wants TLS and SASL/SCRAM: librdkafka
    /// refuses these settings when it was built without OpenSSL, so this fails on such a build.
    /// (TLS itself is exercised end to end in tests/e2e_tansu.rs.)
    #[test]
    fn tls_and_scram_settings_are_accepted() {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
            let extra: BTreeMap<String, String> = [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", mechanism),
                ("sasl.username", "tokenwatch"),
                ("sasl.password", "secret"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let created: Result<BaseConsumer, _> = base_config("127.0.0.1:1", "g", &extra).create();
            assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
        }
    }

    /// Two consumers of one instance add up in the gauge; each rebalance changes only its own
    /// share.
    #[test]
    fn the_assigned_gauge_sums_the_consumers_of_an_instance() {
        let gauge = prometheus::IntGauge::new("g", "h").unwrap();
        let (gateway, internal) = (AssignedCount::default(), AssignedCount::default());
        gateway.set(&gauge, 3);
        internal.set(&gauge, 2);
        assert_eq!(gauge.get(), 5);
        gateway.set(&gauge, 0);
        assert_eq!(
            gauge.get(),
            2,
            "the gateway topic revoked: the internal partitions stay"
        );
        internal.set(&gauge, 4);
        assert_eq!(gauge.get(), 4);
    }

    /// A backlog must not stall on librdkafka's 1 s fetch backoff (BENCHMARKS.md), and the
    /// setting is one this librdkafka knows; `[kafka]` still overrides it.
    #[test]
    fn a_full_fetch_queue_backs_off_briefly_unless_told_otherwise() {
        let c = base_config("127.0.0.1:1", "g", &BTreeMap::new());
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert!(c.create::<BaseConsumer>().is_ok());
        let told = BTreeMap::from([("fetch.queue.backoff.ms".to_string(), "1000".to_string())]);
        assert_eq!(base_config("b", "g", &told).get("fetch.queue.backoff.ms"), Some("1000"));
    }
}
