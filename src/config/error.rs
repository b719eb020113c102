//! What can be wrong with a configuration, and where: every variant that concerns one key
//! carries that key's [`Origin`] (file and line, environment variable or flag), found in the
//! layers' record of where each key was set, never by reading an error message.

use std::path::PathBuf;

use super::layers::Origin;

/// A configuration that cannot be used; its message names what to fix and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read at all.
    #[error("cannot read config {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// The config file is not TOML (a syntax error, a duplicate key).
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A `TOKENWATCH_…` variable whose name is no key.
    #[error("{var}: {problem}")]
    Variable { var: String, problem: String },
    /// A key with a value that cannot work, or a key that does not exist.
    #[error("{}{key}: {problem}", at(origin.as_ref()))]
    Invalid {
        origin: Option<Origin>,
        key: String,
        problem: String,
    },
    /// A key without which the command cannot run.
    #[error("{key}: no {what} given ({hint})")]
    Missing {
        key: &'static str,
        what: &'static str,
        hint: &'static str,
    },
    /// A value another module refused; its message already names the key.
    #[error("{}{message}", at(origin.as_ref()))]
    Refused { origin: Option<Origin>, message: String },
}

/// `origin: ` or nothing.
fn at(origin: Option<&Origin>) -> String {
    origin.map(|o| format!("{o}: ")).unwrap_or_default()
}
