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
//! `{prefix}checkpoint:{group}:{instance}:{generation}:{i}` (chunks; heads written before
//! fencing name `{prefix}checkpoint:{group}:{generation}:{i}`, still read).
//!
//! **Fencing.** With `--role local` the head is one per group, and two instances of one
//! group would overwrite each other's state (split by key, each internal partition has a
//! checkpoint of its own, and the group's assignment makes its writer the only one).
//! So the head names the instance that wrote it (a random id per process) and when; an
//! instance that finds it written by another one less than 3 × `checkpoint_interval` ago
//! leaves it alone, warns once and counts `tokenwatch_checkpoint_conflicts_total`. The head
//! is switched by a compare-and-set script, so two instances never both take it; a checkpoint
//! whose writer stopped is taken over after the 3 intervals.
//!
//! **Layout.** With `--role local`, one engine per instance, so one checkpoint per consumer
//! group, holding a section per input partition (its offsets) and the engine's state (which
//! cannot be cut per input partition: one engine mixes all partitions' keys). Split by key,
//! each internal partition has an engine of its own, and its checkpoint (this format: one
//! engine, the gateway partitions' marks and the internal partition's position) moves with the
//! partition: `{prefix}checkpoint:{group}.detect:{topic}:{partition}`.
//!
//! **Beside the loop.** The loop takes the snapshot; encoding and the Redis writes run in a
//! task ([`Writer`]), so the loop reads on meanwhile.
//!
//! **Versions and damage.** The bytes open with a magic, a format version and a SHA-256 of
//! the rest. Another version is refused (and counted) with a message saying why: a newer
//! one, or formats 1 and 2, whose state keys were `ahash` values that depended on how that
//! tokenwatch was built (CPU features, version), so that another build would have found no
//! state under them ([`tokenwatch_core::hash`]); a damaged checkpoint (checksum, truncation,
//! malformed state) is refused as a whole, never half loaded; then the service starts empty
//! from the group's committed offsets, as without a checkpoint. Rules whose definition changed since start empty; the others keep their state
//! ([`tokenwatch_core::engine::snapshot`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::source::kafka::PartitionOffsets;
use tokenwatch_core::engine::Engine;
use tokenwatch_core::eventtime::Sequencer;

use crate::sinks::redis::{RedisHandle, RedisOpError};
use tokenwatch_core::engine::snapshot::{Dec, Enc, SnapshotError};

/// The first bytes of every checkpoint.
pub const MAGIC: &[u8; 4] = b"TWCK";
/// The checkpoint format this build writes and reads.
/// 1: windows, cooldowns, revocations; 2: and the rules' revocation budgets, each key's
/// eviction class, `distinct_count` text values as (seeded hash, clipped copy), revocations'
/// feed ids and the aggregation groups; 3: the same, with every hash in it the same on every
/// build ([`tokenwatch_core::hash`]). 1 and 2 are refused.
pub const FORMAT_VERSION: u32 = 3;
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
    #[error("checkpoint format {found} is newer than this tokenwatch's ({FORMAT_VERSION}): starting without it")]
    Version { found: u32 },
    #[error(
        "checkpoint format {found} was written by an earlier tokenwatch, whose state keys depended on how it was built: starting without it (format {FORMAT_VERSION} keys are the same on every build)"
    )]
    Older { found: u32 },
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
        if found > FORMAT_VERSION {
            return Err(CheckpointError::Version { found });
        }
        if found < FORMAT_VERSION {
            return Err(CheckpointError::Older { found });
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

/// The checkpoint's keys in Redis, the generation last written, and this instance's id.
pub struct CheckpointStore {
    head: String,
    /// Random per process: the head names who wrote it, and chunk keys carry it, so two
    /// instances never write the same chunk key.
    instance: String,
    generation: u64,
    /// The head this instance last wrote (its text): what [`CheckpointStore::keep_alive`]
    /// renews. `None` when another instance has taken the head since.
    mine: Option<(String, Head)>,
}

/// What a head key says: where the chunks are, and who wrote them when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    generation: u64,
    chunks: usize,
    len: u64,
    /// `None` in heads written before fencing (format: three numbers).
    writer: Option<(String, i64)>,
}

impl Head {
    /// `{generation} {chunks} {len}` or `{generation} {chunks} {len} {instance} {written_ms}`.
    fn parse(text: &str) -> Option<Head> {
        let parts: Vec<&str> = text.split(' ').collect();
        let (generation, chunks, len) = (
            parts.first()?.parse().ok()?,
            parts.get(1)?.parse().ok()?,
            parts.get(2)?.parse().ok()?,
        );
        let writer = match parts.len() {
            3 => None,
            5 if parts[3].bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some((parts[3].to_string(), parts[4].parse().ok()?))
            }
            _ => return None,
        };
        Some(Head {
            generation,
            chunks,
            len,
            writer,
        })
    }

    fn text(&self) -> String {
        let mut t = format!("{} {} {}", self.generation, self.chunks, self.len);
        if let Some((who, at)) = &self.writer {
            t.push_str(&format!(" {who} {at}"));
        }
        t
    }
}

/// Whether a save wrote the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// Another live instance of the group writes this checkpoint: left as it is.
    Fenced,
}

/// Switches the head only if it still holds what was read before the chunks were written:
/// two instances cannot both take it.
const SWITCH_HEAD: &str =
    "if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";

impl CheckpointStore {
    /// The checkpoint of consumer group `group` under the Redis key prefix.
    pub fn new(prefix: &str, group: &str) -> Self {
        CheckpointStore {
            head: format!("{prefix}checkpoint:{group}"),
            instance: format!("{:016x}", tokenwatch_core::hash::random_seeds()[0]),
            generation: 0,
            mine: None,
        }
    }

    /// The head key (for messages).
    pub fn key(&self) -> &str {
        &self.head
    }

    /// This process's id in the head it writes.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn chunk_key(&self, head: &Head, i: usize) -> String {
        match &head.writer {
            Some((who, _)) => format!("{}:{who}:{}:{i}", self.head, head.generation),
            None => format!("{}:{}:{i}", self.head, head.generation),
        }
    }

    async fn read_head(&self, redis: &mut RedisHandle) -> Result<Option<(String, Head)>, StoreError> {
        let text: Option<String> = redis.query(redis::cmd("GET").arg(&self.head)).await?;
        let Some(text) = text else { return Ok(None) };
        match Head::parse(&text) {
            Some(h) => Ok(Some((text, h))),
            None => Err(StoreError::Malformed {
                key: self.head.clone(),
                head: text,
            }),
        }
    }

    /// The stored checkpoint's bytes, `None` when there is none.
    pub async fn load(&mut self, redis: &mut RedisHandle) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((_, head)) = self.read_head(redis).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        for i in 0..head.chunks {
            let key = self.chunk_key(&head, i);
            let chunk: Option<Vec<u8>> = redis.query(redis::cmd("GET").arg(&key)).await?;
            let chunk = chunk.ok_or(StoreError::MissingChunk { key })?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != head.len {
            return Err(StoreError::Length {
                key: self.head.clone(),
                got: bytes.len(),
                want: head.len,
            });
        }
        self.generation = head.generation;
        Ok(Some(bytes))
    }

    /// Writes a new generation, then switches the head to it, then drops the one it replaced.
    /// Nothing is written when the head was written by another instance less than `fence` ago
    /// (`now_ms`, wall clock): two instances of one group must not overwrite each other's
    /// checkpoint ([`Saved::Fenced`]). With `release` (the last save before a graceful stop)
    /// the head is written as if long ago, so that the next instance takes it at once.
    pub async fn save(
        &mut self,
        redis: &mut RedisHandle,
        bytes: &[u8],
        now_ms: i64,
        fence: Duration,
        release: bool,
    ) -> Result<Saved, StoreError> {
        let before = self.read_head(redis).await?;
        let other_live = |h: &Head| {
            h.writer
                .as_ref()
                .is_some_and(|(who, at)| *who != self.instance && now_ms.saturating_sub(*at) < fence.as_millis() as i64)
        };
        if before.as_ref().is_some_and(|(_, h)| other_live(h)) {
            return Ok(Saved::Fenced);
        }
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        let head = Head {
            generation: self.generation.max(before.as_ref().map_or(0, |(_, h)| h.generation)) + 1,
            chunks: chunks.len(),
            len: bytes.len() as u64,
            writer: Some((self.instance.clone(), if release { 0 } else { now_ms })),
        };
        for (i, c) in chunks.iter().enumerate() {
            let _: () = redis
                .query(redis::cmd("SET").arg(self.chunk_key(&head, i)).arg(*c))
                .await?;
        }
        let expected = before.as_ref().map_or("", |(text, _)| text.as_str());
        let switched = self.switch_head(redis, expected, &head).await?;
        // Either the chunks of the head replaced, or (another instance switched it first) ours.
        let stale = match (switched, &before) {
            (true, Some((_, old))) => Some(old.clone()),
            (true, None) => None,
            (false, _) => Some(head.clone()),
        };
        if let Some(old) = stale {
            for i in 0..old.chunks {
                let _: i64 = redis.query(redis::cmd("DEL").arg(self.chunk_key(&old, i))).await?;
            }
        }
        if !switched {
            self.mine = None;
            return Ok(Saved::Fenced);
        }
        self.generation = head.generation;
        self.mine = Some((head.text(), head));
        Ok(Saved::Written)
    }

    /// Sets the head to `new` if it still reads `expected` ("" for none), atomically.
    async fn switch_head(&self, redis: &mut RedisHandle, expected: &str, new: &Head) -> Result<bool, StoreError> {
        let cmd = redis::cmd("EVAL")
            .arg(SWITCH_HEAD)
            .arg(1)
            .arg(&self.head)
            .arg(expected)
            .arg(new.text())
            .clone();
        let switched: i64 = redis.query(&cmd).await?;
        Ok(switched == 1)
    }

    /// Renews the time in the head this instance wrote last (if no other instance took it
    /// since): an instance with nothing to checkpoint (no traffic, a rebalance under way) is
    /// still alive and keeps the head from being taken over.
    pub async fn keep_alive(&mut self, redis: &mut RedisHandle, now_ms: i64) -> Result<(), StoreError> {
        let Some((text, head)) = self.mine.take() else {
            return Ok(());
        };
        let renewed = Head {
            writer: Some((self.instance.clone(), now_ms)),
            ..head
        };
        if self.switch_head(redis, &text, &renewed).await? {
            self.mine = Some((renewed.text(), renewed));
        }
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
    /// The encoding thread did not finish (the runtime is stopping).
    #[error("the checkpoint was not encoded: {0}")]
    Encode(String),
}

/// What a write handed back: the store (its generation moved on), and how it went.
struct Done {
    store: CheckpointStore,
    outcome: Result<Saved, StoreError>,
    bytes: usize,
    /// The snapshot's buffer, emptied, for the next snapshot.
    buffer: Vec<u8>,
}

/// Writes one checkpoint key beside the consume loop. The loop takes the snapshot (the
/// engine is its own, and a checkpoint is of one instant between batches); framing it (a
/// SHA-256 of every byte) and the Redis round trips (the chunks, the head's switch, the old
/// chunks' removal) run in a task while the loop reads on: at a million live tokens they
/// are most of the time a checkpoint takes, and the loop used to read nothing meanwhile.
/// One write at a time per key: a save waits for the one before it, so generations land in
/// order and at most two snapshots are in memory.
///
/// **Why offsets may be committed before the checkpoint lands.** A restart restores the
/// newest checkpoint that landed and rebuilds quietly from its positions up to the
/// committed offsets (module doc): a write that lands late, or fails, leaves an older
/// checkpoint, the same case as a crash between two checkpoints. What an older checkpoint
/// cannot stand in for is one that names a partition it does not: that partition would
/// restart at its committed offset with no state for the lines before it. So a caller
/// [`Writer::wait`]s for a checkpoint that covers a partition for the first time before it
/// commits that partition's offsets.
pub struct Writer {
    key: String,
    /// The store between writes; `None` while a write has it (or after a writer task died).
    idle: Option<CheckpointStore>,
    busy: Option<JoinHandle<Done>>,
    redis: RedisHandle,
    metrics: Arc<Metrics>,
    /// Whether the fencing warning was given (it is given once).
    warned_conflict: bool,
    /// The last snapshot's buffer, back from its write: the next snapshot is written into
    /// memory already mapped, instead of a growing vector copied and faulted in page by page.
    buffer: Vec<u8>,
}

impl Writer {
    pub fn new(store: CheckpointStore, redis: RedisHandle, metrics: Arc<Metrics>) -> Writer {
        Writer {
            key: store.key().to_string(),
            idle: Some(store),
            busy: None,
            redis,
            metrics,
            warned_conflict: false,
            buffer: Vec::new(),
        }
    }

    /// The head key (for messages).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Snapshots `engine` with the `partitions` it covers, and starts writing it; waits first
    /// for the write before it. The loop's pause (the wait and the snapshot) is counted in
    /// `tokenwatch_checkpoint_pause_seconds`. `fence` and `release` are
    /// [`CheckpointStore::save`]'s.
    pub async fn save(&mut self, engine: &Engine, partitions: Vec<PartitionMark>, fence: Duration, release: bool) {
        let paused = Instant::now();
        self.wait().await;
        let Some(mut store) = self.idle.take() else { return };
        let mut state = std::mem::take(&mut self.buffer);
        engine.snapshot(&mut state);
        let c = Checkpoint {
            partitions,
            engine: state,
        };
        self.metrics.checkpoint_pause.observe(paused.elapsed().as_secs_f64());
        let (mut redis, metrics) = (self.redis.clone(), self.metrics.clone());
        self.busy = Some(tokio::spawn(async move {
            let started = Instant::now();
            // CPU work (the checksum of every byte) off the runtime's workers: the loop's task
            // may be waiting for one.
            let encoded = tokio::task::spawn_blocking(move || {
                let bytes = c.encode();
                let mut buffer = c.engine;
                buffer.clear();
                (bytes, buffer)
            })
            .await;
            let (outcome, bytes, buffer) = match encoded {
                Ok((bytes, buffer)) => (
                    store
                        .save(&mut redis, &bytes, crate::service::now_ms(), fence, release)
                        .await,
                    bytes.len(),
                    buffer,
                ),
                Err(e) => (Err(StoreError::Encode(e.to_string())), 0, Vec::new()),
            };
            metrics.checkpoint_write.observe(started.elapsed().as_secs_f64());
            Done {
                store,
                outcome,
                bytes,
                buffer,
            }
        }));
    }

    /// Waits for the write under way, if any, and reports how it went: a failure is logged
    /// and counted, the previous checkpoint stays whole, and the next save tries again.
    pub async fn wait(&mut self) {
        let Some(task) = self.busy.take() else { return };
        let done = match task.await {
            Ok(done) => done,
            Err(e) => {
                self.metrics.checkpoint_errors.with_label_values(&["save"]).inc();
                return tracing::error!(
                    key = self.key,
                    "checkpoint writer failed: {e}; no more checkpoints are written"
                );
            }
        };
        match &done.outcome {
            Ok(Saved::Written) => {
                self.metrics.checkpoint_bytes.set(done.bytes as i64);
                tracing::debug!(key = self.key, bytes = done.bytes, "checkpoint saved");
            }
            Ok(Saved::Fenced) => {
                self.metrics.checkpoint_conflicts.inc();
                if !std::mem::replace(&mut self.warned_conflict, true) {
                    tracing::warn!(
                        key = self.key,
                        "another live instance writes this checkpoint, so it is left as that instance wrote it; \
                         with --role local run one instance per consumer group (--role both shares partitions between instances)"
                    );
                }
            }
            Err(e) => {
                self.metrics.checkpoint_errors.with_label_values(&["save"]).inc();
                tracing::warn!(key = self.key, error = %e, "checkpoint not saved");
            }
        }
        self.idle = Some(done.store);
        self.buffer = done.buffer;
    }

    /// Renews this instance's claim on the head ([`CheckpointStore::keep_alive`]) unless a
    /// write is under way (it renews the claim itself); a failure is only logged.
    async fn keep_alive(&mut self, now_ms: i64) {
        if self.busy.as_ref().is_some_and(JoinHandle::is_finished) {
            self.wait().await;
        }
        let Some(store) = self.idle.as_mut() else { return };
        if let Err(e) = store.keep_alive(&mut self.redis, now_ms).await {
            tracing::debug!(key = self.key, error = %e, "checkpoint head not renewed");
        }
    }
}

/// When and what `run` checkpoints, and what it restored at start.
pub struct Checkpointing {
    writer: Writer,
    every: Duration,
    /// When the last checkpoint was taken; `None` before the first of this run, which is
    /// due at once (before any offset is committed).
    last: Option<Instant>,
    /// Partitions the last checkpoint covered: one more is due at once, and waited for
    /// before its offsets are committed, or a restart would find them committed and their
    /// lines in no state.
    covered: usize,
    /// Restored marks, until the event-time buffer takes them.
    resume: Vec<PartitionMark>,
    /// When the head was last renewed without a checkpoint ([`Checkpointing::keep_alive`]).
    renewed: Option<Instant>,
    /// The next save is the last: it releases the head to the next instance.
    stopping: bool,
    committed: PartitionOffsets,
}

impl Checkpointing {
    /// Restores the stored checkpoint into `engine`, if there is one that can be trusted. A
    /// refused checkpoint (damaged, another format) is logged and counted, and the engine
    /// starts empty; only a Redis that cannot be read fails the start.
    pub async fn restore(
        mut store: CheckpointStore,
        every: Duration,
        mut redis: RedisHandle,
        engine: &mut Engine,
        metrics: Arc<Metrics>,
    ) -> Result<Checkpointing, StoreError> {
        let started = Instant::now();
        let bytes = store.load(&mut redis).await?;
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
            writer: Writer::new(store, redis, metrics),
            every,
            last: None,
            covered: 0,
            resume,
            renewed: None,
            stopping: false,
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

    /// Between batches with nothing to do: renews this instance's claim on the head once per
    /// interval ([`CheckpointStore::keep_alive`]; the claim lapses after 3 intervals, as if
    /// this instance had stopped).
    pub async fn keep_alive(&mut self) {
        let since = self.renewed.max(self.last);
        if since.is_none_or(|t| t.elapsed() < self.every) {
            return;
        }
        self.renewed = Some(Instant::now());
        self.writer.keep_alive(crate::service::now_ms()).await;
    }

    /// Makes the next save the last one of this process: it releases the head, so that the
    /// instance that follows (a deploy) checkpoints at once instead of being fenced; and it
    /// is waited for.
    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// Checkpoints `engine` and where `order` stands ([`Writer::save`]): written beside the
    /// loop, except the first to cover a partition and the last before a stop, which are
    /// waited for.
    pub async fn save<T>(&mut self, order: &mut Sequencer<T>, engine: &Engine) {
        self.last = Some(Instant::now());
        let first_cover = order.positioned() > self.covered;
        self.covered = order.positioned();
        self.writer
            .save(engine, order.marks(), self.every * 3, self.stopping)
            .await;
        if first_cover || self.stopping {
            self.writer.wait().await;
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

    /// A checkpoint of format 1 or 2 (an earlier tokenwatch, whose state keys depended on
    /// how it was built) is refused, saying so: restored by another build, its state would be
    /// there and no event would find it.
    #[test]
    fn an_older_format_is_refused_with_the_reason() {
        let mut bytes = sample().encode();
        for found in [1u32, 2] {
            bytes[4..8].copy_from_slice(&found.to_le_bytes());
            let e = Checkpoint::decode(&bytes).unwrap_err();
            assert_eq!(e, CheckpointError::Older { found });
            assert!(e.to_string().contains("depended on how it was built"), "{e}");
        }
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
                    CheckpointError::Magic
                        | CheckpointError::Version { .. }
                        | CheckpointError::Older { .. }
                        | CheckpointError::Checksum
                ),
                "byte {i}: {e}"
            );
        }
        let mut newer = bytes.clone();
        newer[4..8].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&newer).unwrap_err(),
            CheckpointError::Version {
                found: FORMAT_VERSION + 1
            }
        );
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 3]).is_err(), "truncated");
        assert!(Checkpoint::decode(b"").is_err());
    }

    /// Heads written before fencing (three numbers) still read; new ones name their writer;
    /// anything else is malformed, and an instance id is hex only.
    #[test]
    fn heads_old_and_new_read_back() {
        let old = Head::parse("7 2 5000000").unwrap();
        assert_eq!(
            (old.generation, old.chunks, old.len, old.writer.clone()),
            (7, 2, 5_000_000, None)
        );
        assert_eq!(old.text(), "7 2 5000000");
        let new = Head {
            writer: Some(("00ab12".into(), 1_795_910_400_000)),
            ..old
        };
        assert_eq!(Head::parse(&new.text()), Some(new));
        for bad in ["", "7 2", "7 2 x", "7 2 5 ab", "7 2 5 a:b 1", "7 2 5 ab 1 2"] {
            assert_eq!(Head::parse(bad), None, "{bad}");
        }
    }
}
