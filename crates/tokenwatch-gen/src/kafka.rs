//! Generated traffic to a Kafka topic: paced against the wall clock (a live gateway), or as
//! fast as the producer goes (a backlog for benchmarks).
//!
//! Pacing maps event time to wall time: a line stamped `t` is sent at
//! `start + (t - first) / speedup`. With `speedup` 1 the topic sees traffic as a gateway
//! would send it; the demo uses a larger `speedup` to show an hour of traffic in a minute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

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

/// Produces the generator's lines to `topic` until it ends or `stop` is set.
pub fn produce(
    generator: Generator,
    brokers: &str,
    topic: &str,
    pace: Pace,
    extra: &[(String, String)],
    stop: &AtomicBool,
) -> Result<Produced, String> {
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    let producer: BaseProducer = cfg.create().map_err(|e| format!("kafka producer for {brokers}: {e}"))?;
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
        loop {
            match producer.send(BaseRecord::<(), str>::to(topic).payload(line.as_str())) {
                Ok(()) => break,
                Err((e, _)) => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(out);
                    }
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(format!("kafka produce to {topic}: {e}"));
                    }
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        out.lines += 1;
        out.labels.extend(labels);
        if out.lines % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("kafka flush to {topic}: {e}"))?;
    Ok(out)
}
