//! Checkpoints: the engine's state together with the input offsets it covers, so that a
//! restart (a deploy, a crash, a SIGKILL) resumes windows, cooldowns and the revoked-token
//! memory where they were instead of starting empty.
//!
//! **What a checkpoint says.** "The engine state E is what applying, in event-time order,
//! every line of partition P before offset `next`, plus the lines listed in `applied` (lines
//! at or after `next` that the event-time buffer had already released), gives." It is taken
//! between batches, after the batch's side effects, so every decision of those lines has been
//! delivered. On start, the service restores E, starts each partition at its `next`, skips
//! the `applied` lines, and applies the lines before the group's committed offset *quietly*:
//! they rebuild state, their decisions were delivered before the restart and are not emitted
//! again. Lines at or after the committed offset are decided as usual (at-least-once: the
//! Redis script makes a repeated revocation a no-op).
//!
//! **Where.** In Redis, beside the revocations: it is already a dependency that must be up
//! for `run` to make progress, it is durable when the deployment makes it so (AOF), and a
//! real redis-server is what the tests start. (A compacted Kafka topic, Kafka Streams' way,
//! would need a producer, topic creation rights and a read-to-end on every start, and
//! compaction cannot be observed on the test broker.) The bytes are split into chunks of
//! [`CHUNK`] under a generation number; a small head key names the current generation and is
//! switched only after every chunk is written, so a crash mid-write leaves the previous
//! checkpoint whole. Keys: `{prefix}checkpoint:{group}` (the head) and
//! `{prefix}checkpoint:{group}:{generation}:{i}` (chunks).
//!
//! **Layout.** One engine per instance today, so one checkpoint per consumer group, holding a
//! section per input partition (its offsets) and the engine's state. The state cannot be cut
//! per input partition while one engine mixes all partitions' keys; with issue 12's
//! repartitioning by key, each internal partition gets an engine of its own, and its
//! checkpoint (this format, one engine and the offsets of the one partition it reads) moves
//! with the partition: the head key gains the partition, `{prefix}checkpoint:{group}:{topic}:{partition}`.
//!
//! **Versions and damage.** The bytes open with a magic, a format version and a SHA-256 of
//! the rest. Another version is refused (and counted) with a message saying so; a damaged
//! checkpoint (checksum, truncation, malformed state) is refused as a whole, never half
//! loaded; then the service starts empty from the group's committed offsets, as without a
//! checkpoint. Rules whose definition changed since start empty; the others keep their state
//! ([`tokenwatch_core::engine::snapshot`]).

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::source::kafka::PartitionOffsets;
use tokenwatch_core::engine::Engine;
use tokenwatch_core::eventtime::Sequencer;

use crate::sinks::redis::{RedisOpError, RevocationWriter};
use tokenwatch_core::engine::snapshot::{Dec, Enc, SnapshotError};

/// The first bytes of every checkpoint.
pub const MAGIC: &[u8; 4] = b"TWCK";
/// The checkpoint format this build writes and reads. 2: each key's eviction class, and
/// `distinct_count` text values as (seeded hash, clipped copy).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes per Redis value.
pub const CHUNK: usize = 4 << 20;

use tokenwatch_core::eventtime::PartitionMark;

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub partitions: Vec<PartitionMark>,
    /// [`tokenwatch_core::engine::Engine::snapshot`] bytes.
    pub engine: Vec<u8>,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a tokenwatch checkpoint (bad magic bytes)")]
    Magic,
    #[error("checkpoint format {found}, this tokenwatch reads format {FORMAT_VERSION}: starting without it")]
    Version { found: u32 },
    #[error("checkpoint checksum mismatch: the data is damaged")]
    Checksum,
    #[error("{0}")]
    Damaged(#[from] SnapshotError),
}

impl Checkpoint {
    /// The checkpoint as bytes: magic, version, checksum, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.engine.len() + 64 * self.partitions.len() + 16);
        let mut e = Enc(&mut body);
        e.varu(self.partitions.len() as u64);
        for p in &self.partitions {
            e.bytes(p.topic.as_bytes());
            e.vari(p.partition.into());
            e.vari(p.next);
            e.varu(p.applied.len() as u64);
            for (o, l) in &p.applied {
                e.vari(o - p.next);
                e.varu((*l).into());
            }
        }
        e.bytes(&self.engine);
        let mut out = Vec::with_capacity(body.len() + 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        if bytes.len() < 40 || &bytes[..4] != MAGIC {
            return Err(CheckpointError::Magic);
        }
        let found = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if found != FORMAT_VERSION {
            return Err(CheckpointError::Version { found });
        }
        let body = &bytes[40..];
        if Sha256::digest(body).as_slice() != &bytes[8..40] {
            return Err(CheckpointError::Checksum);
        }
        let mut d = Dec::new(body);
        let n = d.count(4)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            let topic = d.str()?.to_string();
            let partition = i32::try_from(d.vari()?).map_err(|_| d.invalid("partition number out of range"))?;
            let next = d.vari()?;
            let m = d.count(2)?;
            let mut applied = Vec::with_capacity(m);
            for _ in 0..m {
                let o = next.wrapping_add(d.vari()?);
                let l = u32::try_from(d.varu()?).map_err(|_| d.invalid("line number out of range"))?;
                applied.push((o, l));
            }
            partitions.push(PartitionMark {
                topic,
                partition,
                next,
                applied,
            });
        }
        let engine = d.bytes()?.to_vec();
        if !d.done() {
            return Err(d.invalid("bytes after the end of the checkpoint").into());
        }
        Ok(Checkpoint { partitions, engine })
    }
}

/// The checkpoint's keys in Redis, and the generation last written.
pub struct CheckpointStore {
    head: String,
    generation: u64,
    /// Chunks of the generation last written or read, deleted after the next write.
    chunks: usize,
}

impl CheckpointStore {
    /// The checkpoint of consumer group `group` under the Redis key prefix.
    pub fn new(prefix: &str, group: &str) -> Self {
        CheckpointStore {
            head: format!("{prefix}checkpoint:{group}"),
            generation: 0,
            chunks: 0,
        }
    }

    /// The head key (for messages).
    pub fn key(&self) -> &str {
        &self.head
    }

    fn chunk_key(&self, generation: u64, i: usize) -> String {
        format!("{}:{generation}:{i}", self.head)
    }

    /// The stored checkpoint's bytes, `None` when there is none.
    pub async fn load(&mut self, redis: &mut RevocationWriter) -> Result<Option<Vec<u8>>, StoreError> {
        let head: Option<String> = redis.query(redis::cmd("GET").arg(&self.head)).await?;
        let Some(head) = head else { return Ok(None) };
        let bad = || StoreError::Malformed {
            key: self.head.clone(),
            head: head.clone(),
        };
        let mut parts = head.split(' ').map(str::parse::<u64>);
        let (Some(Ok(generation)), Some(Ok(chunks)), Some(Ok(len)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let mut bytes = Vec::new();
        for i in 0..chunks as usize {
            let key = self.chunk_key(generation, i);
            let chunk: Option<Vec<u8>> = redis.query(redis::cmd("GET").arg(&key)).await?;
            let chunk = chunk.ok_or(StoreError::MissingChunk { key })?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != len {
            return Err(StoreError::Length {
                key: self.head.clone(),
                got: bytes.len(),
                want: len,
            });
        }
        self.generation = generation;
        self.chunks = chunks as usize;
        Ok(Some(bytes))
    }

    /// Writes a new generation, then switches the head to it, then drops the previous one.
    pub async fn save(&mut self, redis: &mut RevocationWriter, bytes: &[u8]) -> Result<(), StoreError> {
        let generation = self.generation + 1;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        for (i, c) in chunks.iter().enumerate() {
            let _: () = redis
                .query(redis::cmd("SET").arg(self.chunk_key(generation, i)).arg(*c))
                .await?;
        }
        let head = format!("{generation} {} {}", chunks.len(), bytes.len());
        let _: () = redis.query(redis::cmd("SET").arg(&self.head).arg(head)).await?;
        for i in 0..self.chunks {
            let _: i64 = redis
                .query(redis::cmd("DEL").arg(self.chunk_key(self.generation, i)))
                .await?;
        }
        self.generation = generation;
        self.chunks = chunks.len();
        Ok(())
    }
}

/// Why the stored checkpoint could not be read or written (as opposed to [`CheckpointError`],
/// a checkpoint read but refused). At start, any of them fails the start (the stored state
/// cannot be trusted to be absent); on save they are logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read or write the checkpoint: {0}")]
    Redis(#[from] RedisOpError),
    #[error("cannot read the checkpoint: head {key} is malformed: `{head}`")]
    Malformed { key: String, head: String },
    #[error("cannot read the checkpoint: chunk {key} is missing")]
    MissingChunk { key: String },
    #[error("cannot read the checkpoint: {key} holds {got} bytes where its head says {want}")]
    Length { key: String, got: usize, want: u64 },
}

/// When and what `run` checkpoints, and what it restored at start.
pub struct Checkpointing {
    store: CheckpointStore,
    every: Duration,
    /// When the last checkpoint was written; `None` before the first of this run, which is
    /// due at once (before any offset is committed).
    last: Option<Instant>,
    /// Partitions the last checkpoint covered: one more is due at once, before its offsets
    /// are committed, or a restart would find them committed and their lines in no state.
    covered: usize,
    /// Restored marks, until the event-time buffer takes them.
    resume: Vec<PartitionMark>,
    committed: PartitionOffsets,
}

impl Checkpointing {
    /// Restores the stored checkpoint into `engine`, if there is one that can be trusted. A
    /// refused checkpoint (damaged, another format) is logged and counted, and the engine
    /// starts empty; only a Redis that cannot be read fails the start.
    pub async fn restore(
        mut store: CheckpointStore,
        every: Duration,
        redis: &mut RevocationWriter,
        engine: &mut Engine,
        metrics: &Metrics,
    ) -> Result<Checkpointing, StoreError> {
        let started = Instant::now();
        let bytes = store.load(redis).await?;
        let mut resume = Vec::new();
        if let Some(bytes) = bytes {
            let restored = Checkpoint::decode(&bytes).and_then(|c| Ok((engine.restore(&c.engine)?, c.partitions)));
            match restored {
                Ok((report, partitions)) => {
                    tracing::info!(
                        key = store.key(),
                        bytes = bytes.len(),
                        partitions = partitions.len(),
                        rules_kept = report.rules_kept,
                        rules_empty = report.rules_empty,
                        keys = report.keys,
                        revocations = report.revocations,
                        ms = started.elapsed().as_millis() as u64,
                        "checkpoint restored"
                    );
                    resume = partitions;
                }
                Err(e) => {
                    metrics.checkpoint_errors.with_label_values(&["restore"]).inc();
                    tracing::error!(
                        key = store.key(),
                        "checkpoint refused: {e}; starting with empty state from the group's committed offsets"
                    );
                }
            }
        }
        Ok(Checkpointing {
            store,
            every,
            last: None,
            covered: 0,
            resume,
            committed: PartitionOffsets::new(),
        })
    }

    /// Where the restored checkpoint wants each partition to start.
    pub fn start_offsets(&self) -> PartitionOffsets {
        self.resume
            .iter()
            .map(|m| ((m.topic.clone(), m.partition), m.next))
            .collect()
    }

    /// The group's committed offsets at start: lines before them were decided already.
    pub fn set_committed(&mut self, committed: PartitionOffsets) {
        self.committed = committed;
    }

    /// Hands the restored marks to the event-time buffer.
    pub fn hand_over<T>(&mut self, order: &mut Sequencer<T>) {
        order.resume(std::mem::take(&mut self.resume), &self.committed);
    }

    /// Whether a checkpoint is due: `checkpoint_interval` has passed since the last one, or
    /// a partition has started since.
    pub fn due<T>(&self, order: &Sequencer<T>) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= self.every) || order.positioned() > self.covered
    }

    /// Writes a checkpoint of `engine` and where `order` stands. A failure is logged and
    /// counted; the previous checkpoint stays whole, and the next attempt comes at the next
    /// interval.
    pub async fn save<T>(
        &mut self,
        order: &mut Sequencer<T>,
        engine: &Engine,
        redis: &mut RevocationWriter,
        metrics: &Metrics,
    ) {
        self.last = Some(Instant::now());
        self.covered = order.positioned();
        let mut state = Vec::new();
        engine.snapshot(&mut state);
        let bytes = Checkpoint {
            partitions: order.marks(),
            engine: state,
        }
        .encode();
        match self.store.save(redis, &bytes).await {
            Ok(()) => {
                metrics.checkpoint_bytes.set(bytes.len() as i64);
                tracing::debug!(key = self.store.key(), bytes = bytes.len(), "checkpoint saved");
            }
            Err(e) => {
                metrics.checkpoint_errors.with_label_values(&["save"]).inc();
                tracing::warn!(key = self.store.key(), error = %e, "checkpoint not saved");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            partitions: vec![
                PartitionMark {
                    topic: "logs".into(),
                    partition: 0,
                    next: 1_000,
                    applied: vec![(1_000, 1), (1_003, 0)],
                },
                PartitionMark {
                    topic: "logs".into(),
                    partition: 5,
                    next: 7,
                    applied: vec![],
                },
            ],
            engine: b"engine bytes".to_vec(),
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn damage_and_other_versions_are_refused_whole() {
        let bytes = sample().encode();
        for i in [0, 4, 20, 45, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let e = Checkpoint::decode(&b).unwrap_err();
            assert!(
                matches!(
                    e,
                    CheckpointError::Magic | CheckpointError::Version { .. } | CheckpointError::Checksum
                ),
                "byte {i}: {e}"
            );
        }
        let mut v2 = bytes.clone();
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&v2).unwrap_err(),
            CheckpointError::Version { found: 2 }
        );
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 3]).is_err(), "truncated");
        assert!(Checkpoint::decode(b"").is_err());
    }
}
