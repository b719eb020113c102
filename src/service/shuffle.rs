//! Splitting the work by key over Kafka (issue 12), as Kafka Streams does with a repartition
//! topic: the *ingest* stage ([`super::ingest`]) reads the gateway topics, decodes each line
//! and writes each use of a token as a record ([`tokenwatch_core::record`]) to the internal
//! topic `{prefix}events`, keyed by the token's subject; the *detect* stage
//! ([`super::detect`]) consumes that topic with an engine per internal partition. A subject's
//! records all reach one partition, whichever gateway partition or instance read them, so the
//! windows of a subject and of its tokens see all of its events; and the state of a partition
//! moves with it when a rebalance gives it to another instance.
//!
//! Rules keyed by another field (`kid`, `iss`, `client_ip`, `network`, a claim) get their
//! events through a second topic, `{prefix}events-by-key`, keyed by that field's value
//! ([`tokenwatch_core::record::Router`]); it is created, and read, only when the rules loaded
//! at start hold such a rule.
//!
//! Nothing here is a distributed layer of tokenwatch's own: membership is the consumer
//! groups', ordering is the partitions', durability is the topic's and the checkpoints'.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::Role;

/// `[shuffle]`, resolved.
#[derive(Debug, Clone)]
pub struct ShuffleConfig {
    pub role: Role,
    /// The internal topic of records keyed by subject.
    pub events_topic: String,
    /// The internal topic of records keyed by the value of another rule key field.
    pub by_key_topic: String,
    /// Partitions, replication and retention of the internal topic when tokenwatch creates it.
    pub partitions: i32,
    pub replication: i32,
    pub retention: Duration,
    /// Threads decoding lines in the ingest stage (resolved: at least 1).
    pub decode_threads: usize,
}

impl Default for ShuffleConfig {
    fn default() -> Self {
        ShuffleConfig {
            role: Role::Local,
            events_topic: "tokenwatch.events".into(),
            by_key_topic: "tokenwatch.events-by-key".into(),
            partitions: 12,
            replication: -1,
            retention: Duration::from_secs(24 * 3600),
            decode_threads: 1,
        }
    }
}

impl ShuffleConfig {
    /// The consumer group of the detect stage: the gateway group's name with `.detect`, so
    /// that the two stages' offsets never mix.
    pub fn detect_group(group: &str) -> String {
        format!("{group}.detect")
    }
}

/// Why the internal topic is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleError {
    #[error("kafka admin client for {brokers}: {source}")]
    Admin {
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("cannot create the internal topic {topic} ({partitions} partitions, replication {replication}): {reason}; create it by hand or grant tokenwatch CreateTopics ([shuffle] partitions/replication/retention)")]
    Create {
        topic: String,
        partitions: i32,
        replication: i32,
        reason: String,
    },
    #[error("cannot read the metadata of the internal topic {topic}: {reason}")]
    Metadata { topic: String, reason: String },
    #[error("kafka producer for the internal topic {topic}: {source}")]
    Producer {
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A record could not be delivered: the ingest stage stops, and its next start reads
    /// the gateway lines again from the last committed offsets.
    #[error("the internal topic {topic} refused a record: {reason}; stopping so that a restart produces it again")]
    Delivery { topic: String, reason: String },
}

/// Creates the internal topic `name` (one of `cfg`'s) when it does not exist, and returns its
/// partition count (which routing needs: a record goes to `murmur2(key) % partitions`).
pub async fn ensure_topic(client: &ClientConfig, cfg: &ShuffleConfig, name: &str) -> Result<i32, ShuffleError> {
    if let Some(n) = partitions_of(client, name)? {
        return Ok(n);
    }
    let brokers = client.get("bootstrap.servers").unwrap_or_default().to_string();
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|source| ShuffleError::Admin {
        brokers,
        source: Box::new(source),
    })?;
    let retention = cfg.retention.as_millis().to_string();
    let topic =
        NewTopic::new(name, cfg.partitions, TopicReplication::Fixed(cfg.replication)).set("retention.ms", &retention);
    let refused = |reason: String| ShuffleError::Create {
        topic: name.to_string(),
        partitions: cfg.partitions,
        replication: cfg.replication,
        reason,
    };
    // A broker without CreateTopics (librdkafka's mock cluster) never answers: bounded.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| refused(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(refused(code.to_string())),
        }
    }
    // The new topic's metadata can take a moment to reach every broker.
    for _ in 0..50 {
        if let Some(n) = partitions_of(client, name)? {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ShuffleError::Metadata {
        topic: name.to_string(),
        reason: "created, but its metadata never showed it".into(),
    })
}

/// Every partition of the gateway `topics` the broker knows now: a detect task waits for
/// each of them (until its reader says it is idle) before it decides anything, so that a
/// gateway partition whose reader starts late does not find the others decided past its lines.
pub(super) fn gateway_partitions(client: &ClientConfig, topics: &[String]) -> Result<Vec<(String, i32)>, ShuffleError> {
    let mut out = Vec::new();
    for t in topics {
        match partitions_of(client, t)? {
            Some(n) => out.extend((0..n).map(|p| (t.clone(), p))),
            None => {
                tracing::warn!(topic = %t, "gateway topic unknown to the broker: its partitions are awaited once announced");
            }
        }
    }
    Ok(out)
}

/// The settings of the internal topics' producer (the ingest stage's, and the relay that
/// `benches/e2e.rs` measures the broker's two-trip floor with): idempotent and gapless, so
/// that a failed record is never followed by a delivered one (the detect stage drops repeats
/// by origin, which needs that). Batching is a default that `[kafka]` may change: LZ4, and
/// `linger.ms` 1, since every record waits for it before the detect stage sees it (measured
/// 2026-12-02, `--role both` on one gateway and one internal partition at 50,000 lines/s:
/// p50 27.2–27.8 ms at 1 against 31.0–33.3 at 5; draining 6 partitions, 223,317 and 229,803
/// events/s against 224,051 and 232,364; at 0, p50 34.4 ms: more requests for the broker; at
/// 10, no better on 2026-12-03: the ingest stage already sends one message per partition per
/// batch, so lingering saves the broker few requests).
pub fn producer_config(mut client: ClientConfig) -> ClientConfig {
    for (k, v) in [("linger.ms", "1"), ("compression.type", "lz4")] {
        if client.get(k).is_none() {
            client.set(k, v);
        }
    }
    client
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true");
    client
}

/// The partition count of `topic`; `None` when the broker does not know it.
fn partitions_of(client: &ClientConfig, topic: &str) -> Result<Option<i32>, ShuffleError> {
    let failed = |reason: String| ShuffleError::Metadata {
        topic: topic.to_string(),
        reason,
    };
    let mut c = client.clone();
    c.set("group.id", "tokenwatch-metadata");
    let consumer: BaseConsumer = c.create().map_err(|e| failed(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| failed(e.to_string()))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as i32)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[kafka]` may change the internal producer's batching, never its guarantees.
    #[test]
    fn kafka_settings_tune_the_internal_producer_but_keep_it_idempotent() {
        let defaults = producer_config(ClientConfig::new());
        assert_eq!(defaults.get("linger.ms"), Some("1"));
        assert_eq!(defaults.get("compression.type"), Some("lz4"));
        let mut mine = ClientConfig::new();
        mine.set("linger.ms", "20")
            .set("compression.type", "zstd")
            .set("enable.idempotence", "false");
        let tuned = producer_config(mine);
        assert_eq!(tuned.get("linger.ms"), Some("20"));
        assert_eq!(tuned.get("compression.type"), Some("zstd"));
        assert_eq!(tuned.get("enable.idempotence"), Some("true"));
        assert_eq!(tuned.get("enable.gapless.guarantee"), Some("true"));
    }
}
