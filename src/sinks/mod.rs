//! Where decisions go: revocations to Redis ([`redis`]) or, for the demo, to memory
//! ([`memory`]); every decision as a JSON line to stdout, a file or a Kafka topic
//! ([`alerts`]). What an output rejects for good goes to [`dead_letter`]; [`unrevoke`] undoes
//! revocations in Redis.

pub mod alerts;
pub mod dead_letter;
pub mod memory;
pub mod redis;
pub mod unrevoke;

use std::sync::{Arc, Mutex};

/// Where revocations are written.
#[allow(clippy::large_enum_variant)] // one per service, never moved on the hot path
pub enum RevocationStore {
    Redis(redis::RevocationWriter),
    Memory(Arc<Mutex<memory::MemoryStore>>),
}

impl RevocationStore {
    /// Writes one revocation; `Ok(true)` when it is new.
    pub async fn write(&mut self, r: &redis::Revocation, now_s: i64) -> Result<bool, redis::WriteError> {
        match self {
            RevocationStore::Redis(w) => w.write(r, now_s).await,
            RevocationStore::Memory(m) => Ok(m
                .lock()
                .map_err(|_| redis::WriteError::Unavailable("memory store poisoned".into()))?
                .write(r)),
        }
    }
}
