//! The Kafka source: a consumer-group member that reads access-log messages and commits
//! offsets only for what the service has finished with.
//!
//! Auto-commit is off. The service hands back, after a batch's side effects are acknowledged,
//! the next offset of each partition it read ([`Offsets`]); only partitions still assigned to
//! this instance are committed, so work on a partition revoked mid-batch is never committed
//! here (its new owner re-reads it: at-least-once, and the Redis writes are idempotent).
//!
//! On shutdown the service commits, synchronously, the offsets of every batch it finished
//! (`enable.auto.offset.store` is off, so librdkafka has no stored offsets of its own to
//! commit); the asynchronous per-batch commits may not have reached the group yet.
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
use rdkafka::types::RDKafkaRespErr;
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
        .set("fetch.wait.max.ms", "5");
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
    assigned: Arc<Mutex<HashSet<(String, i32)>>>,
    /// Where a restored checkpoint wants partitions to start, on their first assignment
    /// (instead of the group's committed offset).
    start_at: Mutex<HashMap<(String, i32), i64>>,
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
        let assigned = self.assigned.lock().map(|a| a.clone()).unwrap_or_default();
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
            }
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
                if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                }
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
        match r {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    a.insert((e.topic().to_string(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    a.remove(&(e.topic().to_string(), e.partition()));
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        self.metrics.assigned_partitions.set(a.len() as i64);
    }
}

pub type Source = StreamConsumer<SourceContext>;

/// The partitions currently assigned to this instance.
pub type Assignment = Arc<AssignmentSet>;
pub type AssignmentSet = Mutex<HashSet<(String, i32)>>;

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
    let assigned = Arc::new(Mutex::new(HashSet::new()));
    let mut tpl = TopicPartitionList::new();
    for (t, p) in start_at.keys() {
        tpl.add_partition(t, *p);
    }
    let ctx = SourceContext {
        metrics,
        assigned: assigned.clone(),
        start_at: Mutex::new(start_at),
    };
    let consumer: Source = base_config(brokers, group, extra)
        .create_with_context(ctx)
        .map_err(|source| SourceError::Create {
            brokers: brokers.to_string(),
            source: Box::new(source),
        })?;
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
    let t: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&t).map_err(|source| SourceError::Subscribe {
        topics: topics.join(", "),
        source: Box::new(source),
    })?;
    Ok((consumer, assigned, committed))
}

/// The next offset to commit per partition, for the messages of one batch.
#[derive(Debug, Default)]
pub struct Offsets {
    next: HashMap<(String, i32), i64>,
}

impl Offsets {
    pub fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        self.advance(topic, partition, offset + 1);
    }

    /// Moves a partition's next offset forward to `next` (never back).
    pub fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        let e = self.next.entry((topic.to_string(), partition)).or_insert(next);
        *e = (*e).max(next);
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    pub fn clear(&mut self) {
        self.next.clear();
    }

    /// Takes in a finished batch's offsets (each partition keeps its highest).
    pub fn merge(&mut self, batch: &Offsets) {
        for (k, o) in &batch.next {
            let e = self.next.entry(k.clone()).or_insert(*o);
            *e = (*e).max(*o);
        }
    }

    /// Forgets partitions no longer assigned: their new owner commits them now, and an old
    /// offset kept here must not be committed over its progress later.
    pub fn retain_assigned(&mut self, assigned: &Mutex<HashSet<(String, i32)>>) {
        let a = assigned.lock().map(|a| a.clone()).unwrap_or_default();
        self.next.retain(|k, _| a.contains(k));
    }

    /// The next offset recorded for a partition.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.next.get(&(topic.to_string(), partition)).copied()
    }

    /// Commits the recorded offsets of partitions still assigned.
    pub fn commit(
        &self,
        consumer: &Source,
        assigned: &Mutex<HashSet<(String, i32)>>,
        mode: CommitMode,
    ) -> Result<usize, SourceError> {
        let a = assigned.lock().map(|a| a.clone()).unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &self.next {
            if a.contains(&(t.clone(), *p)) {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| SourceError::Commit(Box::new(e)))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(0);
        }
        consumer
            .commit(&tpl, mode)
            .map_err(|e| SourceError::Commit(Box::new(e)))?;
        Ok(tpl.count())
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

    #[test]
    fn finished_offsets_keep_the_highest_of_assigned_partitions() {
        let mut done = Offsets::default();
        let mut batch = Offsets::default();
        batch.record("logs", 0, 9);
        batch.record("logs", 0, 4);
        batch.record("logs", 1, 2);
        done.merge(&batch);
        let mut older = Offsets::default();
        older.record("logs", 0, 1);
        done.merge(&older);
        assert_eq!((done.get("logs", 0), done.get("logs", 1)), (Some(10), Some(3)));
        let assigned = Mutex::new(HashSet::from([("logs".to_string(), 1)]));
        done.retain_assigned(&assigned);
        assert_eq!((done.get("logs", 0), done.get("logs", 1)), (None, Some(3)));
    }
}
