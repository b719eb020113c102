//! Generated traffic to a Kafka topic: paced against the wall clock (a live gateway), or as
//! fast as the producer goes (a backlog for benchmarks).
//!
//! Pacing maps event time to wall time: a line stamped `t` is sent at
//! `start + (t - first) / speedup`. With `speedup` 1 the topic sees traffic as a gateway
//! would send it; the demo uses a larger `speedup` to show an hour of traffic in a minute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Generator, Label};

/// How lines are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Event time runs `speedup` times faster than the wall clock.
    Realtime { speedup: f64 },
    /// As fast as possible.
    Fast,
}

/// What was produced.
#[derive(Debug, Default)]
pub struct Produced {
    pub lines: u64,
    pub labels: Vec<Label>,
}

/// Why producing stopped short. Each names the brokers or the topic, which is what the
/// operator checks first.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer cannot be built: a malformed broker list or an unknown or invalid
    /// producer setting.
    #[error("kafka producer for {brokers}: {error} (check the broker list and the producer settings)")]
    Create { brokers: String, error: KafkaError },
    /// A line was refused for a reason other than a full queue: an unknown topic, a message
    /// over the broker's size limit, or no permission to write.
    #[error("kafka produce to {topic}: {error} (check that the topic exists and this client may write to it)")]
    Send { topic: String, error: KafkaError },
    /// Lines were still undelivered after 30 s: the brokers are unreachable or too slow.
    #[error("kafka flush to {topic}: {error} (some lines may not have been delivered; are the brokers reachable?)")]
    Flush { topic: String, error: KafkaError },
}

/// Produces the generator's lines to `topic` until it ends or `stop` is set.
pub fn produce(
    generator: Generator,
    brokers: &str,
    topic: &str,
    pace: Pace,
    extra: &[(String, String)],
    stop: &AtomicBool,
) -> Result<Produced, ProduceError> {
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    let producer: BaseProducer = cfg.create().map_err(|error| ProduceError::Create {
        brokers: brokers.to_owned(),
        error,
    })?;
    let mut out = Produced::default();
    let mut first_ts: Option<i64> = None;
    let start = Instant::now();
    let mut line = String::new();
    let mut generator = generator;
    while let Some((ts, labels)) = generator.next_into(&mut line) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Pace::Realtime { speedup } = pace {
            let t0 = *first_ts.get_or_insert(ts);
            let due = Duration::from_secs_f64(((ts - t0).max(0) as f64 / 1000.0) / speedup.max(1e-6));
            let now = start.elapsed();
            if due > now {
                producer.poll(Duration::ZERO);
                std::thread::sleep(due - now);
            }
        }
        if !send(&producer, topic, &line, stop)? {
            return Ok(out);
        }
        out.lines += 1;
        out.labels.extend(labels);
        if out.lines % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|error| ProduceError::Flush {
            topic: topic.to_owned(),
            error,
        })?;
    Ok(out)
}

/// Queues one line, waiting while the producer's queue is full (backpressure rather than
/// dropped lines). False when `stop` was set while waiting: the line was not queued.
fn send(producer: &BaseProducer, topic: &str, line: &str, stop: &AtomicBool) -> Result<bool, ProduceError> {
    loop {
        match producer.send(BaseRecord::<(), str>::to(topic).payload(line)) {
            Ok(()) => return Ok(true),
            Err((_, _)) if stop.load(Ordering::Relaxed) => return Ok(false),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(5));
            }
            Err((error, _)) => {
                return Err(ProduceError::Send {
                    topic: topic.to_owned(),
                    error,
                })
            }
        }
    }
}
