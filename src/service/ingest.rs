//! The ingest stage ([`super::shuffle`]): gateway lines in, records of the internal topic
//! out, one batch at a time:
//!
//! 1. [`Ingest::fill`]: read messages until the batch is full or its wait is over; decode
//!    their lines on `[shuffle] decode_threads` threads ([`Decoding`]) and send each use of a
//!    token, in the order the lines were read, as a record to the partition of its subject,
//!    and, when rules keyed by other fields are loaded, to the by-key topic's partitions of
//!    those fields' values ([`record::Router`]). A batch's records for one internal partition
//!    go out as one message ([`record::Frame`], each token in full once), when the batch is
//!    drained;
//! 2. [`Ingest::publish_watermarks`]: for every gateway partition read further, a watermark
//!    record to every partition of both internal topics (after the records it covers: one
//!    producer keeps their order);
//! 3. [`Ingest::settle`]: store and commit the gateway offsets of each batch whose records
//!    the broker acknowledged, with every earlier batch's; the next batches are read
//!    meanwhile (up to [`MAX_PENDING_BATCHES`] wait for their acknowledgements: waiting for
//!    each batch's before reading on left both the broker and this stage idle half the time);
//! 4. pause the gateway partitions that run more than `max_skew` ahead of the slowest this
//!    instance reads, so that the detect stage's event-time buffer stays small during a
//!    backlog.
//!
//! The producer is idempotent with librdkafka's gapless guarantee: records of one gateway
//! partition reach each internal partition once, in order, or the producer fails and this
//! stage stops before committing (its restart produces the batch again, and the detect stage
//! drops what it already has by the records' origin). Nothing is stateful here: any instance
//! can take over any gateway partition from its committed offset.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::consume::{next_message, BatchDeadline, BatchLimits, ReadingClock};
use super::metric_sync::MetricSync;
use super::retry::Shutdown;
use super::shuffle::{self, ShuffleConfig, ShuffleError};
use super::ServiceError;
use crate::metrics::{BatchCounts, Metrics};
use crate::source::kafka;
use tokenwatch_core::input::lines::{lines_in, Line};
use tokenwatch_core::pipeline::{DecodedBatch, ParallelDecode, Pipeline};
use tokenwatch_core::record::{self, Frame, Internal, Origin, Router, Watermark};
use tokenwatch_core::rules::Field;

/// Counts the acknowledgements of each batch's messages (a message's opaque is its batch);
/// the first failure's text is kept for the error.
#[derive(Default)]
pub(super) struct Deliveries {
    failed: Mutex<Option<String>>,
    acked: Mutex<HashMap<u64, u64>>,
}

impl ClientContext for Deliveries {}

impl Deliveries {
    /// The broker's (or librdkafka's) last word on one message of `batch`: delivered, or the
    /// reason it never will be.
    fn note(&self, batch: u64, failure: Option<String>) {
        if let Some(reason) = failure {
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert(reason);
            }
        }
        if let Ok(mut a) = self.acked.lock() {
            *a.entry(batch).or_default() += 1;
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        let failure = result.as_ref().err().map(|(e, _)| e.to_string());
        self.note(batch as u64, failure);
    }
}

/// Batches read on while earlier ones wait for the broker's acknowledgements.
pub(super) const MAX_PENDING_BATCHES: usize = 4;

/// A batch sent, waiting for its acknowledgements before its gateway offsets are committed.
struct Pending {
    batch: u64,
    sent: u64,
    /// The offset after the last message read of each gateway partition, at its end.
    offsets: Vec<((String, i32), i64)>,
}

/// A record's kind, as `tokenwatch_shuffle_produced_total`'s `kind` says.
#[derive(Clone, Copy)]
enum Produced {
    Event,
    EventByKey,
    Watermark,
}

impl Produced {
    const LABELS: [&'static str; 3] = ["event", "event_by_key", "watermark"];
}

/// The internal topics' producer, with what the current batch sent.
pub(super) struct Sender {
    producer: Arc<RecordProducer>,
    batch: u64,
    sent: u64,
    kinds: BatchCounts<3>,
}

impl Sender {
    pub(super) fn new(producer: Arc<RecordProducer>) -> Self {
        Sender {
            producer,
            batch: 0,
            sent: 0,
            kinds: BatchCounts::new(Produced::LABELS),
        }
    }

    /// Sends one message (a frame of records of one `kind`), waiting for room when
    /// librdkafka's queue is full.
    fn send(&mut self, topic: &str, partition: i32, frame: &Frame, kind: Produced) {
        if frame.is_empty() {
            return;
        }
        self.sent += 1;
        self.kinds.add_n(kind as usize, frame.len() as u64);
        let opaque = self.batch as usize;
        let mut record = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, opaque)
            .partition(partition)
            .payload(frame.bytes());
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    // Not retriable (a message too large, an unknown partition): counted as a
                    // failed delivery, which stops the stage before it commits.
                    self.producer.context().note(self.batch, Some(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Ends the current batch: publishes its counts, and says what it sent.
    fn end_batch(&mut self, metrics: &Metrics) -> (u64, u64) {
        self.kinds.publish(&metrics.shuffle_produced);
        let ended = (self.batch, self.sent);
        self.batch += 1;
        self.sent = 0;
        ended
    }

    /// Whether every message of `batch` (which sent `sent`) is acknowledged; forgets its count
    /// when it is.
    fn acknowledged(&self, batch: u64, sent: u64) -> bool {
        let Ok(mut acked) = self.producer.context().acked.lock() else {
            return false;
        };
        let done = acked.get(&batch).copied().unwrap_or(0) >= sent;
        if done {
            acked.remove(&batch);
        }
        done
    }

    /// The first failed delivery, if any.
    fn failed(&self) -> Option<String> {
        self.producer.context().failed.lock().ok().and_then(|f| f.clone())
    }
}

pub(super) type RecordProducer = ThreadedProducer<Deliveries>;

/// The internal topic's producer, with [`shuffle::producer_config`]'s settings.
pub(super) fn producer(client: rdkafka::ClientConfig, topic: &str) -> Result<Arc<RecordProducer>, ShuffleError> {
    let p = shuffle::producer_config(client)
        .create_with_context(Deliveries::default())
        .map_err(|source| ShuffleError::Producer {
            topic: topic.to_string(),
            source: Box::new(source),
        })?;
    Ok(Arc::new(p))
}

/// Where one gateway partition stands in this instance.
struct Read {
    /// The gateway topic's id in records ([`record::topic_id`]).
    topic: u32,
    /// Newest event time read; `i64::MIN` before any.
    watermark: i64,
    /// The watermark last published, whether it said idle, and when.
    published: i64,
    published_idle: bool,
    published_at: Instant,
    /// The offset after the last message read: what to commit once the batch is delivered.
    next: Option<i64>,
    last_active: Instant,
    paused: bool,
    /// Messages not read yet ([`kafka::Assigned::unread`]).
    unread: Option<i64>,
    /// A watermark record (the first may say "assigned, nothing read yet") was published.
    announced: bool,
}

impl Read {
    fn new(topic: &str, now: Instant) -> Self {
        Read {
            topic: record::topic_id(topic),
            watermark: i64::MIN,
            published: i64::MIN,
            published_idle: false,
            published_at: now,
            next: None,
            last_active: now,
            paused: false,
            unread: None,
            announced: false,
        }
    }

    /// Nothing new read for `timeout`, not paused here, and nothing known to wait in the
    /// broker or in librdkafka's queue (`unread`, from the consumer's statistics; a partition
    /// never read is not idle until its first statistics say it has nothing): the detect
    /// stage stops waiting for this partition (and alignment stops counting it as the
    /// slowest).
    fn idle(&self, now: Instant, timeout: Duration) -> bool {
        let waiting = match self.unread {
            Some(n) => n > 0,
            None => self.next.is_none(),
        };
        !self.paused && !waiting && now.duration_since(self.last_active) >= timeout
    }
}

pub(super) struct Parts {
    pub(super) source: kafka::Source,
    pub(super) assigned: kafka::Assignment,
    pub(super) out: Out,
    pub(super) idle_timeout: Duration,
    pub(super) max_skew_ms: i64,
}

/// What turns lines into records on the internal topics.
pub(super) struct Out {
    pub(super) pipeline: Pipeline,
    pub(super) sender: Sender,
    pub(super) shuffle: ShuffleConfig,
    /// The internal topics' partition counts (the by-key topic's when it exists).
    pub(super) partitions: Partitions,
    /// Where each use goes, following the rules.
    pub(super) router: Router,
    /// Threads decoding lines ([`Decoding`]).
    pub(super) decode_threads: usize,
    pub(super) limits: BatchLimits,
    pub(super) metrics: Arc<Metrics>,
}

/// The partition counts of the internal topics.
#[derive(Debug, Clone, Copy)]
pub(super) struct Partitions {
    pub(super) events: i32,
    /// `None` when no rule loaded at start needed the by-key topic.
    pub(super) by_key: Option<i32>,
}

impl Out {
    /// Follows a rule reload: the decoder's claims and the routing.
    fn replace_rules(&mut self, set: Arc<tokenwatch_core::rules::RuleSet>) {
        let unserved = self.router.set_rules(&set);
        if !unserved.is_empty() {
            let fields: Vec<String> = unserved.iter().map(Field::name).collect();
            tracing::warn!(
                fields = %fields.join(", "),
                topic = %self.shuffle.by_key_topic,
                "reloaded rules are keyed by fields that need the by-key topic, which is created only at start: restart to give those rules their events"
            );
        }
        self.pipeline.replace_rules(set);
    }
}

pub(super) struct Ingest {
    p: Parts,
    /// A random id per process, in watermark records.
    id: u64,
    read: HashMap<(String, i32), Read>,
    /// The key of `read` of the message being read.
    key: (String, i32),
    /// The rebalance count `read` follows ([`kafka::Assigned::epoch`]).
    rebalances: u64,
    decoding: Decoding,
    /// Batches sent whose offsets wait for the broker's acknowledgements, oldest first.
    pending: VecDeque<Pending>,
    buf: Vec<u8>,
    /// Idleness counts time spent reading only: waiting for the broker's acknowledgements
    /// (or a stalled broker) idles no partition.
    clock: ReadingClock,
    sync: MetricSync,
    /// Reloaded rule sets (which claims the decoder keeps follows the rules).
    rules: Option<tokio::sync::watch::Receiver<Arc<tokenwatch_core::rules::RuleSet>>>,
}

impl Ingest {
    pub(super) fn new(p: Parts) -> Result<Self, ServiceError> {
        let decoding = Decoding::new(&p.out.pipeline, p.out.decode_threads)?;
        Ok(Ingest {
            p,
            id: tokenwatch_core::hash::random_seeds()[1],
            read: HashMap::new(),
            key: (String::new(), 0),
            rebalances: u64::MAX,
            decoding,
            pending: VecDeque::new(),
            buf: Vec::new(),
            clock: ReadingClock::new(),
            sync: MetricSync::default(),
            rules: None,
        })
    }

    /// Follows the rules' reloads.
    pub(super) fn follow_rules(&mut self, rx: tokio::sync::watch::Receiver<Arc<tokenwatch_core::rules::RuleSet>>) {
        self.rules = Some(rx);
    }

    /// Runs batches until shutdown is asked or a record cannot be delivered.
    pub(super) async fn run(mut self, stop: &mut Shutdown) -> Result<(), ServiceError> {
        let mut outcome = loop {
            if stop.asked() {
                break Ok(());
            }
            if let Some(rx) = self.rules.as_mut() {
                if rx.has_changed().unwrap_or(false) {
                    let set = rx.borrow_and_update().clone();
                    self.p.out.replace_rules(set);
                    // The threads' decoders keep the claims of the rules they were forked with.
                    self.decoding = match Decoding::new(&self.p.out.pipeline, self.p.out.decode_threads) {
                        Ok(d) => d,
                        Err(e) => break Err(e),
                    };
                }
            }
            self.clock.resume();
            let n = self.fill(stop).await;
            self.clock.pause();
            self.publish_watermarks();
            let (batch, sent) = self.p.out.sender.end_batch(&self.p.out.metrics);
            if n > 0 || sent > 0 {
                let offsets = self.offsets();
                self.pending.push_back(Pending { batch, sent, offsets });
            }
            if let Err(e) = self.settle(MAX_PENDING_BATCHES, stop).await {
                break Err(e);
            }
            self.align();
            self.sync.sync(&self.p.out.pipeline, &self.p.out.metrics);
        };
        if outcome.is_ok() {
            outcome = self.settle(0, stop).await;
        }
        outcome
    }

    /// Step 1: reads and decodes a batch, sending its records. Returns the messages read.
    async fn fill(&mut self, stop: &mut Shutdown) -> usize {
        // The reading clock runs while this fills, so it times the batch too: one clock
        // reading before a message's lines and one after them (five per message were 4 % of
        // the samples of a `--role both` drain).
        let (start, timeout) = (self.clock.now(), self.p.idle_timeout);
        let deadline = BatchDeadline::new(self.p.out.limits.wait);
        let mut n = 0;
        note_unread(&self.p.assigned, &mut self.read);
        let mut messages = self.p.source.stream();
        loop {
            let Some(m) = next_message(&mut messages, deadline.next(n), stop).await else {
                break;
            };
            let now = self.clock.now();
            // The key of `read`, in a buffer kept for it (allocated once, not per message).
            let key = &mut self.key;
            key.0.clear();
            key.0.push_str(m.topic());
            key.1 = m.partition();
            if self.read.get(key).is_some_and(|r| r.idle(now, timeout)) {
                // A partition wakes up after a quiet spell: the others this instance reads get
                // `idle_timeout` (of reading time) to deliver too, said before the first record
                // of the one that woke, so that the detect stage does not run ahead with it.
                for r in self.read.values_mut().filter(|r| r.idle(now, timeout)) {
                    r.last_active = now;
                }
                publish_watermarks(&mut self.read, &mut self.buf, &mut self.p.out, self.id, now, timeout);
            }
            if follow_assignment(&self.p.assigned, &mut self.read, &mut self.rebalances, now) {
                // Before any record of the batch: every detect task learns of every gateway
                // partition read here, and waits for it until it delivers or goes idle. The
                // lines read so far go out first: a watermark follows the records it covers.
                self.decoding.drain(&mut self.p.out, &mut self.buf, &mut self.read);
                let now = self.clock.now();
                publish_watermarks(&mut self.read, &mut self.buf, &mut self.p.out, self.id, now, timeout);
            }
            let at = Origin {
                topic: record::topic_id(m.topic()),
                partition: m.partition(),
                offset: m.offset(),
                line: 0,
                use_index: 0,
            };
            let payload = m.payload().unwrap_or_default();
            self.decoding.read_lines(payload, at, &mut self.p.out, &mut self.buf);
            let read_at = self.clock.now();
            match self.read.get_mut(&self.key) {
                Some(r) => {
                    r.next = Some(m.offset() + 1);
                    r.last_active = read_at;
                }
                None => {
                    let mut r = Read::new(m.topic(), read_at);
                    r.next = Some(m.offset() + 1);
                    self.read.insert(self.key.clone(), r);
                }
            }
            n += 1;
            if n >= self.p.out.limits.max || read_at.duration_since(start) >= self.p.out.limits.wait {
                break;
            }
        }
        self.decoding.drain(&mut self.p.out, &mut self.buf, &mut self.read);
        n
    }

    /// Step 2: a watermark record per gateway partition read further (or not announced yet),
    /// to every internal partition.
    fn publish_watermarks(&mut self) {
        // Only for partitions still assigned here: a revoked one is its next owner's to speak
        // for (a word from here, "idle" say, would let the detect stage run on without it).
        follow_assignment(&self.p.assigned, &mut self.read, &mut self.rebalances, self.clock.now());
        note_unread(&self.p.assigned, &mut self.read);
        let (now, timeout) = (self.clock.now(), self.p.idle_timeout);
        publish_watermarks(&mut self.read, &mut self.buf, &mut self.p.out, self.id, now, timeout);
    }

    /// The offset after the last message read of each gateway partition assigned here.
    fn offsets(&self) -> Vec<((String, i32), i64)> {
        self.read
            .iter()
            .filter_map(|(k, r)| Some((k.clone(), r.next?)))
            .collect()
    }

    /// Step 3: commits the gateway offsets of every batch acknowledged whole, oldest first,
    /// waiting until at most `keep` batches are left unacknowledged; a refused record stops
    /// the stage before it commits anything after it.
    async fn settle(&mut self, keep: usize, stop: &mut Shutdown) -> Result<(), ServiceError> {
        let mut done = None;
        loop {
            if let Some(reason) = self.p.out.sender.failed() {
                return Err(ServiceError::Shuffle(ShuffleError::Delivery {
                    topic: self.p.out.shuffle.events_topic.clone(),
                    reason,
                }));
            }
            while let Some(b) = self.pending.front() {
                if !self.p.out.sender.acknowledged(b.batch, b.sent) {
                    break;
                }
                done = self.pending.pop_front();
            }
            if self.pending.len() <= keep {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                _ = stop.expired() => return Err(ServiceError::ShutdownTimeout),
            }
        }
        if let Some(b) = done {
            self.commit(&b.offsets, if keep == 0 { CommitMode::Sync } else { CommitMode::Async });
        }
        Ok(())
    }

    /// Stores and commits `offsets` (of a batch delivered whole), for the partitions still
    /// assigned here: a partition revoked meanwhile is its new owner's to commit.
    fn commit(&mut self, offsets: &[((String, i32), i64)], mode: CommitMode) {
        let safe: Vec<(&str, i32, i64)> = offsets
            .iter()
            .filter(|(k, _)| self.read.contains_key(k))
            .map(|((t, p), o)| (t.as_str(), *p, *o))
            .collect();
        let stored = kafka::store(&self.p.source, &safe);
        if let Err(e) = stored.and_then(|_| kafka::commit(&self.p.source, mode)) {
            tracing::warn!(error = %e, "offset commit failed; the batch will be read again");
        }
    }

    /// Pauses the partitions more than `max_skew` of event time ahead of the slowest active
    /// one this instance reads, and resumes those back within it.
    fn align(&mut self) {
        let now = self.clock.now();
        let slowest = self
            .read
            .values()
            .filter(|r| !r.idle(now, self.p.idle_timeout) && r.watermark != i64::MIN)
            .map(|r| r.watermark)
            .min();
        let mut toggles = Vec::new();
        for ((t, p), r) in &mut self.read {
            let ahead = slowest.is_some_and(|s| r.watermark > s.saturating_add(self.p.max_skew_ms));
            if ahead != r.paused {
                r.paused = ahead;
                r.last_active = now;
                toggles.push((t.clone(), *p, ahead));
            }
        }
        for (t, p, pause) in toggles {
            if let Err(e) = kafka::pause(&self.p.source, &t, p, pause) {
                tracing::warn!(error = %e, "cannot pause or resume a partition");
            }
        }
        self.p
            .out
            .metrics
            .paused_partitions
            .set(self.read.values().filter(|r| r.paused).count() as i64);
    }
}

/// Follows the assignment when a rebalance happened since `seen`: forgets revoked partitions,
/// even those assigned again since (their owner reads on from the committed offset), and
/// starts tracking assigned ones. Whether one was added.
fn follow_assignment(
    assigned: &kafka::Assignment,
    read: &mut HashMap<(String, i32), Read>,
    seen: &mut u64,
    now: Instant,
) -> bool {
    let Ok(mut a) = assigned.lock() else { return false };
    if a.epoch() == *seen {
        return false;
    }
    let (revoked, epoch) = a.take_revoked();
    *seen = epoch;
    for k in &revoked {
        read.remove(k);
    }
    read.retain(|k, _| a.now.contains(k));
    let mut added = false;
    for k in &a.now {
        if !read.contains_key(k) {
            let mut r = Read::new(&k.0, now);
            r.unread = a.unread(k);
            read.insert(k.clone(), r);
            added = true;
        }
    }
    added
}

/// Takes librdkafka's latest word on the messages of each partition not read yet (its
/// statistics come every few hundred milliseconds: once per batch is often enough).
fn note_unread(assigned: &kafka::Assignment, read: &mut HashMap<(String, i32), Read>) {
    let Ok(a) = assigned.lock() else { return };
    for (k, r) in read.iter_mut() {
        r.unread = a.unread(k);
    }
}

/// Watermark records, in one message to every internal partition, for each gateway partition
/// not announced yet, read further, gone idle or back, or not published for `idle_timeout`.
/// Whether a partition is idle is this stage's word: the detect stage waits for a partition
/// until its reader says it is idle, so a partition whose reader died holds event time back
/// until a new reader takes it over. The repeat every `idle_timeout` tells a detect task that
/// restored a checkpoint (and missed the last word) where each partition stands.
fn publish_watermarks(
    read: &mut HashMap<(String, i32), Read>,
    buf: &mut Vec<u8>,
    out: &mut Out,
    producer: u64,
    now: Instant,
    idle_timeout: Duration,
) {
    let mut frame = Frame::default();
    for ((topic, partition), r) in read.iter_mut() {
        let idle = r.idle(now, idle_timeout);
        let due = !r.announced
            || r.watermark > r.published
            || idle != r.published_idle
            || now.duration_since(r.published_at) >= idle_timeout;
        if !due {
            continue;
        }
        r.announced = true;
        r.published = r.watermark;
        r.published_idle = idle;
        r.published_at = now;
        buf.clear();
        let w = Watermark {
            producer,
            topic: record::topic_id(topic),
            partition: *partition,
            ts_ms: r.watermark,
            idle,
        };
        record::encode_watermark(&w, buf);
        frame.write_or_start_over(|f| f.push(buf), |full| send_everywhere(out, full));
    }
    send_everywhere(out, &frame);
}

/// Sends a frame of watermark records to every internal partition.
fn send_everywhere(out: &mut Out, frame: &Frame) {
    let Out {
        sender,
        shuffle,
        partitions,
        ..
    } = out;
    for (name, n) in topics(shuffle, *partitions) {
        for to in 0..n {
            sender.send(name, to, frame, Produced::Watermark);
        }
    }
}

/// Each internal topic with its partition count.
fn topics(shuffle: &ShuffleConfig, partitions: Partitions) -> impl Iterator<Item = (&str, i32)> {
    let by_key = partitions.by_key.map(|n| (shuffle.by_key_topic.as_str(), n));
    std::iter::once((shuffle.events_topic.as_str(), partitions.events)).chain(by_key)
}

/// Lines per decoding batch: large enough that handing a batch to a thread costs little per
/// line, small enough that the threads get work early in a small Kafka batch.
const DECODE_BATCH_LINES: usize = 512;
/// Bytes per decoding batch, for long lines.
const DECODE_BATCH_BYTES: usize = 1 << 20;

/// Decoding of the lines read, on `decode_threads` threads (`replay`'s [`ParallelDecode`]).
/// Batches come back in the order they were handed out, so records are sent, and watermarks
/// raised, in the order the lines were read, whatever the number of threads. With one thread
/// the batch is decoded on the stage's own.
struct Decoding {
    threads: Option<ParallelDecode>,
    /// The batch being filled, and where each of its lines came from.
    filling: DecodedBatch,
    origins: Vec<Origin>,
    /// The origins of the batches the threads hold, oldest first.
    in_flight: VecDeque<Vec<Origin>>,
    spare: Vec<DecodedBatch>,
    /// The newest event time of each gateway partition in the batch being sent.
    newest: Vec<((u32, i32), i64)>,
    frames: Frames,
}

/// The records of the batch being sent, a [`Frame`] per internal partition, each sent as one
/// message when the batch ends (or when it is full).
#[derive(Default)]
struct Frames {
    /// By partition: `{prefix}events`' and `{prefix}events-by-key`'s.
    events: Vec<Frame>,
    by_key: Vec<Frame>,
}

impl Frames {
    /// The frames of `to`'s partitions, with its topic and the kind of its records.
    fn of<'a>(&'a mut self, to: Internal, shuffle: &'a ShuffleConfig) -> (&'a mut Vec<Frame>, &'a str, Produced) {
        match to {
            Internal::Subject => (&mut self.events, &shuffle.events_topic, Produced::Event),
            Internal::ByKey => (&mut self.by_key, &shuffle.by_key_topic, Produced::EventByKey),
        }
    }

    /// Writes a record into the frame of `to`'s `partition` with `write` (which says whether
    /// it fit), sending the frame first when it is full.
    fn add(
        &mut self,
        to: Internal,
        partition: i32,
        write: impl FnMut(&mut Frame) -> bool,
        sender: &mut Sender,
        shuffle: &ShuffleConfig,
    ) {
        let (frames, topic, kind) = self.of(to, shuffle);
        let i = usize::try_from(partition).unwrap_or_default();
        if frames.len() <= i {
            frames.resize_with(i + 1, Frame::default);
        }
        frames[i].write_or_start_over(write, |full| sender.send(topic, partition, full, kind));
    }

    /// Sends every frame holding records.
    fn flush(&mut self, sender: &mut Sender, shuffle: &ShuffleConfig) {
        for to in [Internal::Subject, Internal::ByKey] {
            let (frames, topic, kind) = self.of(to, shuffle);
            for (partition, frame) in (0..).zip(frames.iter_mut()) {
                sender.send(topic, partition, frame, kind);
                frame.clear();
            }
        }
    }
}

impl Decoding {
    fn new(pipeline: &Pipeline, threads: usize) -> Result<Self, ServiceError> {
        let threads = match threads {
            0 | 1 => None,
            n => Some(ParallelDecode::new(pipeline.decoder(), n, 2).map_err(ServiceError::DecodeThreads)?),
        };
        Ok(Decoding {
            threads,
            filling: DecodedBatch::new(),
            origins: Vec::new(),
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            newest: Vec::new(),
            frames: Frames::default(),
        })
    }

    /// Splits a message into lines for decoding; `at` is the message.
    fn read_lines(&mut self, payload: &[u8], at: Origin, out: &mut Out, buf: &mut Vec<u8>) {
        for (number, line) in (1u32..).zip(lines_in(payload, out.limits.max_line)) {
            match line {
                Line::Ok([]) => {}
                Line::Ok(l) => {
                    if self.push(l, Origin { line: number, ..at }) {
                        self.submit(out, buf);
                    }
                }
                Line::TooLong(_) => out.pipeline.line_too_long(),
            }
        }
    }

    /// Adds a line to the batch being filled; whether the batch is full.
    fn push(&mut self, line: &[u8], origin: Origin) -> bool {
        let lines = self.filling.lines_mut();
        lines.push(line);
        self.origins.push(origin);
        self.origins.len() >= DECODE_BATCH_LINES || lines.bytes() >= DECODE_BATCH_BYTES
    }

    /// Hands the batch being filled to the threads (or decodes it here), and frames the
    /// records of those decoded while the threads have enough to do.
    fn submit(&mut self, out: &mut Out, buf: &mut Vec<u8>) {
        if self.origins.is_empty() {
            return;
        }
        let mut batch = std::mem::replace(&mut self.filling, self.spare.pop().unwrap_or_default());
        let origins = std::mem::take(&mut self.origins);
        match &mut self.threads {
            None => {
                out.pipeline.decode_batch(&mut batch);
                self.frame(batch, origins, out, buf);
            }
            Some(t) => {
                t.submit(batch);
                self.in_flight.push_back(origins);
                // Keep every thread busy: take results back once all queues are primed.
                if t.in_flight() >= 2 * t.workers() {
                    self.receive_one(out, buf);
                }
            }
        }
    }

    /// Sends the records of every line pushed so far, then raises the watermarks of the
    /// partitions they came from: a watermark never goes out ahead of a record it covers.
    fn drain(&mut self, out: &mut Out, buf: &mut Vec<u8>, read: &mut HashMap<(String, i32), Read>) {
        self.submit(out, buf);
        while !self.in_flight.is_empty() {
            self.receive_one(out, buf);
        }
        self.frames.flush(&mut out.sender, &out.shuffle);
        for ((_, partition), r) in read.iter_mut() {
            if let Some((_, ts)) = self.newest.iter().find(|(k, _)| *k == (r.topic, *partition)) {
                r.watermark = r.watermark.max(*ts);
            }
        }
        self.newest.clear();
    }

    fn receive_one(&mut self, out: &mut Out, buf: &mut Vec<u8>) {
        let (Some(t), Some(origins)) = (&mut self.threads, self.in_flight.pop_front()) else {
            return;
        };
        match t.recv() {
            Some(batch) => self.frame(batch, origins, out, buf),
            // The threads only stop when dropped; a batch they lost is a bug, not input.
            None => tracing::error!(lines = origins.len(), "a decoding thread stopped"),
        }
    }

    /// Writes the records of each use of a token of a decoded batch ([`Router`]) into the
    /// frames of their partitions, noting the newest event time of each gateway partition.
    /// The frames go out when the Kafka batch is drained (or when one is full): a token
    /// is then written in full once per message for the whole batch, not per decoded batch.
    fn frame(&mut self, mut batch: DecodedBatch, origins: Vec<Origin>, out: &mut Out, buf: &mut Vec<u8>) {
        let Out {
            pipeline,
            sender,
            shuffle,
            router,
            ..
        } = out;
        let (newest, frames) = (&mut self.newest, &mut self.frames);
        pipeline.batch_uses(&batch, |i, use_index, ev, tie| {
            let origin = Origin {
                use_index,
                ..origins[i]
            };
            let from = (origin.topic, origin.partition);
            match newest.iter_mut().find(|(k, _)| *k == from) {
                Some((_, ts)) => *ts = (*ts).max(ev.ts_ms),
                None => newest.push((from, ev.ts_ms)),
            }
            // A use without a token goes by key only (no rule keyed by token or subject can
            // use it), and a use without a value for a key field not by that field.
            router.route(ev, origin, tie, buf, |to, partition, r| {
                frames.add(to, partition, |f| f.push_event(r), sender, shuffle);
            });
        });
        batch.clear();
        self.spare.push(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle needs the idle timeout without a message, no pause, and nothing known to wait
    /// unread; a partition never read is not idle before its reader knows it has nothing.
    #[test]
    fn a_partition_is_idle_only_when_quiet_and_nothing_waits_unread() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let later = t0 + Duration::from_secs(2);
        let mut r = Read::new("logs", t0);
        assert!(!r.idle(later, timeout), "never read, nothing known");
        r.unread = Some(12);
        assert!(!r.idle(later, timeout), "messages wait unread");
        r.unread = Some(0);
        assert!(r.idle(later, timeout));
        assert!(!r.idle(t0, timeout), "not quiet for the timeout yet");
        r.paused = true;
        assert!(!r.idle(later, timeout), "paused here, not idle");
        let mut read_before = Read::new("logs", t0);
        read_before.next = Some(7);
        assert!(
            read_before.idle(later, timeout),
            "read before, no statistics yet: the clock"
        );
    }

    /// A batch's gateway offsets may be committed only once the broker acknowledged every
    /// record of it: with the broker's answers slowed down, a batch just sent is not
    /// acknowledged, and it is once they arrive; an earlier batch is not taken for a later.
    #[test]
    fn a_batch_is_acknowledged_only_once_all_its_records_are() {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("internal", 2, 1).unwrap();
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", mock.bootstrap_servers());
        let metrics = Metrics::new();
        let mut s = Sender::new(producer(client, "internal").unwrap());
        // Warm up: metadata and the idempotent producer's id, before the broker slows.
        s.send("internal", 0, &frame(&[b"first"]), Produced::Event);
        let warm = s.end_batch(&metrics);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.acknowledged(warm.0, warm.1) {
            assert!(Instant::now() < deadline, "the first record is never acknowledged");
            std::thread::sleep(Duration::from_millis(10));
        }
        mock.broker_round_trip_time(1, Duration::from_millis(500)).unwrap();
        for i in 0..10 {
            s.send(
                "internal",
                i % 2,
                &frame(&[b"record", b"record", b"record"]),
                Produced::Event,
            );
        }
        s.send("internal", 0, &Frame::default(), Produced::Event);
        let (batch, sent) = s.end_batch(&metrics);
        assert_eq!(sent, 10, "messages, an empty frame not sent");
        s.send("internal", 0, &frame(&[b"watermark"]), Produced::Watermark);
        let next = s.end_batch(&metrics);
        assert!(!s.acknowledged(batch, sent), "acknowledged before the broker answered");
        while !s.acknowledged(batch, sent) {
            assert!(Instant::now() < deadline, "never acknowledged");
            std::thread::sleep(Duration::from_millis(10));
        }
        while !s.acknowledged(next.0, next.1) {
            assert!(Instant::now() < deadline, "the next batch is never acknowledged");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(s.failed().is_none());
        assert_eq!(
            metrics.shuffle_produced.with_label_values(&["event"]).get(),
            31,
            "records counted by kind, per batch"
        );
    }

    fn frame(records: &[&[u8]]) -> Frame {
        let mut f = Frame::default();
        for r in records {
            assert!(f.push(r));
        }
        f
    }

    /// A decoded batch's records for one internal partition go out as one message, in the
    /// order they were added; a frame that would pass its bound goes out first.
    #[test]
    fn a_batch_sends_one_message_per_internal_partition() {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("events", 3, 1).unwrap();
        mock.create_topic("by-key", 2, 1).unwrap();
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", mock.bootstrap_servers());
        let metrics = Metrics::new();
        let mut s = Sender::new(producer(client, "events").unwrap());
        let shuffle = ShuffleConfig {
            events_topic: "events".into(),
            by_key_topic: "by-key".into(),
            ..ShuffleConfig::default()
        };
        let mut frames = Frames::default();
        for i in 0..10u8 {
            frames.add(Internal::Subject, 2, |f| f.push(&[i]), &mut s, &shuffle);
            frames.add(Internal::ByKey, 1, |f| f.push(&[i]), &mut s, &shuffle);
        }
        frames.add(Internal::Subject, 0, |f| f.push(b"x"), &mut s, &shuffle);
        assert_eq!(s.sent, 0, "nothing goes out before the batch ends");
        frames.flush(&mut s, &shuffle);
        assert_eq!(s.sent, 3);
        assert_eq!(
            frames.events[2].len() + frames.by_key[1].len(),
            0,
            "flushed frames start over"
        );
        let big = vec![0u8; record::FRAME_MAX_BYTES / 2];
        for _ in 0..3 {
            frames.add(Internal::Subject, 1, |f| f.push(&big), &mut s, &shuffle);
        }
        assert_eq!(s.sent, 5, "each big record after the first filled a frame");
        frames.flush(&mut s, &shuffle);
        let (_, sent) = s.end_batch(&metrics);
        assert_eq!(sent, 6);
        assert_eq!(metrics.shuffle_produced.with_label_values(&["event"]).get(), 14);
        assert_eq!(metrics.shuffle_produced.with_label_values(&["event_by_key"]).get(), 10);
    }
}
