//! The subcommands of the `tokenwatch` binary, one file per family: what each does with its
//! flags once `main` has parsed them. They return `anyhow` errors; a [`Failed`] one is a
//! failure after the command's inputs were accepted (exit status 1), any other means the
//! command line, the configuration or an input must be fixed (exit status 2).

pub mod offline;
pub mod replay;
pub mod report;
pub mod run;
pub mod traffic;

use std::path::Path;
use std::sync::Arc;

use tokenwatch_core::rules::{load_dir, RuleSet};

/// A failure after the work started (Kafka, Redis, writing the output): exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Failed(pub anyhow::Error);

/// Marks an error of the work itself, as opposed to one of its inputs.
pub trait OrFailed<T> {
    fn or_failed(self) -> anyhow::Result<T>;
}

impl<T, E: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static> OrFailed<T> for Result<T, E> {
    fn or_failed(self) -> anyhow::Result<T> {
        self.map_err(|e| Failed(anyhow::Error::msg(e)).into())
    }
}

/// The rules of `dir`, or every problem found in them.
pub fn load_rules(dir: &Path) -> anyhow::Result<Arc<RuleSet>> {
    load_dir(dir)
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("invalid rules:\n{e}"))
}

/// The async runtime of `run`, `demo`, `unrevoke` and `rearm`, with the TLS provider that
/// `rediss://` needs.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_failed()
}
