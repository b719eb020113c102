//! The consume loop, one batch at a time, in four named steps:
//!
//! 1. [`Consume::fill`]: read messages until the batch is full or its wait is over, decoding
//!    their lines into the event-time buffer;
//! 2. [`Consume::decide`]: run the engine over the lines whose turn has come (event time,
//!    across partitions), pausing partitions that run too far ahead;
//! 3. [`Consume::deliver`]: the batch's side effects — alert lines flushed, revocations
//!    acknowledged by Redis — retried until done;
//! 4. [`Consume::commit`]: checkpoint when due (written beside the loop), then commit the
//!    offsets of what is done.
//!
//! Offsets follow side effects: nothing past an unwritten revocation or an undelivered alert
//! line is committed. Between batches the loop swaps in a reloaded rule set, forgets the
//! revocations `tokenwatch unrevoke` undid, and re-arms rules an operator asked to re-arm. On shutdown it commits, synchronously, the offsets of every
//! batch it finished, and checkpoints only when every decision it holds was delivered.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_core::Stream;

use rdkafka::consumer::{CommitMode, MessageStream};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::{mpsc, watch};

use super::feed::Undone;
use super::metric_sync::MetricSync;
use super::retry::{deliver_alerts, write_with_retry, Shutdown};
use super::{now_ms, RunSummary, ServiceError};
use crate::checkpoint::Checkpointing;
use crate::metrics::Metrics;
use crate::sinks::alerts::AlertSink;
use crate::sinks::redis::{Kind, Revocation};
use crate::sinks::RevocationStore;
use crate::source::kafka;
use tokenwatch_core::decision::Decision;
use tokenwatch_core::eventtime::Sequencer;
use tokenwatch_core::input::lines::{lines_in, Line};
use tokenwatch_core::pipeline::{HeldLine, Pipeline};
use tokenwatch_core::rules::RuleSet;

/// How often the loop reads re-arm requests from Redis.
const REARM_EVERY: Duration = Duration::from_secs(1);

/// Batch bounds, from [`super::ServiceConfig`].
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchLimits {
    pub(super) max: usize,
    pub(super) wait: Duration,
    pub(super) max_line: usize,
}

/// Where the loop reads, decides and writes: built by [`super::Service::run`].
pub(super) struct Parts {
    pub(super) limits: BatchLimits,
    pub(super) metrics: Arc<Metrics>,
    pub(super) pipeline: Pipeline,
    pub(super) store: RevocationStore,
    pub(super) source: kafka::Source,
    pub(super) assigned: kafka::Assignment,
    pub(super) alerts: AlertSink,
    pub(super) checkpoints: Option<Checkpointing>,
    /// Reloaded rule sets; `None` for fixed rules.
    pub(super) rules: Option<watch::Receiver<Arc<RuleSet>>>,
    /// Revocations undone by `tokenwatch unrevoke` ([`super::feed`]); `None` without Redis.
    pub(super) undone: Option<mpsc::Receiver<Undone>>,
    pub(super) order: Sequencer<HeldLine>,
}

/// The loop's state between steps.
pub(super) struct Consume {
    p: Parts,
    clock: ReadingClock,
    /// The current batch's decisions, until delivered.
    decisions: Vec<Decision>,
    /// The rebalance count the event-time buffer follows ([`follow_assignment`]).
    rebalances: u64,
    sync: MetricSync,
    /// Per tripped rule, the wall-clock second this instance first saw it tripped.
    tripped_seen: HashMap<Arc<str>, i64>,
    last_rearm_check: Instant,
    summary: RunSummary,
}

impl Consume {
    pub(super) fn new(mut p: Parts) -> Self {
        if let Some(c) = p.checkpoints.as_mut() {
            c.hand_over(&mut p.order);
        }
        Consume {
            p,
            clock: ReadingClock::new(),
            decisions: Vec::new(),
            rebalances: u64::MAX,
            sync: MetricSync::default(),
            tripped_seen: HashMap::new(),
            last_rearm_check: Instant::now(),
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
            let read = self.fill(stop).await;
            let applied = self.decide();
            if read == 0 && applied == 0 && self.decisions.is_empty() {
                self.idle().await;
                continue;
            }
            if let Err(e) = self.deliver(stop).await {
                break Err(e);
            }
            self.commit().await;
        };
        self.finish(outcome).await
    }

    /// A round with nothing read or applied: metrics, and the checkpoint head kept alive.
    async fn idle(&mut self) {
        self.sync.sync(&self.p.pipeline, &self.p.metrics);
        if let Some(c) = self.p.checkpoints.as_mut() {
            c.keep_alive().await;
        }
    }

    /// Swaps in a reloaded rule set, and re-arms the rules an operator asked to re-arm.
    async fn between_batches(&mut self) {
        if let Some(rx) = self.p.rules.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                let set = rx.borrow_and_update().clone();
                self.p.pipeline.replace_rules(set);
            }
        }
        if let Some(rx) = self.p.undone.as_mut() {
            forget_undone(rx, &mut [&mut self.p.pipeline], &self.p.metrics);
        }
        if self.last_rearm_check.elapsed() >= REARM_EVERY {
            self.last_rearm_check = Instant::now();
            rearm_tripped(&mut self.p.pipeline, &mut self.p.store, &mut self.tripped_seen).await;
        }
    }

    /// Step 1: reads messages until a batch is full or its wait is over (or shutdown is
    /// asked), decoding their lines into the event-time buffer. Returns the messages read.
    async fn fill(&mut self, stop: &mut Shutdown) -> usize {
        follow_assignment(
            &mut self.p.order,
            &self.p.assigned,
            &mut self.rebalances,
            self.clock.now(),
        );
        self.clock.resume();
        let n = self.read_batch(stop).await;
        self.clock.pause();
        n
    }

    async fn read_batch(&mut self, stop: &mut Shutdown) -> usize {
        let Parts {
            limits,
            pipeline,
            source,
            order,
            assigned,
            ..
        } = &mut self.p;
        let mut n = 0usize;
        // The reading clock runs while this reads, so it times the batch too (one clock
        // reading per message).
        let (start, deadline) = (self.clock.now(), BatchDeadline::new(limits.wait));
        let mut messages = source.stream();
        loop {
            let Some(m) = next_message(&mut messages, deadline.next(n), stop).await else {
                return n;
            };
            let now = self.clock.now();
            // A rebalance runs inside the poll: a partition revoked stops holding the clock
            // at once, and one that came back forgets its place before its first message.
            follow_assignment(order, assigned, &mut self.rebalances, now);
            let at = order.assign(m.topic(), m.partition(), now);
            if let Some(payload) = m.payload() {
                hold_message(pipeline, order, (at, m.offset()), payload, limits.max_line, now);
            }
            order.read(at, m.offset(), now);
            n += 1;
            if n >= limits.max || now.duration_since(start) >= limits.wait {
                return n;
            }
        }
    }

    /// Step 2: runs the engine over every line whose turn has come, then pauses the
    /// partitions that run too far ahead and resumes those the slowest has caught up with.
    /// Returns the lines applied.
    fn decide(&mut self) -> usize {
        let now = self.clock.now();
        let Parts {
            pipeline,
            order,
            source,
            metrics,
            assigned,
            ..
        } = &mut self.p;
        note_unread(order, assigned);
        let decisions = &mut self.decisions;
        let n = order.release(now, |line, quiet| {
            let before = decisions.len();
            pipeline.apply_held(&line, decisions);
            if quiet {
                // Decided and delivered before a restart: the line only rebuilds state.
                decisions.truncate(before);
            }
        });
        for t in order.skew(now) {
            if let Err(e) = kafka::pause(source, &t.topic, t.partition, t.pause) {
                tracing::warn!(error = %e, "cannot pause or resume a partition");
            }
        }
        metrics.paused_partitions.set(order.paused() as i64);
        metrics.held_lines.set(order.len() as i64);
        metrics.held_lines_peak.set(order.peak() as i64);
        metrics
            .event_time_forced
            .inc_by(order.forced().saturating_sub(metrics.event_time_forced.get()));
        n
    }

    /// Step 3: the batch's side effects, each retried until done: alert lines, then
    /// revocations. An error means the shutdown timeout passed first.
    async fn deliver(&mut self, stop: &mut Shutdown) -> Result<(), ServiceError> {
        let Parts {
            metrics, alerts, store, ..
        } = &mut self.p;
        self.summary.revocations_written += deliver(&mut self.decisions, metrics, alerts, store, stop).await?;
        Ok(())
    }

    /// Step 4: checkpoints when due, then stores the safe offsets of every partition (what
    /// the batch finished with) and commits them asynchronously.
    async fn commit(&mut self) {
        let Parts {
            metrics,
            pipeline,
            source,
            checkpoints,
            order,
            ..
        } = &mut self.p;
        // Checkpoint before committing: a checkpoint never covers less than the committed
        // offsets' lines minus those it can rebuild quietly.
        if let Some(c) = checkpoints.as_mut() {
            if c.due(order) {
                c.save(order, pipeline.engine()).await;
            }
        }
        let stored = kafka::store(source, &order.safe_offsets());
        if let Err(e) = stored.and_then(|_| kafka::commit(source, CommitMode::Async)) {
            tracing::warn!(error = %e, "offset commit failed; the batch will be read again");
        }
        self.summary.batches += 1;
        self.sync.sync(pipeline, metrics);
    }

    /// After the last batch: the batches' commits were asynchronous and may not have reached
    /// the group (or failed), so the offset store (every finished batch's offsets, of the
    /// partitions assigned now) is committed once more, and waited for. Nothing of an
    /// unfinished batch was stored.
    async fn finish(mut self, outcome: Result<(), ServiceError>) -> Result<RunSummary, ServiceError> {
        let p = &mut self.p;
        match kafka::commit(&p.source, CommitMode::Sync) {
            Ok(()) => tracing::debug!("final offset commit"),
            Err(e) => tracing::warn!(error = %e, "final offset commit failed; the last batches will be read again"),
        }
        // State is checkpointed only when every decision it holds was delivered.
        if let (Ok(()), Some(c)) = (&outcome, p.checkpoints.as_mut()) {
            c.stopping();
            c.save(&mut p.order, p.pipeline.engine()).await;
        }
        self.summary.stats = p.pipeline.stats.clone();
        outcome.map(|()| self.summary)
    }
}

/// How long a batch waits for messages: 250 ms for its first, then until `wait` after it
/// began. Kept as deadlines, so that waiting for each message reads no clock (a timeout
/// reads one to set its deadline, for every message of a drain).
pub(super) struct BatchDeadline {
    first: tokio::time::Instant,
    last: tokio::time::Instant,
}

impl BatchDeadline {
    pub(super) fn new(wait: Duration) -> Self {
        let start = tokio::time::Instant::now();
        // (As `tokio::time::timeout` does, a wait too long to add means "no deadline".)
        let after = |d| {
            start
                .checked_add(d)
                .unwrap_or(start + Duration::from_secs(86_400 * 365 * 30))
        };
        BatchDeadline {
            first: after(Duration::from_millis(250)),
            last: after(wait),
        }
    }

    /// The deadline for the next message when `read` messages have been read so far.
    pub(super) fn next(&self, read: usize) -> tokio::time::Instant {
        if read == 0 {
            self.first
        } else {
            self.last
        }
    }
}

/// The messages of a batch, read with [`next_message`]: one stream for the batch (a stream
/// per message took and gave back a waker slot, under a lock, for every message).
pub(super) type Messages<'a> = MessageStream<'a, kafka::SourceContext>;

/// The next message before `deadline`; `None` when it passed, shutdown was asked, or Kafka
/// reported an error (logged): the batch ends there. A message already waiting is returned
/// even after the deadline, without arming a timer or watching for shutdown (most messages of
/// a backlog): a batch ends when its wait is over, where the loops check for shutdown.
pub(super) async fn next_message<'a>(
    messages: &mut Messages<'a>,
    deadline: tokio::time::Instant,
    stop: &mut Shutdown,
) -> Option<BorrowedMessage<'a>> {
    let mut next = std::pin::pin!(std::future::poll_fn(|cx| Pin::new(&mut *messages).poll_next(cx)));
    // Polled once by itself: a message already waiting needs no timer.
    let msg = match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
        Poll::Ready(m) => m,
        Poll::Pending => tokio::select! {
            m = tokio::time::timeout_at(deadline, next) => m.ok()?,
            _ = stop.rx.changed() => return None,
        },
    };
    match msg? {
        Err(e) => {
            tracing::warn!(error = %e, "kafka receive error");
            None
        }
        Ok(m) => Some(m),
    }
}

/// A batch's side effects, each retried until done: alert lines, then revocations; then
/// `decisions` is emptied. Returns the revocations Redis did not hold yet. An error means the
/// shutdown timeout passed first. (The detect stage delivers the same way.)
pub(super) async fn deliver(
    decisions: &mut Vec<Decision>,
    metrics: &Metrics,
    alerts: &mut AlertSink,
    store: &mut RevocationStore,
    stop: &mut Shutdown,
) -> Result<u64, ServiceError> {
    let now = now_ms();
    for d in decisions.iter() {
        metrics
            .decisions
            .with_label_values(&[&d.rule, d.action.as_str(), d.severity.as_str()])
            .inc();
        metrics.decision_delay.observe(((now - d.ts) as f64 / 1000.0).max(0.0));
    }
    deliver_alerts(alerts, decisions, metrics, stop).await?;
    let mut written = 0;
    for d in decisions.iter() {
        if let Some(r) = Revocation::from_decision(d) {
            written += u64::from(write_with_retry(store, &r, metrics, stop).await?);
        }
    }
    decisions.clear();
    Ok(written)
}

/// Makes the engines forget the revocations the feed says were undone (a subject's state is
/// in one of them; asking the others costs a lookup).
pub(super) fn forget_undone(rx: &mut mpsc::Receiver<Undone>, pipelines: &mut [&mut Pipeline], metrics: &Metrics) {
    while let Ok(u) = rx.try_recv() {
        let mut known = false;
        for pipeline in pipelines.iter_mut() {
            let engine = pipeline.engine_mut();
            known |= match u.kind {
                Kind::Token => engine.forget_token(&u.id),
                Kind::Subject => engine.forget_subject(&u.id),
            };
        }
        tracing::info!(kind = ?u.kind, remembered = known, "revocation undone (feed): forgotten");
        metrics.feed_unrevokes.inc();
    }
}

/// Re-arms the tripped rules that an operator asked to re-arm (`tokenwatch rearm RULE` writes
/// the request to Redis, where every instance sees it) after this instance saw them trip.
/// `seen` remembers, per tripped rule, the wall-clock second this instance first saw it tripped,
/// so an old request never re-arms a rule that trips again later.
pub(super) async fn rearm_tripped(
    pipeline: &mut Pipeline,
    store: &mut RevocationStore,
    seen: &mut HashMap<Arc<str>, i64>,
) {
    let now_s = now_ms() / 1000;
    let tripped: Vec<Arc<str>> = pipeline
        .engine()
        .tripped()
        .filter(|(_, at)| at.is_some())
        .map(|(r, _)| r.clone())
        .collect();
    seen.retain(|r, _| tripped.contains(r));
    for r in &tripped {
        seen.entry(r.clone()).or_insert(now_s);
    }
    let RevocationStore::Redis(w) = store else { return };
    if tripped.is_empty() {
        return;
    }
    let requests = match w.rearm_requests().await {
        Ok(r) => r,
        Err(e) => return tracing::warn!(error = %e, transient = e.is_transient(), "cannot read re-arm requests"),
    };
    for (rule, since) in seen.iter() {
        if requests.get(&**rule).is_some_and(|at| at >= since) && pipeline.rearm(rule) {
            tracing::warn!(rule = %rule, "rule re-armed by request: it enforces again");
        }
    }
}

/// The clock of event-time idleness: wall time spent reading, so that time the loop spends
/// on side effects (a stalled Redis, say) makes no partition look idle.
pub(super) struct ReadingClock {
    base: Instant,
    spent: Duration,
    reading_since: Option<Instant>,
}

impl ReadingClock {
    pub(super) fn new() -> Self {
        ReadingClock {
            base: Instant::now(),
            spent: Duration::ZERO,
            reading_since: None,
        }
    }

    pub(super) fn resume(&mut self) {
        self.reading_since.get_or_insert_with(Instant::now);
    }

    pub(super) fn pause(&mut self) {
        if let Some(t) = self.reading_since.take() {
            self.spent += t.elapsed();
        }
    }

    /// Reading time so far, as an instant (what [`Sequencer`] takes as `now`).
    pub(super) fn now(&self) -> Instant {
        self.base + self.spent + self.reading_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Tracks the partitions librdkafka assigned, when a rebalance happened since `seen`: a
/// revoked one stops holding event time at once (and forgets its place, even if it is
/// already assigned again); a new one holds event time back until it delivers or goes idle.
fn follow_assignment(order: &mut Sequencer<HeldLine>, assigned: &kafka::Assignment, seen: &mut u64, now: Instant) {
    let Ok(mut a) = assigned.lock() else { return };
    if a.epoch() == *seen {
        return;
    }
    let (revoked, epoch) = a.take_revoked();
    *seen = epoch;
    for (t, p) in revoked {
        order.revoke(&t, p);
    }
    let gone: Vec<(String, i32)> = order
        .assigned()
        .filter(|(t, p)| !a.now.contains(&(t.to_string(), *p)))
        .map(|(t, p)| (t.to_string(), p))
        .collect();
    for (t, p) in gone {
        order.revoke(&t, p);
    }
    for (t, p) in &a.now {
        order.assign(t, *p, now);
    }
}

/// Tells the event-time buffer which partitions have messages not read yet (librdkafka's
/// statistics): those are not idle, however long nothing came from them.
fn note_unread(order: &mut Sequencer<HeldLine>, assigned: &kafka::Assignment) {
    let Ok(a) = assigned.lock() else { return };
    let tracked: Vec<(String, i32)> = order.assigned().map(|(t, p)| (t.to_string(), p)).collect();
    for k in tracked {
        if let Some(id) = order.id(&k.0, k.1) {
            order.unread(id, a.unread(&k));
        }
    }
}

/// Decodes the lines of one message into the event-time buffer, numbered in the message; a
/// line that a restored checkpoint already holds is passed over.
fn hold_message(
    pipeline: &mut Pipeline,
    order: &mut Sequencer<HeldLine>,
    (source, offset): (usize, i64),
    payload: &[u8],
    max_line: usize,
    now: Instant,
) {
    for (number, line) in (1u32..).zip(lines_in(payload, max_line)) {
        if order.restored(source, offset, number) {
            continue;
        }
        match line {
            Line::Ok([]) => {}
            Line::Ok(l) => {
                if let Some(held) = pipeline.hold_line(l) {
                    order.push(source, offset, number, held.ts_ms(), held.tie(), held, now);
                }
            }
            Line::TooLong(_) => pipeline.line_too_long(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch waits 250 ms for its first message, then until its own wait is over; a
    /// configured wait too long to add is no deadline, not a panic.
    #[test]
    fn a_batch_waits_for_its_first_message_then_until_its_wait_is_over() {
        let before = tokio::time::Instant::now();
        let d = BatchDeadline::new(Duration::from_millis(20));
        assert!(d.next(0) >= before + Duration::from_millis(250));
        assert!(d.next(1) >= before + Duration::from_millis(20) && d.next(1) < d.next(0));
        assert_eq!(d.next(1), d.next(7));
        let forever = BatchDeadline::new(Duration::MAX);
        assert!(forever.next(1) > before + Duration::from_secs(86_400 * 365));
    }
}
