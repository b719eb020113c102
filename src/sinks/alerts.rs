//! Alert output: every decision as one JSON line, to stdout or a file, and optionally to a
//! Kafka topic. A batch counts as delivered only when the lines are flushed and every Kafka
//! delivery is acknowledged, because offsets are committed after that.
//!
//! A failed delivery is retried by the caller with the same batch; the sink remembers what
//! of it already went out (the flushed lines, the acknowledged records), so a retry sends only
//! the rest and a flaky alerts topic does not duplicate the file's lines. A record the topic
//! refuses for good (too large, invalid) is not retried: it goes to the dead-letter output
//! ([`super::dead_letter`]) and counts as delivered, so one poison record cannot stall the
//! stream.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::dead_letter::DeadLetters;
use tokenwatch_core::decision::Decision;

/// Where decision lines are written.
#[derive(Debug, Clone)]
pub enum AlertTarget {
    Stdout,
    File(PathBuf),
    None,
    /// Kept in memory (the demo's live view and summary).
    Memory(Arc<Mutex<Vec<Decision>>>),
}

/// Parsing an alert target cannot fail (any other text is a file path); the type exists so
/// that `parse()?` reads like every other setting.
#[derive(Debug, thiserror::Error)]
pub enum AlertTargetError {}

impl std::str::FromStr for AlertTarget {
    type Err = AlertTargetError;
    fn from_str(s: &str) -> Result<Self, AlertTargetError> {
        Ok(match s {
            "stdout" | "-" => AlertTarget::Stdout,
            "none" | "" => AlertTarget::None,
            path => AlertTarget::File(PathBuf::from(path)),
        })
    }
}

/// Why alert lines were not delivered, and so what the service does about it: an output
/// that cannot be opened fails the start ([`AlertError::is_transient`] false); a failed write
/// or an unacknowledged record is retried with the same batch.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alerts file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("alerts output: {0}")]
    Write(#[source] std::io::Error),
    #[error("alerts topic {topic}: {undelivered} of {total} records not delivered: {source}")]
    Topic {
        topic: String,
        undelivered: usize,
        total: usize,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("alerts memory poisoned (a panic while holding it)")]
    Poisoned,
}

impl AlertError {
    /// Whether retrying the same batch may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AlertError::Write(_) | AlertError::Topic { .. })
    }
}

pub struct AlertSink {
    out: Option<Box<dyn Write + Send>>,
    memory: Option<Arc<Mutex<Vec<Decision>>>>,
    kafka: Option<(FutureProducer, String)>,
    buf: String,
    /// The batch being delivered, after a failed attempt.
    pending: Option<Pending>,
    dead: Option<Arc<Mutex<DeadLetters>>>,
    /// Records sent to the dead-letter output since the last [`AlertSink::take_dead_lettered`].
    dead_lettered: u64,
}

/// What of a batch already went out.
struct Pending {
    decisions: usize,
    written: bool,
    /// Indices of the decisions whose Kafka record is not acknowledged yet.
    unsent: Vec<usize>,
}

impl AlertSink {
    pub fn new(target: &AlertTarget, kafka: Option<(FutureProducer, String)>) -> Result<Self, AlertError> {
        let out: Option<Box<dyn Write + Send>> = match target {
            AlertTarget::Stdout => Some(Box::new(std::io::stdout())),
            AlertTarget::None | AlertTarget::Memory(_) => None,
            AlertTarget::File(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| AlertError::Open {
                        path: p.clone(),
                        source,
                    })?,
            )),
        };
        let memory = match target {
            AlertTarget::Memory(m) => Some(m.clone()),
            _ => None,
        };
        Ok(AlertSink {
            out,
            memory,
            kafka,
            buf: String::new(),
            pending: None,
            dead: None,
            dead_lettered: 0,
        })
    }

    /// Where records the alerts topic refuses for good go (without it, they are retried).
    pub fn with_dead_letters(mut self, dead: Arc<Mutex<DeadLetters>>) -> Self {
        self.dead = Some(dead);
        self
    }

    /// How many records went to the dead-letter output since the last call.
    pub fn take_dead_lettered(&mut self) -> u64 {
        std::mem::take(&mut self.dead_lettered)
    }

    /// Writes a batch of decisions; returns when they are flushed (and acknowledged by Kafka).
    /// After an error, call again with the same batch: only what did not go out is sent.
    pub async fn write(&mut self, decisions: &[Decision]) -> Result<(), AlertError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let mut p = match self.pending.take() {
            Some(p) if p.decisions == decisions.len() => p,
            _ => {
                self.buf.clear();
                for d in decisions {
                    self.buf.push_str(&d.to_json_line());
                }
                if let Some(m) = &self.memory {
                    m.lock().map_err(|_| AlertError::Poisoned)?.extend_from_slice(decisions);
                }
                Pending {
                    decisions: decisions.len(),
                    written: false,
                    unsent: if self.kafka.is_some() {
                        (0..decisions.len()).collect()
                    } else {
                        Vec::new()
                    },
                }
            }
        };
        let r = self.deliver(decisions, &mut p).await;
        if r.is_err() {
            self.pending = Some(p);
        }
        r
    }

    async fn deliver(&mut self, decisions: &[Decision], p: &mut Pending) -> Result<(), AlertError> {
        if !p.written {
            if let Some(out) = self.out.as_mut() {
                out.write_all(self.buf.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(AlertError::Write)?;
            }
            p.written = true;
        }
        let Some((producer, topic)) = &self.kafka else {
            return Ok(());
        };
        if p.unsent.is_empty() {
            return Ok(());
        }
        let lines: Vec<&str> = self.buf.lines().collect();
        let mut sent = Vec::with_capacity(p.unsent.len());
        for &i in &p.unsent {
            let d = &decisions[i];
            let key = d.token_id.as_deref().or(d.subject.as_deref()).unwrap_or("");
            let rec = FutureRecord::to(topic).key(key).payload(lines[i]);
            sent.push((i, producer.send(rec, Duration::from_secs(30))));
        }
        let mut failed = Vec::new();
        let mut first_error = None;
        for (i, f) in sent {
            if let Err((e, _)) = f.await {
                if dead_letter(self.dead.as_ref(), &e, lines[i]) {
                    self.dead_lettered += 1;
                    continue;
                }
                failed.push(i);
                first_error.get_or_insert(e);
            }
        }
        p.unsent = failed;
        match first_error {
            None => Ok(()),
            Some(source) => Err(AlertError::Topic {
                topic: topic.clone(),
                undelivered: p.unsent.len(),
                total: decisions.len(),
                source: Box::new(source),
            }),
        }
    }
}

/// Sends a record the topic refused for good to the dead-letter output; false when the error
/// may pass (or there is no dead-letter output), so the record is retried.
fn dead_letter(dead: Option<&Arc<Mutex<DeadLetters>>>, e: &rdkafka::error::KafkaError, line: &str) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord)
    );
    let Some(dead) = dead.filter(|_| permanent) else {
        return false;
    };
    let item = serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
    dead.lock()
        .map(|mut d| d.record("alerts_topic", &e.to_string(), &item).is_ok())
        .unwrap_or(false)
}
