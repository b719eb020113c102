//! Alert output: every decision as one JSON line, to stdout or a file, and optionally to a
//! Kafka topic. A batch counts as delivered only when the lines are flushed and every Kafka
//! delivery is acknowledged, because offsets are committed after that.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::decision::Decision;

/// Where decision lines are written.
#[derive(Debug, Clone)]
pub enum AlertTarget {
    Stdout,
    File(PathBuf),
    None,
    /// Kept in memory (the demo's live view and summary).
    Memory(Arc<Mutex<Vec<Decision>>>),
}

impl std::str::FromStr for AlertTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdout" | "-" => AlertTarget::Stdout,
            "none" | "" => AlertTarget::None,
            path => AlertTarget::File(PathBuf::from(path)),
        })
    }
}

pub struct AlertSink {
    out: Option<Box<dyn Write + Send>>,
    memory: Option<Arc<Mutex<Vec<Decision>>>>,
    kafka: Option<(FutureProducer, String)>,
    buf: String,
}

impl AlertSink {
    pub fn new(target: &AlertTarget, kafka: Option<(FutureProducer, String)>) -> Result<Self, String> {
        let out: Option<Box<dyn Write + Send>> = match target {
            AlertTarget::Stdout => Some(Box::new(std::io::stdout())),
            AlertTarget::None | AlertTarget::Memory(_) => None,
            AlertTarget::File(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("alerts file {}: {e}", p.display()))?,
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
        })
    }

    /// Writes a batch of decisions; returns when they are flushed (and acknowledged by Kafka).
    pub async fn write(&mut self, decisions: &[Decision]) -> Result<(), String> {
        if decisions.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for d in decisions {
            self.buf.push_str(&d.to_json_line());
        }
        if let Some(m) = &self.memory {
            m.lock()
                .map_err(|_| "alerts memory poisoned".to_string())?
                .extend_from_slice(decisions);
        }
        if let Some(out) = self.out.as_mut() {
            out.write_all(self.buf.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| format!("alerts output: {e}"))?;
        }
        if let Some((producer, topic)) = &self.kafka {
            let mut pending = Vec::with_capacity(decisions.len());
            for (d, line) in decisions.iter().zip(self.buf.lines()) {
                let key = d.token_id.as_deref().or(d.subject.as_deref()).unwrap_or("");
                let rec = FutureRecord::to(topic).key(key).payload(line);
                pending.push(producer.send(rec, Duration::from_secs(30)));
            }
            for p in pending {
                p.await.map_err(|(e, _)| format!("alerts topic {topic}: {e}"))?;
            }
        }
        Ok(())
    }
}
