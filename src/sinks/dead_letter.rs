//! The dead-letter output: items an output refused for good, kept instead of retried forever.
//!
//! A revocation that Redis rejects for a reason that retrying cannot change (WRONGTYPE, a script
//! error on its value), or an alert record the alerts topic refuses (too large), would otherwise
//! stall the whole stream: the batch is retried, consumption pauses, and the revocations behind
//! it never reach Redis. Such an item is written here, one JSON line each, and the batch goes on
//! (as kafka-delta-ingest's dead letters do). The line names the output, the error and the item,
//! so an operator can fix the cause and replay the items. Items are bounded: a decision's text
//! fields are cut when it is made, and a line here is cut to [`MAX_ITEM_BYTES`] of item.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An item larger than this (as JSON) is replaced by its size and first bytes.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;

/// The dead-letter file cannot be opened: a setting to fix, so the service does not start.
#[derive(Debug, thiserror::Error)]
#[error("dead_letter.file {}: {source}", path.display())]
pub struct DeadLetterError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where dead letters go: a file (appended), or stderr.
pub struct DeadLetters {
    out: Box<dyn Write + Send>,
    name: String,
}

impl DeadLetters {
    /// Appends to `path` (created when absent).
    pub fn file(path: &Path) -> Result<Self, DeadLetterError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| DeadLetterError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(DeadLetters {
            out: Box::new(f),
            name: path.display().to_string(),
        })
    }

    /// Writes to stderr, beside the logs (when alerts go to stdout or nowhere).
    pub fn stderr() -> Self {
        DeadLetters {
            out: Box::new(std::io::stderr()),
            name: "stderr".into(),
        }
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
        s.push('\n');
        self.out.write_all(s.as_bytes())?;
        self.out.flush()
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
