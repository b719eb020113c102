//! The detect stage ([`super::shuffle`]): records of the internal topics in, decisions out,
//! with an engine per internal (topic, partition) (a *task*, as Kafka Streams calls it), one
//! batch at a time: fill → decide → deliver → commit, as the local loop ([`super::consume`]).
//! A task of `{prefix}events` runs the rules keyed by token id or subject; a task of
//! `{prefix}events-by-key` runs, for each record, the rules keyed by the fields that routed
//! it there ([`tokenwatch_core::record::EventRecord::scope`]).
//!
//! Each task orders its records as `replay` orders lines: a [`Sequencer`] whose sources are
//! the *gateway* partitions the records came from (their watermarks advanced by the records
//! and by the ingest stage's watermark records), so that event time is the gateway
//! partitions', whichever instance read them. A record whose origin (gateway partition,
//! offset, line, use) is not past the last one accepted from that gateway partition is a
//! repeat (an ingest instance produced the same lines again after a restart) and is dropped.
//!
//! A task's state is checkpointed on its own ([`crate::checkpoint`], key
//! `{prefix}checkpoint:{group}:{topic}:{partition}`, the internal topic's name in it): the engine, where each gateway partition
//! stands in it, and the internal offset from which the records not in it start. When a
//! rebalance assigns a partition, the rebalance callback pauses it; the loop restores its
//! checkpoint, seeks to that offset and resumes it; records before the group's committed
//! offset were decided before and rebuild state quietly. So the state moves with the
//! partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use tokio::sync::{mpsc, watch};

use super::consume::{deliver, forget_undone, next_message, rearm_tripped, BatchDeadline, BatchLimits, ReadingClock};
use super::feed::Undone;
use super::retry::Shutdown;
use super::{RunSummary, ServiceError};
use crate::checkpoint::{Checkpoint, CheckpointStore, Writer};
use crate::metrics::{BatchCounts, Metrics};
use crate::sinks::alerts::AlertSink;
use crate::sinks::RevocationStore;
use crate::source::kafka;
use tokenwatch_core::decision::Decision;
use tokenwatch_core::eventtime::{EventTimeConfig, PartitionMark, Sequencer};
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::record::{self, EventRecord, Record, TokenMemo};
use tokenwatch_core::rules::RuleSet;

/// How often the loop reads re-arm requests from Redis.
const REARM_EVERY: Duration = Duration::from_secs(1);

/// Where the detect loop reads, decides and writes: built by [`super::Service::run`].
pub(super) struct Parts {
    pub(super) limits: BatchLimits,
    pub(super) metrics: Arc<Metrics>,
    pub(super) source: kafka::Source,
    pub(super) assigned: kafka::Assignment,
    /// The internal topics: `{prefix}events`, and `{prefix}events-by-key` when read.
    pub(super) topics: Vec<String>,
    /// The gateway topics' partitions, awaited by every task from its start.
    pub(super) gateway: Vec<(String, i32)>,
    pub(super) store: RevocationStore,
    pub(super) alerts: AlertSink,
    pub(super) rules: Arc<RuleSet>,
    pub(super) reloads: Option<watch::Receiver<Arc<RuleSet>>>,
    pub(super) undone: Option<mpsc::Receiver<Undone>>,
    /// What each task's engine is built with.
    pub(super) pipeline: PipelineConfig,
    pub(super) event_time: EventTimeConfig,
    /// `(key prefix, group, interval)` of the tasks' checkpoints; `None`: none.
    pub(super) checkpoints: Option<(String, String, Duration)>,
}

/// A record waiting for its event-time turn, with the internal offset it was read at.
struct Queued {
    internal: i64,
    record: EventRecord,
}

/// One internal partition's engine and event-time buffer.
struct Task {
    pipeline: Pipeline,
    order: Sequencer<Queued>,
    /// Internal offsets of records held, with how many.
    held: BTreeMap<i64, u32>,
    /// The internal offset after the last record read.
    next: Option<i64>,
    /// Records before this internal offset were decided before a restart: applied quietly.
    quiet_below: i64,
    /// Per gateway partition, the origin (offset, line, use) of the last record accepted.
    last: HashMap<(u32, i32), (i64, u32, u8)>,
    checkpoint: Option<Writer>,
    checkpointed: Option<Instant>,
    /// Whether a checkpoint that names the internal partition's position was taken: until
    /// then, a restart would seek to the committed offset with no state for what is before.
    covered: bool,
    /// The tokens of its records, each decoded once.
    tokens: TokenMemo,
    /// Each gateway partition's source in `order` (a task never drops one).
    sources: HashMap<(u32, i32), usize>,
}

/// What became of a record, as `tokenwatch_shuffle_consumed_total`'s `result` says.
#[derive(Clone, Copy)]
enum Consumed {
    Refused,
    Watermark,
    Duplicate,
    Event,
}

impl Consumed {
    const LABELS: [&'static str; 4] = ["refused", "watermark", "duplicate", "event"];
}

impl Task {
    /// The internal offset up to which every record read is applied: the first held, else
    /// the one after the last read.
    fn safe(&self) -> Option<i64> {
        self.held.keys().next().copied().or(self.next)
    }

    /// Takes the records of the message read at internal offset `internal`, counting in
    /// `taken` what became of each; returns how many it read.
    fn take(&mut self, internal: i64, message: &[u8], now: Instant, taken: &mut BatchCounts<4>) -> usize {
        self.next = Some(internal + 1);
        let refuse = |taken: &mut BatchCounts<4>, e: record::RecordError| {
            tracing::warn!(offset = internal, error = %e, "internal record refused");
            taken.add(Consumed::Refused as usize);
        };
        let mut records = match record::records(message) {
            Ok(r) => r,
            Err(e) => {
                refuse(taken, e);
                return 1;
            }
        };
        let mut n = 0;
        while let Some(r) = records.next_record(Some(&mut self.tokens)) {
            n += 1;
            let consumed = match r {
                Err(e) => {
                    refuse(taken, e);
                    continue;
                }
                Ok(Record::Watermark(w)) => {
                    let src = self.source(w.topic, w.partition, now);
                    self.order.advance(src, w.ts_ms, now);
                    self.order.declare(src, w.idle);
                    Consumed::Watermark
                }
                Ok(Record::Event(r)) => self.hold(internal, r, now),
            };
            taken.add(consumed as usize);
        }
        n
    }

    /// The source of gateway partition (`topic`, `partition`) in the sequencer.
    fn source(&mut self, topic: u32, partition: i32, now: Instant) -> usize {
        let order = &mut self.order;
        *self
            .sources
            .entry((topic, partition))
            .or_insert_with(|| order.assign(&source_name(topic), partition, now))
    }

    fn hold(&mut self, internal: i64, r: EventRecord, now: Instant) -> Consumed {
        let o = r.origin;
        let at = (o.offset, o.line, o.use_index);
        let last = self.last.entry((o.topic, o.partition)).or_insert((i64::MIN, 0, 0));
        if at <= *last {
            return Consumed::Duplicate;
        }
        *last = at;
        let src = self.source(o.topic, o.partition, now);
        let line = o.line.saturating_mul(2) + u32::from(o.use_index);
        if self.order.restored(src, o.offset, line) {
            return Consumed::Duplicate;
        }
        self.order.read(src, o.offset, now);
        let (ts, tie) = (r.ts_ms, r.tie);
        self.order
            .push(src, o.offset, line, ts, tie, Queued { internal, record: r }, now);
        *self.held.entry(internal).or_default() += 1;
        Consumed::Event
    }

    /// Applies the records whose turn has come; returns how many.
    fn decide(&mut self, now: Instant, out: &mut Vec<Decision>) -> usize {
        let Task {
            pipeline,
            order,
            held,
            quiet_below,
            ..
        } = self;
        order.release(now, |q, _| {
            if let Some(c) = held.get_mut(&q.internal) {
                *c -= 1;
                if *c == 0 {
                    held.remove(&q.internal);
                }
            }
            let before = out.len();
            pipeline.apply_record(&q.record, out);
            if q.internal < *quiet_below {
                out.truncate(before);
            }
        })
    }
}

/// The name a gateway partition's source has in a task's sequencer and checkpoint: its
/// topic id (records carry the id, not the name).
fn source_name(topic: u32) -> String {
    format!("{topic:08x}")
}

/// A task's internal partition: the index of its topic in [`Parts::topics`], and the
/// partition.
type TaskId = (usize, i32);

pub(super) struct Detect {
    p: Parts,
    tasks: HashMap<TaskId, Task>,
    decisions: Vec<Decision>,
    rebalances: u64,
    /// Idleness of gateway partitions is measured in time spent reading, as in the local loop.
    clock: ReadingClock,
    tripped_seen: HashMap<Arc<str>, i64>,
    last_rearm_check: Instant,
    late_seen: u64,
    /// The most records the tasks' event-time buffers held together at the end of a batch.
    held_peak: usize,
    summary: RunSummary,
}

impl Detect {
    pub(super) fn new(p: Parts) -> Self {
        Detect {
            p,
            tasks: HashMap::new(),
            decisions: Vec::new(),
            rebalances: u64::MAX,
            clock: ReadingClock::new(),
            tripped_seen: HashMap::new(),
            last_rearm_check: Instant::now(),
            late_seen: 0,
            held_peak: 0,
            summary: RunSummary::default(),
        }
    }

    /// Runs batches until shutdown is asked, or a batch's side effects could not finish
    /// within the shutdown timeout.
    pub(super) async fn run(mut self, stop: &mut Shutdown) -> Result<RunSummary, ServiceError> {
        let outcome = loop {
            if stop.asked() {
                break Ok(());
            }
            self.between_batches().await;
            if let Err(e) = self.follow_assignment(stop).await {
                break Err(e);
            }
            self.clock.resume();
            let read = self.fill(stop).await;
            self.clock.pause();
            let applied = self.decide();
            if read == 0 && applied == 0 && self.decisions.is_empty() {
                continue;
            }
            let Parts {
                metrics, alerts, store, ..
            } = &mut self.p;
            match deliver(&mut self.decisions, metrics, alerts, store, stop).await {
                Ok(n) => self.summary.revocations_written += n,
                Err(e) => break Err(e),
            }
            self.commit(CommitMode::Async).await;
        };
        if outcome.is_ok() {
            self.commit(CommitMode::Sync).await;
        }
        outcome.map(|()| self.summary)
    }

    /// Swaps in a reloaded rule set, forgets undone revocations, re-arms rules on request.
    async fn between_batches(&mut self) {
        if let Some(rx) = self.p.reloads.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                self.p.rules = rx.borrow_and_update().clone();
                for t in self.tasks.values_mut() {
                    t.pipeline.replace_rules(self.p.rules.clone());
                }
            }
        }
        if let Some(rx) = self.p.undone.as_mut() {
            let mut all: Vec<&mut Pipeline> = self.tasks.values_mut().map(|t| &mut t.pipeline).collect();
            forget_undone(rx, &mut all, &self.p.metrics);
        }
        if self.last_rearm_check.elapsed() >= REARM_EVERY {
            self.last_rearm_check = Instant::now();
            for t in self.tasks.values_mut() {
                rearm_tripped(&mut t.pipeline, &mut self.p.store, &mut self.tripped_seen).await;
            }
        }
    }

    /// Drops the tasks of revoked partitions and starts those of assigned ones: state
    /// restored, position set, then resumed.
    async fn follow_assignment(&mut self, stop: &mut Shutdown) -> Result<(), ServiceError> {
        let (revoked, now) = {
            let Ok(mut a) = self.p.assigned.lock() else {
                return Ok(());
            };
            if a.epoch() == self.rebalances {
                return Ok(());
            }
            let (revoked, epoch) = a.take_revoked();
            self.rebalances = epoch;
            (revoked, a.now.clone())
        };
        let id = |topics: &[String], (t, k): &(String, i32)| topics.iter().position(|x| x == t).map(|i| (i, *k));
        for r in &revoked {
            if let Some(id) = id(&self.p.topics, r) {
                self.tasks.remove(&id);
            }
        }
        let assigned: Vec<TaskId> = now.iter().filter_map(|a| id(&self.p.topics, a)).collect();
        self.tasks.retain(|k, _| assigned.contains(k));
        for k in assigned {
            if self.tasks.contains_key(&k) {
                continue;
            }
            if stop.asked() {
                break;
            }
            let task = self.start_task(k).await?;
            self.tasks.insert(k, task);
            if let Err(e) = kafka::pause(&self.p.source, &self.p.topics[k.0], k.1, false) {
                tracing::warn!(error = %e, topic = %self.p.topics[k.0], partition = k.1, "cannot resume a restored partition");
            }
        }
        Ok(())
    }

    /// A task for internal partition `id`, its checkpoint restored and the consumer
    /// positioned where the checkpoint's records start.
    async fn start_task(&mut self, id: TaskId) -> Result<Task, ServiceError> {
        let (topic, k) = (self.p.topics[id.0].clone(), id.1);
        let mut pipeline =
            Pipeline::new(self.p.rules.clone(), None, self.p.pipeline.clone()).map_err(ServiceError::Pipeline)?;
        let mut order = Sequencer::new(self.p.event_time);
        let mut start = None;
        let mut checkpoint = None;
        if let (Some((prefix, group, _)), RevocationStore::Redis(w)) = (&self.p.checkpoints, &mut self.p.store) {
            let mut store = CheckpointStore::new(prefix, &format!("{group}:{topic}:{k}"));
            let mut redis = w.handle();
            if let Some(bytes) = store.load(&mut redis).await? {
                match restore(&bytes, &topic, &mut pipeline, &mut order, self.clock.now()) {
                    Ok(at) => start = at,
                    Err(e) => {
                        self.p.metrics.checkpoint_errors.with_label_values(&["restore"]).inc();
                        tracing::error!(
                            key = store.key(),
                            "checkpoint refused: {e}; partition {k} of {topic} starts with empty state"
                        );
                    }
                }
            }
            checkpoint = Some(Writer::new(store, redis, self.p.metrics.clone()));
        }
        // After the restore (a source assigned before it would not take its mark).
        let now = self.clock.now();
        for (t, p) in &self.p.gateway {
            let src = order.assign(&source_name(record::topic_id(t)), *p, now);
            order.declare(src, false);
        }
        let committed = kafka::seek(&self.p.source, &topic, k, start)?;
        tracing::info!(%topic, partition = k, start, committed, "detect task started");
        Ok(Task {
            pipeline,
            order,
            held: BTreeMap::new(),
            next: start,
            quiet_below: committed.unwrap_or(i64::MIN),
            last: HashMap::new(),
            checkpoint,
            checkpointed: None,
            covered: start.is_some(),
            tokens: TokenMemo::new(self.p.pipeline.token_cache_bytes),
            sources: HashMap::new(),
        })
    }

    /// Step 1: reads records until the batch holds `max` of them or its wait is over;
    /// returns the messages read.
    async fn fill(&mut self, stop: &mut Shutdown) -> usize {
        // The reading clock runs while this reads, so it times the batch too (one clock
        // reading per message, as in the other stages' loops).
        let (start, deadline) = (self.clock.now(), BatchDeadline::new(self.p.limits.wait));
        let (mut n, mut records) = (0, 0);
        let mut taken = BatchCounts::new(Consumed::LABELS);
        let mut messages = self.p.source.stream();
        loop {
            let Some(m) = next_message(&mut messages, deadline.next(n), stop).await else {
                break;
            };
            let now = self.clock.now();
            // A message of a partition whose task is not started (assigned in this poll) is
            // read again after its seek.
            let topic = self.p.topics.iter().position(|t| t == m.topic());
            if let Some(t) = topic.and_then(|i| self.tasks.get_mut(&(i, m.partition()))) {
                records += t.take(m.offset(), m.payload().unwrap_or_default(), now, &mut taken);
            }
            n += 1;
            if records >= self.p.limits.max || now.duration_since(start) >= self.p.limits.wait {
                break;
            }
        }
        taken.publish(&self.p.metrics.shuffle_consumed);
        n
    }

    /// Step 2: every task applies the records whose turn has come.
    fn decide(&mut self) -> usize {
        let now = self.clock.now();
        let mut n = 0;
        let (mut held, mut late, mut keys) = (0, 0, 0);
        for t in self.tasks.values_mut() {
            n += t.decide(now, &mut self.decisions);
            held += t.order.len();
            late += t.pipeline.engine().stats().late_events;
            keys += t.pipeline.engine().tracked_keys();
        }
        let m = &self.p.metrics;
        self.held_peak = self.held_peak.max(held);
        m.held_lines.set(held as i64);
        m.held_lines_peak.set(self.held_peak as i64);
        m.tracked_keys.set(keys as i64);
        m.late_events.inc_by(late.saturating_sub(self.late_seen));
        self.late_seen = late;
        n
    }

    /// Step 4: checkpoints the tasks whose checkpoint is due, then stores and commits each
    /// task's safe internal offset. A synchronous commit (the last) waits for the checkpoints;
    /// so does the first that names a task's internal position. All are started before any
    /// is waited for, so the tasks' writes overlap.
    async fn commit(&mut self, mode: CommitMode) {
        if let Some(every) = self.p.checkpoints.as_ref().map(|c| c.2) {
            let last = matches!(mode, CommitMode::Sync);
            let mut awaited = Vec::new();
            for (&(topic, k), t) in self.tasks.iter_mut() {
                if last || t.checkpointed.is_none_or(|at| at.elapsed() >= every) {
                    let first_cover = save(k, t, &self.p.topics[topic]).await;
                    if last || first_cover {
                        awaited.push((topic, k));
                    }
                }
            }
            for id in awaited {
                if let Some(w) = self.tasks.get_mut(&id).and_then(|t| t.checkpoint.as_mut()) {
                    w.wait().await;
                }
            }
        }
        let safe: Vec<(&str, i32, i64)> = self
            .tasks
            .iter()
            .filter_map(|(&(topic, k), t)| Some((self.p.topics[topic].as_str(), k, t.safe()?)))
            .collect();
        let stored = kafka::store(&self.p.source, &safe);
        if let Err(e) = stored.and_then(|_| kafka::commit(&self.p.source, mode)) {
            tracing::warn!(error = %e, "offset commit failed; the batch will be read again");
        }
        self.summary.batches += 1;
    }
}

/// Restores a task's checkpoint: the engine, the gateway partitions' marks into `order`;
/// returns the internal offset its records start at.
fn restore(
    bytes: &[u8],
    topic: &str,
    pipeline: &mut Pipeline,
    order: &mut Sequencer<Queued>,
    now: Instant,
) -> Result<Option<i64>, crate::checkpoint::CheckpointError> {
    let c = Checkpoint::decode(bytes)?;
    pipeline.engine_mut().restore(&c.engine)?;
    let (internal, gateway): (Vec<PartitionMark>, Vec<PartitionMark>) =
        c.partitions.into_iter().partition(|m| m.topic == topic);
    let sources: Vec<(String, i32)> = gateway.iter().map(|m| (m.topic.clone(), m.partition)).collect();
    order.resume(gateway, &HashMap::new());
    // The gateway partitions the state covers hold event time back from the first record on,
    // as they did before the checkpoint, until their reader says they are idle: records of
    // one of them may come after others' in the internal partition.
    for (t, p) in sources {
        let src = order.assign(&t, p, now);
        order.declare(src, false);
    }
    Ok(internal.first().map(|m| m.next))
}

/// Starts a task's checkpoint beside the loop ([`Writer`]). Returns whether it is the first
/// to name the internal partition's position, which must land before that offset is committed.
async fn save(k: i32, t: &mut Task, topic: &str) -> bool {
    if t.checkpoint.is_none() {
        return false;
    }
    t.checkpointed = Some(Instant::now());
    let mut partitions = t.order.marks();
    let next = t.safe();
    if let Some(next) = next {
        partitions.push(PartitionMark {
            topic: topic.to_string(),
            partition: k,
            next,
            applied: Vec::new(),
        });
    }
    let Some(writer) = t.checkpoint.as_mut() else {
        return false;
    };
    // The group's assignment makes this instance the partition's only writer: no fencing.
    writer
        .save(t.pipeline.engine(), partitions, Duration::ZERO, false)
        .await;
    next.is_some() && !std::mem::replace(&mut t.covered, true)
}
