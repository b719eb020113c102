//! The dead-letter output: items an output refused for good, kept instead of retried forever.
//!
//! A revocation that Redis rejects for a reason that retrying cannot change (WRONGTYPE, a script
//! error on its value), or an alert record the alerts topic refuses (too large), would otherwise
//! stall the whole stream: the batch is retried, consumption pauses, and the revocations behind
//! it never reach Redis. Such an item is written here, one JSON line each, and the batch goes on
//! (as kafka-delta-ingest's dead letters do). The line names the output, the error and the item,
//! so an operator can fix the cause and replay the items. Items are bounded: a decision's text
//! fields are cut when it is made, and a line here is cut to [`MAX_ITEM_BYTES`] of item.
//!
//! The output is a file (`[dead_letter] file`, by default beside the alerts file), stderr, or
//! a Kafka topic (`[dead_letter] topic`, produced with the brokers and `[kafka]` settings of
//! the alerts topic), for deployments where the process has no durable disk. A record is
//! written synchronously and waited for (delivery acknowledged, at most [`TOPIC_TIMEOUT`]),
//! as a file line is flushed: the caller counts the item as delivered only once it is kept.
//! Dead letters are rare (a poison item), so blocking the loop for them costs nothing in the
//! common case; a dead-letter topic that refuses the record too makes the caller retry the
//! item, as when the file cannot be written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

/// An item larger than this (as JSON) is replaced by its size and first bytes.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;

/// How long a dead-letter record may take to be acknowledged by its topic.
pub const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead-letter output cannot be opened: a setting to fix, so the service does not start.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead_letter.file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dead_letter.topic {topic}: cannot create the producer: {source}")]
    Topic {
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
}

/// Where dead letters go: a file (appended), stderr, or a Kafka topic.
pub struct DeadLetters {
    out: Output,
    name: String,
}

enum Output {
    Stream(Box<dyn Write + Send>),
    Topic(BaseProducer<Delivery>, String),
}

/// The producer's context: keeps the outcome of the last delivery, which [`DeadLetters::record`]
/// waits for (one record at a time).
#[derive(Default)]
struct Delivery(Mutex<Option<Result<(), KafkaError>>>);

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(outcome);
        }
    }
}

impl DeadLetters {
    /// Appends to `path` (created when absent).
    pub fn file(path: &Path) -> Result<Self, DeadLetterError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| DeadLetterError::File {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(DeadLetters {
            out: Output::Stream(Box::new(f)),
            name: path.display().to_string(),
        })
    }

    /// Writes to stderr, beside the logs (when alerts go to stdout or nowhere).
    pub fn stderr() -> Self {
        DeadLetters {
            out: Output::Stream(Box::new(std::io::stderr())),
            name: "stderr".into(),
        }
    }

    /// Produces to `topic` with `client` (the brokers and settings of the alerts producer).
    pub fn topic(client: &rdkafka::ClientConfig, topic: &str) -> Result<Self, DeadLetterError> {
        let producer = client
            .create_with_context(Delivery::default())
            .map_err(|source| DeadLetterError::Topic {
                topic: topic.into(),
                source: Box::new(source),
            })?;
        Ok(DeadLetters {
            out: Output::Topic(producer, topic.into()),
            name: format!("kafka topic {topic}"),
        })
    }

    /// The default place: beside the alerts file (`FILE.dead-letters`), else stderr.
    pub fn default_path(alerts_file: Option<&Path>) -> Option<PathBuf> {
        alerts_file.map(|p| {
            let mut s = p.as_os_str().to_owned();
            s.push(".dead-letters");
            PathBuf::from(s)
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records one item that `output` (`redis`, `alerts_topic`) refused with `error`.
    pub fn record(&mut self, output: &str, error: &str, item: &serde_json::Value) -> std::io::Result<()> {
        let mut text = item.to_string();
        let item = if text.len() > MAX_ITEM_BYTES {
            let mut cut = MAX_ITEM_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            serde_json::json!({"truncated": true, "head": text})
        } else {
            item.clone()
        };
        let line = serde_json::json!({
            "dead_letter": true,
            "output": output,
            "error": error,
            "item": item,
        });
        let mut s = line.to_string();
        match &mut self.out {
            Output::Stream(out) => {
                s.push('\n');
                out.write_all(s.as_bytes())?;
                out.flush()
            }
            Output::Topic(producer, topic) => produce(producer, topic, &s),
        }
    }
}

/// Sends one record and waits until the topic acknowledged it (or refused it).
fn produce(producer: &BaseProducer<Delivery>, topic: &str, payload: &str) -> std::io::Result<()> {
    if let Ok(mut slot) = producer.context().0.lock() {
        *slot = None;
    }
    producer
        .send(BaseRecord::<(), _>::to(topic).payload(payload))
        .map_err(|(e, _)| std::io::Error::other(e))?;
    producer.flush(TOPIC_TIMEOUT).map_err(std::io::Error::other)?;
    let outcome = producer.context().0.lock().ok().and_then(|mut s| s.take());
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Err(std::io::Error::other(format!(
            "dead-letter topic {topic}: no acknowledgement"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_name_output_and_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = DeadLetters::default_path(Some(&dir.path().join("alerts.jsonl"))).unwrap();
        assert!(path.ends_with("alerts.jsonl.dead-letters"));
        let mut d = DeadLetters::file(&path).unwrap();
        d.record("redis", "WRONGTYPE", &serde_json::json!({"id": "k"})).unwrap();
        d.record(
            "alerts_topic",
            "too large",
            &serde_json::json!({"reason": "x".repeat(1 << 20)}),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["output"], "redis");
        assert_eq!(lines[0]["item"]["id"], "k");
        assert_eq!(lines[1]["item"]["truncated"], true);
        assert!(text.lines().nth(1).unwrap().len() < MAX_ITEM_BYTES + 1024);
    }
}
