//! Event time across partitions: one order of events for `replay` and `run` alike.
//!
//! The engine decides from the order it sees events in. `replay` reads one file; `run` reads
//! several partitions at once, each in its own order, and a fetch can put one partition's
//! events minutes of event time ahead of another's. So both hand their decoded lines to a
//! [`Sequencer`], which releases them to the engine in one canonical order, **(event time,
//! hash of the line)**, whatever the partitioning: the hash settles ties between equal event
//! times the same way in both, and the same lines give the same decisions.
//!
//! Each source (a file, a partition) has a watermark: the newest event time read from it.
//! An event is released once every source that is not idle has a watermark *past* it (ties
//! wait until the slowest source moves on, so that all of a tie is sorted). A source with
//! nothing new for `idle_timeout` of wall clock stops holding the others back (an assigned
//! partition that never delivers becomes idle the same way); when every source is idle,
//! everything buffered is released. The engine's own lateness check then measures an event
//! against the newest released one, so an event is late only when it is older than the
//! slowest active partition minus `lateness`.
//!
//! The buffer is bounded by watermark alignment, as in Flink: a source whose watermark runs
//! more than `max_skew` of event time ahead of the slowest is reported by [`Sequencer::skew`]
//! so that the caller pauses it (librdkafka pause/resume) until the slowest catches up. What
//! waits is then at most the events of `max_skew` of event time (plus what was already
//! fetched when the pause took effect); [`Sequencer::peak`] records the high mark.
//!
//! That bound scales with the input rate, so the buffer also has a hard cap in lines,
//! `max_held` (`[engine] max_buffered_lines`). When the buffer reaches it, every partition
//! ahead of the slowest is paused as if it ran past `max_skew`, so only the slowest keep
//! delivering and the clock moves on. If the buffer is still over the cap after a release
//! (one partition alone ahead, waiting on idle ones; or more already fetched than the cap),
//! the oldest lines are released early: in order, never dropped, but possibly before a
//! slower partition's older lines, which the engine may then find late.
//! [`Sequencer::forced`] counts them.
//!
//! Time is passed in: the wall clock (`now`) only decides idleness.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Where one input partition stands in a checkpoint: what the sequencer has applied from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMark {
    pub topic: String,
    pub partition: i32,
    /// Every line before this offset is in the state.
    pub next: i64,
    /// Lines at or after `next` already in the state: (offset, line number in the message).
    pub applied: Vec<(i64, u32)>,
}

/// Event-time settings (`[engine]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeConfig {
    /// A source with nothing new for this long (wall clock) does not hold the others back.
    pub idle_timeout: Duration,
    /// A source this far (event time, ms) ahead of the slowest is paused.
    pub max_skew_ms: i64,
    /// Lines held at most: at the cap, every source ahead of the slowest is paused; over
    /// it, the oldest lines go early.
    pub max_held: usize,
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig {
            idle_timeout: Duration::from_secs(5),
            max_skew_ms: 60_000,
            max_held: 200_000,
        }
    }
}

/// The order key of a line: event time, then a fixed hash of its bytes.
pub(crate) fn tie_hash(line: &[u8]) -> u64 {
    // Fixed keys: replay and run, and every instance whatever its build, must agree
    // ([`crate::hash`]). Ties are ordered by this only; no state is keyed by it, so an
    // attacker choosing collisions gains nothing.
    const TIE: crate::hash::Keys = crate::hash::Keys::from_seeds([0x746f_6b65, 0x6e77_6174, 0x6368_6576, 0x656e_7473]);
    TIE.bytes(line)
}

/// One line waiting for its turn (its event time is in its [`Key`]).
struct Held<T> {
    source: usize,
    offset: i64,
    /// The line's number within its message.
    line: u32,
    /// When it was read (wall clock).
    arrived: Instant,
    item: T,
}

/// A held line's place in the order, and its slot in [`Sequencer::slots`]: the heap moves
/// these small keys, never the lines (a detect stage's record is some 300 bytes, and moving
/// it up and down the heap was a tenth of that stage's time).
struct Key {
    ts: i64,
    tie: u64,
    /// Arrival number: equal lines keep their reading order.
    seq: u64,
    slot: usize,
}

impl Key {
    fn order(&self) -> (i64, u64, u64) {
        (self.ts, self.tie, self.seq)
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.order() == o.order()
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Key {
    /// Reversed: `BinaryHeap` is a max-heap and the smallest key goes first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.order().cmp(&self.order())
    }
}

/// Puts `v` in the empty slot `free` when there is one, else in a new slot; returns where.
fn place<T>(slots: &mut Vec<Option<T>>, free: Option<usize>, v: T) -> usize {
    match free {
        Some(i) => {
            slots[i] = Some(v);
            i
        }
        None => {
            slots.push(Some(v));
            slots.len() - 1
        }
    }
}

/// What the sequencer knows of one source (a partition).
struct Source {
    topic: String,
    partition: i32,
    /// Newest event time read, or `i64::MIN` before the first event.
    watermark: i64,
    last_active: Instant,
    paused: bool,
    /// Whether the source's reader says it is idle ([`Sequencer::declare`]); `None`: the
    /// wall clock here decides.
    declared: Option<bool>,
    /// Messages of the source that its reader has not read yet, when the reader tells
    /// ([`Sequencer::unread`]): `Some(None)` while unknown.
    unread: Option<Option<i64>>,
    /// Offsets of messages with lines still held, and how many.
    held: BTreeMap<i64, u32>,
    /// The offset after the last message read.
    next_offset: Option<i64>,
    /// Lines released from messages at or after the first message still held: (offset,
    /// line). With `held`, where a checkpoint says this partition stands.
    applied: BTreeSet<(i64, u32)>,
    /// Lines a restored checkpoint already holds: not applied again when read again.
    skip: BTreeSet<(i64, u32)>,
    /// Every line before this offset is in the state already (a restored or a returning
    /// partition's safe offset): if the group's committed offset is behind it (an
    /// asynchronous commit that did not land), the lines read again are not applied twice.
    done_below: i64,
    /// Lines before this offset were decided before a restart: applied without emitting.
    quiet_below: i64,
}

impl Source {
    /// The offset before which every line read is applied: the first message with lines
    /// still held, else the one after the last read. `None` before anything was read.
    fn safe(&self) -> Option<i64> {
        self.held.keys().next().copied().or(self.next_offset)
    }

    /// Forgets the lines released out of offset order that the safe offset `next` has
    /// passed: a checkpoint names them no more ([`Source::mark`]). Called as the safe offset
    /// moves, so that the set stays as small as the disorder still held, with checkpoints or
    /// without (`run` with `engine.checkpoint_interval = 0`): before, it grew with every line
    /// released out of order until the next checkpoint, and for ever without one. (`replay`
    /// holds its lines at one offset, so it never had any.)
    fn forget_applied_before(&mut self, next: i64) {
        while self.applied.first().is_some_and(|&(offset, _)| offset < next) {
            self.applied.pop_first();
        }
    }

    /// Where this partition stands: its safe offset, and the lines at or after it already
    /// applied (those before it are forgotten). `None` before anything was read.
    fn mark(&mut self) -> Option<PartitionMark> {
        let next = self.safe()?;
        self.forget_applied_before(next);
        Some(PartitionMark {
            topic: self.topic.clone(),
            partition: self.partition,
            next,
            applied: self.applied.iter().copied().collect(),
        })
    }
}

/// Where a restored checkpoint left a partition, until it is assigned.
struct Resume {
    mark: PartitionMark,
    committed: Option<i64>,
}

/// A partition to pause or resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toggle {
    pub topic: String,
    pub partition: i32,
    pub pause: bool,
}

/// Releases held lines in (event time, tie hash) order as the sources' watermarks allow.
pub struct Sequencer<T> {
    cfg: EventTimeConfig,
    heap: BinaryHeap<Key>,
    /// The held lines, where their keys point; `free` lists the empty slots.
    slots: Vec<Option<Held<T>>>,
    free: Vec<usize>,
    sources: Vec<Option<Source>>,
    index: HashMap<String, HashMap<i32, usize>>,
    seq: u64,
    peak: usize,
    /// Lines released early because the buffer was over `max_held`.
    forced: u64,
    resume: HashMap<(String, i32), Resume>,
    /// Where revoked partitions stood (at most one entry per partition ever assigned): if
    /// one comes back, the lines it had applied (before its safe offset, and those after it
    /// released out of offset order) are not applied again when read again.
    away: HashMap<(String, i32), PartitionMark>,
}

impl<T> Sequencer<T> {
    pub fn new(cfg: EventTimeConfig) -> Self {
        Sequencer {
            cfg,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            sources: Vec::new(),
            index: HashMap::new(),
            seq: 0,
            peak: 0,
            forced: 0,
            resume: HashMap::new(),
            away: HashMap::new(),
        }
    }

    /// Starts tracking a source (a partition assigned); it holds the others back until it
    /// delivers or goes idle. Returns its id (the same id if it is already tracked).
    pub fn assign(&mut self, topic: &str, partition: i32, now: Instant) -> usize {
        if let Some(id) = self.id(topic, partition) {
            return id;
        }
        let mut src = Source {
            topic: topic.to_string(),
            partition,
            watermark: i64::MIN,
            last_active: now,
            paused: false,
            declared: None,
            unread: None,
            held: BTreeMap::new(),
            next_offset: None,
            applied: BTreeSet::new(),
            skip: BTreeSet::new(),
            done_below: i64::MIN,
            quiet_below: i64::MIN,
        };
        let key = (topic.to_string(), partition);
        if let Some(r) = self.resume.remove(&key) {
            src.next_offset = Some(r.mark.next);
            src.applied = r.mark.applied.iter().copied().collect();
            src.skip = src.applied.clone();
            src.done_below = r.mark.next;
            src.quiet_below = r.committed.unwrap_or(i64::MIN);
        } else if let Some(mark) = self.away.remove(&key) {
            src.next_offset = Some(mark.next);
            src.applied = mark.applied.into_iter().collect();
            src.skip = src.applied.clone();
            src.done_below = mark.next;
        }
        let free = self.sources.iter().position(Option::is_none);
        let id = place(&mut self.sources, free, src);
        self.index.entry(topic.to_string()).or_default().insert(partition, id);
        id
    }

    /// Stops tracking a source (a partition revoked) at once: it no longer holds the clock,
    /// and its held lines are dropped (their offsets were not committed: whoever owns the
    /// partition next reads them again). Lines past its safe offset that were already
    /// applied are remembered, so that if the partition comes back here they are not applied
    /// twice.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        let Some(id) = self.id(topic, partition) else { return };
        if let Some(mark) = self.sources[id].as_mut().and_then(Source::mark) {
            self.away.insert((topic.to_string(), partition), mark);
        }
        self.sources[id] = None;
        if let Some(m) = self.index.get_mut(topic) {
            m.remove(&partition);
        }
        let (slots, free) = (&mut self.slots, &mut self.free);
        self.heap.retain(|k| {
            let keep = slots[k.slot].as_ref().is_some_and(|h| h.source != id);
            if !keep {
                slots[k.slot] = None;
                free.push(k.slot);
            }
            keep
        });
    }

    /// The id of a tracked source.
    pub fn id(&self, topic: &str, partition: i32) -> Option<usize> {
        self.index.get(topic)?.get(&partition).copied()
    }

    /// The tracked sources, as (topic, partition).
    pub fn assigned(&self) -> impl Iterator<Item = (&str, i32)> {
        self.sources.iter().flatten().map(|s| (s.topic.as_str(), s.partition))
    }

    /// Notes a message read from `source` (whether or not it held events). A source whose
    /// reader had declared it idle is active again.
    pub fn read(&mut self, source: usize, offset: i64, now: Instant) {
        if let Some(s) = self.sources.get_mut(source).and_then(Option::as_mut) {
            s.last_active = now;
            if s.declared.is_some() {
                s.declared = Some(false);
            }
            s.next_offset = Some(s.next_offset.map_or(offset + 1, |o| o.max(offset + 1)));
        }
    }

    /// Moves a source's watermark to `ts` (if that is later) without holding anything: a
    /// watermark record of the ingest stage, which read the partition that far
    /// ([`crate::record::Watermark`]). Counts as activity.
    pub fn advance(&mut self, source: usize, ts: i64, now: Instant) {
        if let Some(s) = self.sources.get_mut(source).and_then(Option::as_mut) {
            s.watermark = s.watermark.max(ts);
            s.last_active = now;
        }
    }

    /// Hands the decision whether `source` is idle to the one who reads it (the ingest stage,
    /// in its watermark records): from now on the source is idle exactly when its reader
    /// last said so, however long nothing arrives from it here. So a partition whose reader
    /// died holds event time back until another reader takes it over from the committed
    /// offset, instead of going idle here and having its lines come back late.
    pub fn declare(&mut self, source: usize, idle: bool) {
        if let Some(s) = self.sources.get_mut(source).and_then(Option::as_mut) {
            s.declared = Some(idle);
        }
    }

    /// What the reader knows of messages of `source` not read yet (librdkafka's statistics;
    /// `None`: not known yet). A source with unread messages is not idle, however long
    /// nothing came from it: in a backlog librdkafka may hand out other partitions' messages
    /// for longer than the idle timeout while this one's wait; and a source never read is not
    /// idle until its reader knows it has nothing. Sources whose reader never tells (files)
    /// go idle on the wall clock alone.
    pub fn unread(&mut self, source: usize, unread: Option<i64>) {
        if let Some(s) = self.sources.get_mut(source).and_then(Option::as_mut) {
            s.unread = Some(unread);
        }
    }

    /// Whether line `line` of the message at `offset` is already in a restored checkpoint's
    /// state (then it must not be applied again).
    pub fn restored(&mut self, source: usize, offset: i64, line: u32) -> bool {
        match self.sources.get_mut(source).and_then(Option::as_mut) {
            Some(s) if offset < s.done_below => true,
            Some(s) if !s.skip.is_empty() => s.skip.remove(&(offset, line)),
            _ => false,
        }
    }

    /// Changes every held item in place, never its place in the order (its key is kept
    /// apart from it): `replay` copies the lines still held out of the batch they point into
    /// before that batch is reused.
    pub(crate) fn held_mut(&mut self, mut f: impl FnMut(&mut T)) {
        for h in self.slots.iter_mut().flatten() {
            f(&mut h.item);
        }
    }

    /// Holds line `line` (decoded) of the message at `offset` of `source`.
    #[allow(clippy::too_many_arguments)]
    pub fn push(&mut self, source: usize, offset: i64, line: u32, ts: i64, tie: u64, item: T, now: Instant) {
        let Some(s) = self.sources.get_mut(source).and_then(Option::as_mut) else {
            return;
        };
        s.watermark = s.watermark.max(ts);
        *s.held.entry(offset).or_default() += 1;
        self.seq += 1;
        let held = Held {
            source,
            offset,
            line,
            arrived: now,
            item,
        };
        let slot = place(&mut self.slots, self.free.pop(), held);
        self.heap.push(Key {
            ts,
            tie,
            seq: self.seq,
            slot,
        });
        self.peak = self.peak.max(self.heap.len());
    }

    fn idle(&self, s: &Source, now: Instant) -> bool {
        match s.declared {
            Some(idle) => idle,
            None => {
                let waiting = match s.unread {
                    None | Some(Some(0)) => false,
                    Some(Some(_)) => true,
                    Some(None) => s.next_offset.is_none(),
                };
                !s.paused && !waiting && now.saturating_duration_since(s.last_active) >= self.cfg.idle_timeout
            }
        }
    }

    /// The event time below which every line may go: the slowest watermark among sources
    /// that are not idle; `i64::MAX` when all are idle (or there are none).
    pub(crate) fn frontier(&self, now: Instant) -> i64 {
        self.sources
            .iter()
            .flatten()
            .filter(|s| !self.idle(s, now))
            .map(|s| s.watermark)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Below this event time every line may go at once: every source that has data, or is
    /// not idle, has a watermark past it (an idle source keeps its watermark here).
    fn safe(&self, now: Instant) -> i64 {
        self.sources
            .iter()
            .flatten()
            .filter(|s| s.watermark != i64::MIN || !self.idle(s, now))
            .map(|s| s.watermark)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Hands every line the frontier allows to `apply`, in order, with whether it is to be
    /// applied quietly (decided before a restart: state only, no decision emitted). A line
    /// past an idle source's watermark but below the [`Sequencer::frontier`] waits
    /// `idle_timeout` after it was read: a partition waking up from idleness gets that long
    /// to deliver before the others run on without it. Past that, while more than
    /// `max_held` lines wait, the oldest go early ([`Sequencer::forced`]).
    pub fn release(&mut self, now: Instant, mut apply: impl FnMut(T, bool)) -> usize {
        let (safe, active) = (self.safe(now), self.frontier(now));
        let wait = self.cfg.idle_timeout;
        let n = self.release_while(
            |ts, h| ts < safe || (ts < active && now.saturating_duration_since(h.arrived) >= wait),
            &mut apply,
        );
        let over = self.heap.len().saturating_sub(self.cfg.max_held);
        if over == 0 {
            return n;
        }
        let mut left = over;
        let forced = self.release_while(
            |_, _| {
                let go = left > 0;
                left = left.saturating_sub(1);
                go
            },
            apply,
        );
        self.forced += forced as u64;
        n + forced
    }

    /// Hands every held line to `apply`, in order (end of input).
    pub(crate) fn release_all(&mut self, apply: impl FnMut(T, bool)) -> usize {
        self.release_while(|_, _| true, apply)
    }

    /// Hands the held lines to `apply` in order while `may_go` (given each one's event time)
    /// lets them.
    fn release_while(
        &mut self,
        mut may_go: impl FnMut(i64, &Held<T>) -> bool,
        mut apply: impl FnMut(T, bool),
    ) -> usize {
        let mut n = 0;
        while let Some(k) = self.heap.peek() {
            let (slot, ts) = (k.slot, k.ts);
            if !self.slots[slot].as_ref().is_some_and(|h| may_go(ts, h)) {
                break;
            }
            self.heap.pop();
            let Some(h) = self.slots[slot].take() else { break };
            self.free.push(slot);
            let mut quiet = false;
            if let Some(s) = self.sources.get_mut(h.source).and_then(Option::as_mut) {
                if let Some(c) = s.held.get_mut(&h.offset) {
                    *c -= 1;
                    if *c == 0 {
                        s.held.remove(&h.offset);
                    }
                }
                // A message at or before this one still held: the line went out of offset
                // order. Else the safe offset is past it, and may have just moved.
                let first = s.held.keys().next().copied();
                if first.is_some_and(|first| first <= h.offset) {
                    s.applied.insert((h.offset, h.line));
                } else if let Some(next) = first.or(s.next_offset) {
                    s.forget_applied_before(next);
                }
                quiet = h.offset < s.quiet_below;
            }
            apply(h.item, quiet);
            n += 1;
        }
        n
    }

    /// Where each partition stands, for a checkpoint of the state the released lines built.
    pub fn marks(&mut self) -> Vec<PartitionMark> {
        let mut out: Vec<PartitionMark> = self.sources.iter_mut().flatten().filter_map(Source::mark).collect();
        // A partition restored but not (yet) assigned keeps its place.
        out.extend(self.resume.values().map(|r| r.mark.clone()));
        out
    }

    /// Takes a restored checkpoint's marks, with the group's committed offsets: each
    /// partition resumes there when it is assigned.
    pub fn resume(&mut self, marks: Vec<PartitionMark>, committed: &HashMap<(String, i32), i64>) {
        for mark in marks {
            let k = (mark.topic.clone(), mark.partition);
            let committed = committed.get(&k).copied();
            self.resume.insert(k, Resume { mark, committed });
        }
    }

    /// The partitions to pause (more than `max_skew` ahead of the slowest active one, or
    /// ahead of it at all while the buffer is at `max_held`) and to resume (caught up, or
    /// nothing left to wait for), with their state updated.
    pub fn skew(&mut self, now: Instant) -> Vec<Toggle> {
        let slowest = self.frontier(now);
        let limit = if self.heap.len() >= self.cfg.max_held {
            slowest
        } else {
            slowest.saturating_add(self.cfg.max_skew_ms)
        };
        let mut out = Vec::new();
        for s in self.sources.iter_mut().flatten() {
            let ahead = slowest != i64::MAX && s.watermark != i64::MIN && s.watermark > limit;
            if ahead != s.paused {
                s.paused = ahead;
                // A resumed partition counts as active from now, not from before its pause.
                s.last_active = now;
                out.push(Toggle {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    pause: ahead,
                });
            }
        }
        out
    }

    /// Per source, the offset up to which every message read has been released (the first
    /// message with a line still held, else the one after the last read): what may be
    /// committed once the released lines' side effects are done.
    pub fn safe_offsets(&self) -> Vec<(&str, i32, i64)> {
        self.sources
            .iter()
            .flatten()
            .filter_map(|s| {
                let o = s.held.keys().next().copied().or(s.next_offset)?;
                Some((s.topic.as_str(), s.partition, o))
            })
            .collect()
    }

    /// Lines held now.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Partitions that have a position (something read, or a restored one): what a
    /// checkpoint covers.
    pub fn positioned(&self) -> usize {
        let read = self
            .sources
            .iter()
            .flatten()
            .filter(|s| s.next_offset.is_some() || !s.held.is_empty())
            .count();
        read + self.resume.len()
    }

    /// Partitions paused now.
    pub fn paused(&self) -> usize {
        self.sources.iter().flatten().filter(|s| s.paused).count()
    }

    /// The most lines ever held at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Lines released early, ever, because more than `max_held` waited.
    pub fn forced(&self) -> u64 {
        self.forced
    }

    /// Lines remembered as released out of offset order, over every source.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.sources.iter().flatten().map(|s| s.applied.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EventTimeConfig {
        EventTimeConfig {
            idle_timeout: Duration::from_secs(5),
            max_skew_ms: 1_000,
            max_held: 1_000,
        }
    }

    fn drain(s: &mut Sequencer<&'static str>, now: Instant) -> Vec<&'static str> {
        let mut out = Vec::new();
        s.release(now, |x, _| out.push(x));
        out
    }

    #[test]
    fn lines_released_out_of_offset_order_are_forgotten_once_the_safe_offset_passes_them() {
        // No checkpoint is ever taken here (`run` with checkpoints off): what the sequencer
        // remembers must stay as small as the disorder it holds, not grow with the input.
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        for round in 0..1_000i64 {
            // Message 2k is later in event time than message 2k+1: its successor is
            // released first (out of offset order).
            let (first, second) = (2 * round, 2 * round + 1);
            s.read(a, first, t0);
            s.push(a, first, 0, 10 * second, 1, "later", t0);
            s.read(a, second, t0);
            s.push(a, second, 0, 10 * first, 1, "earlier", t0);
            s.release_all(|_, _| {});
        }
        assert_eq!(s.remembered(), 0, "every line released is before the safe offset");
        // While the older message is held, the younger one released is remembered.
        s.read(a, 2_000, t0);
        s.push(a, 2_000, 0, 1_000_000, 1, "held", t0);
        s.read(a, 2_001, t0);
        s.push(a, 2_001, 0, 0, 1, "released", t0);
        let b = s.assign("logs", 1, t0);
        s.push(b, 0, 0, 500, 1, "b", t0);
        assert_eq!(drain(&mut s, t0), ["released"]);
        assert_eq!(s.remembered(), 1);
        let marks = s.marks();
        let m = marks.iter().find(|m| m.partition == 0).expect("partition 0 marked");
        assert_eq!((m.next, m.applied.as_slice()), (2_000, &[(2_001, 0)][..]));
    }

    #[test]
    fn lines_go_in_event_time_order_once_every_partition_is_past_them() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let b = s.assign("logs", 1, t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.push(a, 1, 0, 300, 1, "a300", t0);
        assert!(drain(&mut s, t0).is_empty(), "partition 1 has said nothing yet");
        s.push(b, 0, 0, 200, 1, "b200", t0);
        assert_eq!(
            drain(&mut s, t0),
            ["a100"],
            "200 is partition 1's newest: it may have more at 200"
        );
        s.push(b, 1, 0, 400, 1, "b400", t0);
        assert_eq!(
            drain(&mut s, t0),
            ["b200"],
            "a300 waits for a newer event of partition 1"
        );
        assert_eq!(s.safe_offsets(), [("logs", 0, 1), ("logs", 1, 1)]);
    }

    #[test]
    fn ties_are_ordered_by_hash_whatever_the_arrival() {
        let t0 = Instant::now();
        let mut one = Sequencer::new(cfg());
        let mut two = Sequencer::new(cfg());
        let x = one.assign("f", 0, t0);
        for (i, (tie, name)) in [(9, "nine"), (3, "three"), (5, "five")].into_iter().enumerate() {
            one.push(x, i as i64, 0, 10, tie, name, t0);
        }
        let (p, q) = (two.assign("t", 0, t0), two.assign("t", 1, t0));
        two.push(q, 0, 0, 10, 5, "five", t0);
        two.push(p, 0, 0, 10, 3, "three", t0);
        two.push(p, 1, 0, 10, 9, "nine", t0);
        let mut a = Vec::new();
        one.release_all(|v, _| a.push(v));
        let mut b = Vec::new();
        two.release_all(|v, _| b.push(v));
        assert_eq!(a, ["three", "five", "nine"]);
        assert_eq!(a, b);
    }

    #[test]
    fn an_idle_or_revoked_partition_stops_holding_the_clock() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        s.assign("logs", 1, t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.push(a, 1, 0, 200, 1, "a200", t0);
        s.read(a, 1, t0 + Duration::from_secs(1));
        assert!(drain(&mut s, t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            drain(&mut s, t0 + Duration::from_secs(5)),
            ["a100"],
            "partition 1 is idle"
        );
        // all idle: everything goes
        assert_eq!(drain(&mut s, t0 + Duration::from_secs(10)), ["a200"]);
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let b = s.assign("logs", 1, t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.push(a, 1, 0, 200, 1, "a200", t0);
        s.push(b, 0, 0, 50, 1, "b50", t0);
        s.push(b, 1, 0, 60, 1, "b60", t0);
        assert_eq!(drain(&mut s, t0), ["b50"]);
        s.revoke("logs", 1);
        assert_eq!(drain(&mut s, t0), ["a100"], "b60 went with its partition");
        assert_eq!(s.safe_offsets(), [("logs", 0, 1)]);
    }

    /// A partition whose messages wait unread (behind another's in a backlog) is not idle
    /// however long nothing comes from it, nor is one never read while its reader does not
    /// know yet; once its reader knows it has nothing, the idle timeout applies. A source
    /// whose reader never tells (a file) goes idle on the wall clock, as before.
    #[test]
    fn a_partition_with_unread_messages_is_not_idle() {
        let t0 = Instant::now();
        let sec = |n| t0 + Duration::from_secs(n);
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let b = s.assign("logs", 1, t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.read(a, 0, t0);
        s.unread(a, Some(0));
        s.unread(b, None);
        assert!(drain(&mut s, sec(60)).is_empty(), "b was never read and may have lines");
        s.unread(b, Some(40));
        assert!(drain(&mut s, sec(60)).is_empty(), "b has unread messages");
        s.unread(b, Some(0));
        assert_eq!(drain(&mut s, sec(60)), ["a100"], "b has nothing: idle");

        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let _b = s.assign("logs", 1, t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.read(a, 0, t0);
        assert_eq!(
            drain(&mut s, sec(6)),
            ["a100"],
            "no word from b's reader: the wall clock"
        );
    }

    /// The ingest stage's word decides: a partition whose reader said nothing for minutes
    /// (it was killed) still holds the clock; one its reader declared idle does not, at once;
    /// a line read from it makes it active again.
    #[test]
    fn a_partition_idle_by_its_readers_word_and_only_by_it() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let (a, b) = (s.assign("logs", 0, t0), s.assign("logs", 1, t0));
        s.declare(a, false);
        s.declare(b, false);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.push(a, 1, 0, 200, 1, "a200", t0);
        s.push(b, 0, 0, 50, 1, "b50", t0);
        s.push(b, 1, 0, 60, 1, "b60", t0);
        assert_eq!(drain(&mut s, t0), ["b50"]);
        assert!(
            drain(&mut s, t0 + Duration::from_secs(600)).is_empty(),
            "partition 1 was not declared idle: it holds the clock whatever the wall clock"
        );
        s.declare(b, true);
        assert_eq!(drain(&mut s, t0 + Duration::from_secs(600)), ["b60", "a100"]);
        s.read(b, 2, t0 + Duration::from_secs(600));
        s.push(b, 2, 0, 150, 1, "b150", t0 + Duration::from_secs(600));
        s.push(b, 3, 0, 250, 1, "b250", t0 + Duration::from_secs(600));
        assert_eq!(
            drain(&mut s, t0 + Duration::from_secs(600)),
            ["b150"],
            "a line makes it active again: a200 waits for it"
        );
        assert!(drain(&mut s, t0 + Duration::from_secs(1200)).is_empty());
    }

    #[test]
    fn a_partition_waking_from_idleness_gets_the_idle_timeout_to_catch_up() {
        let t0 = Instant::now();
        let sec = |n| t0 + Duration::from_secs(n);
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let b = s.assign("logs", 1, t0);
        s.push(b, 0, 0, 200, 1, "b200", t0);
        s.push(a, 0, 0, 100, 1, "a100", t0);
        s.read(a, 0, t0);
        s.read(b, 0, t0);
        assert!(drain(&mut s, t0).is_empty());
        // both go idle; a wakes up first with newer lines
        s.push(a, 1, 0, 500, 1, "a500", sec(10));
        s.push(a, 2, 0, 600, 1, "a600", sec(10));
        s.read(a, 2, sec(10));
        assert_eq!(
            drain(&mut s, sec(10)),
            ["a100", "b200"],
            "below b's watermark at once; b200 waited long enough"
        );
        assert!(drain(&mut s, sec(11)).is_empty(), "b may still deliver before 500");
        s.push(b, 1, 0, 400, 1, "b400", sec(12));
        s.push(b, 2, 0, 550, 1, "b550", sec(12));
        s.read(b, 2, sec(12));
        assert_eq!(drain(&mut s, sec(12)), ["b400", "a500"]);
        assert!(drain(&mut s, sec(14)).is_empty());
        // both idle again: the rest goes once it has waited the idle timeout
        assert_eq!(drain(&mut s, sec(17)), ["b550", "a600"]);
    }

    #[test]
    fn a_partition_too_far_ahead_is_paused_until_the_slowest_catches_up() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let a = s.assign("logs", 0, t0);
        let b = s.assign("logs", 1, t0);
        s.push(a, 0, 0, 0, 1, "a0", t0);
        s.push(b, 0, 0, 5_000, 1, "b5000", t0);
        let t = s.skew(t0);
        assert_eq!(
            t,
            [Toggle {
                topic: "logs".into(),
                partition: 1,
                pause: true
            }]
        );
        assert!(s.skew(t0).is_empty(), "already paused");
        // paused, it never counts as idle, however long the pause
        assert!(drain(&mut s, t0 + Duration::from_secs(4)).is_empty());
        s.read(a, 1, t0 + Duration::from_secs(4));
        s.push(a, 1, 0, 4_500, 1, "a4500", t0);
        assert_eq!(drain(&mut s, t0 + Duration::from_secs(4)), ["a0"]);
        assert!(
            s.skew(t0 + Duration::from_secs(4))[0]
                == Toggle {
                    topic: "logs".into(),
                    partition: 1,
                    pause: false
                }
        );
        assert_eq!(s.peak(), 3);
    }

    fn toggles(t: &[Toggle]) -> Vec<(i32, bool)> {
        t.iter().map(|t| (t.partition, t.pause)).collect()
    }

    /// At `max_held`, every partition ahead of the slowest is paused, however little ahead
    /// (within `max_skew`); they resume once the buffer is below the cap again.
    #[test]
    fn a_full_buffer_pauses_every_partition_ahead_of_the_slowest() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(EventTimeConfig { max_held: 4, ..cfg() });
        let (a, b, c) = (
            s.assign("logs", 0, t0),
            s.assign("logs", 1, t0),
            s.assign("logs", 2, t0),
        );
        s.push(a, 0, 0, 10, 1, "a10", t0);
        s.push(b, 0, 0, 20, 1, "b20", t0);
        s.push(b, 1, 0, 30, 1, "b30", t0);
        s.push(c, 0, 0, 20, 1, "c20", t0);
        assert!(drain(&mut s, t0).is_empty(), "a10 waits for a to move on");
        assert_eq!(s.len(), 4);
        assert_eq!(toggles(&s.skew(t0)), [(1, true), (2, true)], "all within max_skew");
        s.push(a, 1, 0, 25, 1, "a25", t0);
        assert_eq!(drain(&mut s, t0), ["a10"]);
        assert_eq!(s.len(), 4, "still full");
        assert_eq!(
            toggles(&s.skew(t0)),
            [(0, true), (2, false)],
            "c is the slowest now, a is ahead of it"
        );
        s.push(c, 1, 0, 40, 1, "c40", t0);
        assert_eq!(drain(&mut s, t0), ["b20", "c20"]);
        assert_eq!(
            toggles(&s.skew(t0)),
            [(0, false), (1, false)],
            "below the cap: max_skew rules"
        );
        assert_eq!(s.forced(), 0);
    }

    /// One partition alone ahead of idle ones (whose data holds its lines back for the idle
    /// timeout): pausing cannot help, so past the cap the oldest lines go early, in order,
    /// counted, none dropped.
    #[test]
    fn over_the_cap_the_oldest_lines_go_early_and_are_counted() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(EventTimeConfig { max_held: 3, ..cfg() });
        let (a, b) = (s.assign("logs", 0, t0), s.assign("logs", 1, t0));
        s.push(b, 0, 0, 5, 1, "b5", t0);
        s.read(b, 0, t0);
        let late = t0 + Duration::from_secs(6);
        let lines = ["a10", "a11", "a12", "a13", "a14", "a15"];
        for (i, l) in lines.iter().enumerate() {
            s.push(a, i as i64, 0, 10 + i as i64, 1, l, late);
        }
        s.read(a, 5, late);
        assert_eq!(drain(&mut s, late), ["b5", "a10", "a11", "a12"], "b5 safe, 3 forced");
        assert_eq!(s.forced(), 3);
        assert_eq!(s.len(), 3);
        assert!(
            s.skew(late).is_empty(),
            "a is the slowest active partition: nothing to pause"
        );
        let mut rest = Vec::new();
        s.release_all(|x, _| rest.push(x));
        assert_eq!(rest, ["a13", "a14", "a15"]);
    }

    /// A partition revoked and assigned again (a rebalance away and back) stops holding the
    /// clock at once, and when it is read again from the group's committed offset, no line it
    /// had applied is applied twice: neither those before its safe offset (a commit that did
    /// not land) nor those after it released out of offset order.
    #[test]
    fn a_partition_that_comes_back_applies_no_line_twice() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(cfg());
        let (a, b) = (s.assign("logs", 0, t0), s.assign("logs", 1, t0));
        s.push(a, 0, 1, 10, 1, "a10", t0);
        s.push(a, 1, 1, 100, 1, "a100", t0);
        s.push(a, 2, 1, 50, 1, "a50", t0);
        s.push(b, 0, 1, 200, 1, "b200", t0);
        assert_eq!(drain(&mut s, t0), ["a10", "a50"], "a100 (offset 1) waits");
        assert_eq!(s.safe_offsets()[0], ("logs", 0, 1));
        s.revoke("logs", 0);
        assert_eq!(s.frontier(t0), 200, "the revoked partition holds nothing back");
        let a = s.assign("logs", 0, t0);
        // read again from an older committed offset: 0, 1, 2
        let again: Vec<bool> = (0..3).map(|o| s.restored(a, o, 1)).collect();
        assert_eq!(again, [true, false, true], "only a100 was never applied");
        s.push(a, 1, 1, 100, 1, "a100", t0);
        s.push(a, 3, 1, 300, 1, "a300", t0);
        s.read(a, 3, t0);
        assert_eq!(drain(&mut s, t0), ["a100"]);
        assert_eq!(s.safe_offsets()[0], ("logs", 0, 3));
    }
}
