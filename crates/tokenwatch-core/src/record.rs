//! The internal event record: what the ingest stage sends the detect stage through the
//! internal topics `{prefix}events` and `{prefix}events-by-key` when the work is split by key
//! (issue 12), and the [`Router`] that says where each record goes.
//!
//! A record is one *use* of a token by one request, already parsed, decoded, verified and
//! geolocated: everything [`Event`] holds, and nothing else. It never holds the raw token nor
//! the raw line (only the line's tie-break hash, so that the detect stage orders records
//! exactly as `replay` orders lines: [`crate::eventtime`]). Its [`Origin`] says which gateway
//! partition, offset and line it came from, so that the detect stage can drop a record it
//! already applied when an ingest instance produces the same lines again after a restart.
//!
//! A watermark record says how far (in event time) one ingest instance has read one gateway
//! partition, and whether that partition is idle. It is written to every internal partition,
//! as Flink propagates watermarks through a shuffle: a detect partition's clock is the minimum
//! over the gateway partitions that are not idle, whichever instance reads them.
//!
//! Routing: a token has one subject, so the records of `{prefix}events`, partitioned by
//! subject, give a rule keyed by token id or subject every event of its key
//! ([`Field::follows_subject`]). A rule keyed by any other field (`kid`, `iss`, `client_ip`,
//! `network`, a claim) gets its events through `{prefix}events-by-key`, partitioned by that
//! field's value: one record per destination partition, naming the fields that routed it
//! there, so that the detect engine runs exactly those fields' rules over it
//! ([`crate::engine::Scope`]) and no origin reaches one partition twice.
//!
//! The encoding is the checkpoints' (varints, length-prefixed text, [`Enc`]/[`Dec`]). A Kafka
//! message of an internal topic is a [`Frame`]: a one-byte format, then records, each
//! length-prefixed and starting with a one-byte kind, so a newer tokenwatch can change it and
//! an older one refuses what it cannot read, counted rather than misread. The ingest stage
//! puts all the records of a batch bound for one internal partition in one message: the
//! broker, librdkafka and the detect stage then handle a message per batch and partition
//! instead of one per use, which was most of what the shuffle cost (measured in BENCHMARKS.md,
//! "Records framed per partition").
//!
//! A token is used by many requests, and its claims were most of each record's bytes. Within
//! a message (format 4), an event record carries its token's part in full the first time the
//! token appears, and after that only how many records back that one is: the broker, LZ4 and
//! the detect stage then handle each token once per message, not once per use (measured in
//! BENCHMARKS.md, "Each token once per message"). A reference counts records, not tokens, so
//! a record refused for damage never shifts what a later one refers to.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Arc;

use crate::engine::snapshot::{Dec, Enc, SnapshotError};
use crate::engine::Scope;
use crate::input::{Event, GeoPoint, Scheme};
use crate::posture::Posture;
use crate::rules::{Ctx, Field, RuleSet, Val};
use crate::token::{ClaimValue, IdMap, TokenHasher, TokenInfo};

/// The message format this build writes (4: a frame of records whose tokens are written once
/// per message). It also reads 3 (frames, every token in full) and 2 (one record per message),
/// so that records an older ingest stage left in a topic are detected after an upgrade.
pub const FORMAT: u8 = 4;
/// Frames whose every event record holds its token in full, still read.
const FRAMED: u8 = 3;
/// The format before frames: one record per message, still read.
const UNFRAMED: u8 = 2;
/// The most bytes of records the ingest stage puts in one message; a larger record goes
/// alone. Well under the brokers' default `message.max.bytes` (1 MB).
pub const FRAME_MAX_BYTES: usize = 256 * 1024;
const KIND_EVENT: u8 = 1;
const KIND_WATERMARK: u8 = 2;

/// Why a record could not be read: counted by the detect stage, never applied half-read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("malformed message: {0}")]
    Frame(SnapshotError),
    #[error(
        "message format {0} is not one of {FORMAT}, {FRAMED} and {UNFRAMED}: an ingest instance of another tokenwatch version writes to this topic"
    )]
    Format(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("malformed record: {0}")]
    Malformed(#[from] SnapshotError),
}

/// Where a record's line came from, and which use of the line it is. Records of one gateway
/// partition reach each internal partition in this order (one producer per gateway partition
/// at a time), which is what lets the detect stage drop repeats by keeping the last it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The gateway topic ([`topic_id`]).
    pub topic: u32,
    pub partition: i32,
    pub offset: i64,
    /// The line's index within its message (a message may hold several lines).
    pub line: u32,
    /// 0 for the request's token, 1 for a second, different token found in its URL.
    pub use_index: u8,
}

/// A request's use of a token as the detect stage applies it: [`Event`] with owned text.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub origin: Origin,
    /// The tie-break between equal event times: the hash of the gateway line's bytes
    /// ([`crate::eventtime::tie_hash`]).
    pub tie: u64,
    pub ts_ms: i64,
    pub client_ip: Option<IpAddr>,
    pub method: Box<str>,
    pub path: Box<str>,
    pub status: Option<u16>,
    pub user_agent: Box<str>,
    pub token: Option<Arc<TokenInfo>>,
    pub token_in_url: bool,
    pub authenticated: bool,
    pub geo: Option<GeoPoint>,
    pub scheme: Option<Scheme>,
    /// The fields whose values routed the record to its `{prefix}events-by-key` partition;
    /// empty for a record of `{prefix}events`, routed by subject.
    pub keys: Box<[Field]>,
}

impl EventRecord {
    /// The rules the detect engine runs over the record.
    pub fn scope(&self) -> Scope<'_> {
        if self.keys.is_empty() {
            Scope::Subject
        } else {
            Scope::Keys(&self.keys)
        }
    }

    /// The event the engine applies.
    pub fn event(&self) -> Event<'_> {
        Event {
            ts_ms: self.ts_ms,
            client_ip: self.client_ip,
            method: Cow::Borrowed(&self.method),
            path: Cow::Borrowed(&self.path),
            status: self.status,
            user_agent: Cow::Borrowed(&self.user_agent),
            token: self.token.clone(),
            token_in_url: self.token_in_url,
            authenticated: self.authenticated,
            geo: self.geo,
            scheme: self.scheme,
            second_token: self.origin.use_index == 1,
        }
    }
}

/// How far one ingest instance has read one gateway partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The ingest instance (a random id per process): a partition moved to another instance
    /// starts a new sequence of watermarks.
    pub producer: u64,
    /// The gateway topic ([`topic_id`]) and partition.
    pub topic: u32,
    pub partition: i32,
    /// The newest event time read from the partition, epoch milliseconds.
    pub ts_ms: i64,
    /// Nothing new was read from the partition for the ingest stage's idle timeout: it does
    /// not hold the detect stage's clock back.
    pub idle: bool,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(EventRecord),
    Watermark(Watermark),
}

/// The key that routes a use of a token to its detect partition: the token's subject
/// (`iss|sub`, or its token id when it has no `sub`), which serves the token-, subject-,
/// issuer- and `sub`-keyed rules together since a token has one subject. `None` for a request
/// without a token (no rule keyed by token or subject can use it).
pub fn subject_key<'a>(ev: &'a Event<'_>) -> Option<&'a str> {
    ev.token.as_deref().map(|t| &*t.subject)
}

/// The internal partition of a record keyed by `key`: Kafka's murmur2 partitioner (the Java
/// client's default, librdkafka's `murmur2`), so that every instance, whatever its version,
/// and any other Kafka client agree on where a subject's records go.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions.max(1)
}

/// Which internal topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    /// `{prefix}events`, by subject.
    Subject,
    /// `{prefix}events-by-key`, by the value of a rule's key field.
    ByKey,
}

/// Where each use of a token goes: to its subject's partition of `{prefix}events` (uses with
/// a token), and to the partition of each by-key field's value in `{prefix}events-by-key`
/// (uses with a value for that field, with or without a token). Records for several fields
/// that land in one partition are one record naming them all.
#[derive(Debug, Clone)]
pub struct Router {
    posture: Arc<Posture>,
    /// The loaded rules' key fields that subject partitioning does not serve, in name order
    /// (the order records name them in), with their names.
    by_key: Vec<(Field, Box<str>)>,
    partitions: i32,
    /// `None`: there is no by-key topic (no rule needed it at start).
    by_key_partitions: Option<i32>,
    key: Vec<u8>,
    /// (destination partition, index in `by_key`) of the use being routed.
    dest: Vec<(i32, usize)>,
    tokens: TokenParts,
}

impl Router {
    /// A router over topics of `partitions` and `by_key_partitions` partitions. `posture` is
    /// what the posture fields compare with (a rule may be keyed by one).
    pub fn new(rules: &RuleSet, posture: Arc<Posture>, partitions: i32, by_key_partitions: Option<i32>) -> Self {
        let mut r = Router {
            posture,
            by_key: Vec::new(),
            partitions,
            by_key_partitions,
            key: Vec::new(),
            dest: Vec::new(),
            tokens: TokenParts::new(TokenParts::BUDGET_BYTES),
        };
        r.set_rules(rules);
        r
    }

    /// The key fields of `rules` that need `{prefix}events-by-key` under `posture`, in name
    /// order: those of the rules that [`may_fire`] (a field whose rules cannot would have
    /// every use of its values written and read a second time for nothing).
    pub fn by_key_fields(rules: &RuleSet, posture: &Posture) -> Vec<Field> {
        let mut fields: Vec<Field> = Vec::new();
        for r in &rules.rules {
            if !r.key.follows_subject() && !fields.contains(&r.key) && may_fire(r, posture) {
                fields.push(r.key.clone());
            }
        }
        fields.sort_by_key(Field::name);
        fields
    }

    /// Follows a rule reload. Returns the fields that need the by-key topic when there is
    /// none (their rules get no events until a restart creates it).
    pub fn set_rules(&mut self, rules: &RuleSet) -> Vec<Field> {
        let fields = Self::by_key_fields(rules, &self.posture);
        if self.by_key_partitions.is_none() {
            self.by_key.clear();
            return fields;
        }
        self.by_key = fields
            .into_iter()
            .map(|f| {
                let name = f.name().into_boxed_str();
                (f, name)
            })
            .collect();
        Vec::new()
    }

    /// Encodes the records of one use of a token (`buf` is scratch) and hands each to `send`
    /// with its topic and partition, to be written into that partition's [`Frame`].
    pub fn route(
        &mut self,
        ev: &Event<'_>,
        origin: Origin,
        tie: u64,
        buf: &mut Vec<u8>,
        mut send: impl FnMut(Internal, i32, &mut Routed<'_>),
    ) {
        if let Some(subject) = subject_key(ev) {
            buf.clear();
            encode_head(ev, origin, tie, &[], buf);
            let partition = partition_for(subject.as_bytes(), self.partitions);
            send(
                Internal::Subject,
                partition,
                &mut Routed {
                    head: buf,
                    token: ev.token.as_ref(),
                    parts: &mut self.tokens,
                },
            );
        }
        let Some(partitions) = self.by_key_partitions.filter(|_| !self.by_key.is_empty()) else {
            return;
        };
        let cx = Ctx {
            ev,
            expired: false,
            network: ev.client_ip.map(crate::geo::network),
            posture: &self.posture,
            issuer_asymmetric: false,
            key_age_ms: None,
        };
        self.dest.clear();
        for (i, (field, _)) in self.by_key.iter().enumerate() {
            self.key.clear();
            if key_bytes(field, &cx, &mut self.key) {
                self.dest.push((partition_for(&self.key, partitions), i));
            }
        }
        self.dest.sort_unstable();
        for group in self.dest.chunk_by(|a, b| a.0 == b.0) {
            let names: Vec<&str> = group.iter().map(|&(_, i)| &*self.by_key[i].1).collect();
            buf.clear();
            encode_head(ev, origin, tie, &names, buf);
            send(
                Internal::ByKey,
                group[0].0,
                &mut Routed {
                    head: buf,
                    token: ev.token.as_ref(),
                    parts: &mut self.tokens,
                },
            );
        }
    }
}

/// One record a [`Router`] wrote, on its way into a [`Frame`]: all of it but its token's
/// part, which the frame writes in full or refers to.
pub struct Routed<'a> {
    head: &'a [u8],
    token: Option<&'a Arc<TokenInfo>>,
    parts: &'a mut TokenParts,
}

impl Routed<'_> {
    /// Appends the record alone, its token in full: what [`encode_event`] writes.
    pub fn write_alone(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head);
        if let Some(t) = self.token {
            out.push(0);
            out.extend_from_slice(self.parts.part(t));
        }
    }
}

/// A key for a token's allocation, which the holder of the entry keeps alive (so that no other
/// token can have that address meanwhile). Addresses are aligned and share their high bits:
/// spread for the tables, whose hasher passes keys through.
fn address_key(t: &Arc<TokenInfo>) -> u128 {
    u128::from((Arc::as_ptr(t) as usize as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The token part of records ([`put_token`], a record's last part), encoded once per token:
/// a token is used by many requests, and encoding its claims field by field again for every
/// record was most of the ingest stage's copying. Keyed by the address of the token's
/// allocation ([`address_key`]), which the entry holds on to.
#[derive(Debug, Clone)]
struct TokenParts {
    map: Recalled<(Arc<TokenInfo>, Box<[u8]>)>,
    /// The part of a token too large to keep.
    scratch: Vec<u8>,
}

impl TokenParts {
    /// The router's budget: a few thousand tokens' parts (their tokens stay alive while held,
    /// so this adds to the token cache's own budget).
    const BUDGET_BYTES: usize = 4 << 20;

    fn new(budget_bytes: usize) -> Self {
        TokenParts {
            map: Recalled::new(budget_bytes),
            scratch: Vec::new(),
        }
    }

    /// The encoded part of `t`, recalled or encoded now.
    fn part(&mut self, t: &Arc<TokenInfo>) -> &[u8] {
        let key = address_key(t);
        let held = |(h, _): &&(Arc<TokenInfo>, Box<[u8]>)| Arc::ptr_eq(h, t);
        if self.map.get(key).filter(held).is_none() {
            self.scratch.clear();
            put_token(&mut Enc(&mut self.scratch), t);
            let part: Box<[u8]> = self.scratch.as_slice().into();
            return match self.map.insert(key, Self::cost(&part), (t.clone(), part)) {
                Some((_, part)) => part,
                None => &self.scratch,
            };
        }
        // Looked up again: the borrow checker does not yet let the first lookup's reference be
        // returned when the miss path mutates the map.
        self.map.get(key).map_or(&[], |(_, part)| part)
    }

    /// An entry's heap, estimated: its bytes, and the token it keeps alive (about as large
    /// again, in a dozen allocations).
    fn cost(part: &[u8]) -> usize {
        2 * part.len() + 256
    }
}

/// Values recalled by key to spare work, at most about `budget_bytes` of them (each entry's
/// heap estimated by its inserter): past the budget it starts over, which costs only the
/// work again.
#[derive(Debug, Clone)]
struct Recalled<V> {
    map: IdMap<(V, usize)>,
    bytes: usize,
    budget_bytes: usize,
}

impl<V> Recalled<V> {
    fn new(budget_bytes: usize) -> Self {
        Recalled {
            map: IdMap::default(),
            bytes: 0,
            budget_bytes,
        }
    }

    fn get(&self, key: u128) -> Option<&V> {
        self.map.get(&key).map(|(v, _)| v)
    }

    /// Keeps `v`, of `cost` bytes, and returns it kept, unless it alone is over the budget.
    fn insert(&mut self, key: u128, cost: usize, v: V) -> Option<&V> {
        if cost > self.budget_bytes {
            return None;
        }
        if self.bytes + cost > self.budget_bytes {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        let kept = match self.map.entry(key) {
            Entry::Occupied(o) => {
                let kept = o.into_mut();
                self.bytes -= kept.1;
                *kept = (v, cost);
                kept
            }
            Entry::Vacant(e) => e.insert((v, cost)),
        };
        Some(&kept.0)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Whether `rule` can match any event under `posture`. tokenwatch ages the signing keys of
/// configured issuers only (`[verify] issuers`): with none configured, `key_age` and
/// `key_stale` are absent from every event, and a condition on them that fails on an absent
/// value (the default rules' `stale-signing-key` has `key_stale: true`) never holds.
fn may_fire(rule: &crate::rules::Rule, posture: &Posture) -> bool {
    let ages_keys = !posture.issuers.is_empty();
    ages_keys
        || !rule
            .filter
            .conds
            .iter()
            .any(|c| matches!(c.field, Field::KeyAge | Field::KeyStale) && !c.holds_for(Val::Missing))
}

/// The bytes whose murmur2 routes a use by `field`: a function of the field's value, so that
/// every event of one value reaches one partition. `false` when the event has no value (no
/// rule keyed by the field can use it). The values that the engine learns from traffic
/// (`key_age`, `key_stale`, `alg_strength`: which keys and issuers it saw) or takes from its
/// configuration (`expired`: the leeway) are not known here: all events go to one partition
/// for them (exact, not spread).
fn key_bytes(field: &Field, cx: &Ctx<'_>, out: &mut Vec<u8>) -> bool {
    if matches!(
        field,
        Field::KeyAge | Field::KeyStale | Field::AlgStrength | Field::Expired
    ) {
        return true;
    }
    match field.get(cx) {
        Val::Missing => return false,
        Val::Str(s) => out.extend_from_slice(s.as_bytes()),
        Val::StrList(l) => {
            for s in l {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
        }
        Val::Num(n) => out.extend_from_slice(&n.to_bits().to_be_bytes()),
        Val::Bool(b) => out.push(u8::from(b)),
        Val::Ip(ip) => put_ip(ip, out),
        Val::Net(n) => {
            put_ip(n.addr(), out);
            out.push(n.prefix_len());
        }
    }
    true
}

fn put_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// A gateway topic's id in records: its name's murmur2. Two topics of one deployment with the
/// same id would share their partitions' watermarks and repeat detection (both harmless to
/// correctness of what is decided, and improbable).
pub fn topic_id(name: &str) -> u32 {
    murmur2(name.as_bytes())
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The records of one message of an internal topic, being filled.
#[derive(Debug, Default)]
pub struct Frame {
    buf: Vec<u8>,
    records: usize,
    /// The tokens written in full, by address ([`address_key`]; the frame holds them), with
    /// the index of the record that holds each.
    tokens: IdMap<(Arc<TokenInfo>, usize)>,
}

/// How a record holds its token in a [`Frame`].
enum Slot<'a> {
    NoToken,
    /// As how many records back the record holding it in full is.
    Back(u64),
    /// In full: its first record in the frame.
    InFull(&'a Arc<TokenInfo>, &'a [u8]),
}

impl Frame {
    /// Whether a record of `len` bytes fits ([`FRAME_MAX_BYTES`], with its length prefix: a
    /// varint of at most 10 bytes); an empty frame takes any.
    fn has_room(&self, len: usize) -> bool {
        self.buf.is_empty() || self.buf.len() + len + 10 <= FRAME_MAX_BYTES
    }

    /// Appends the length prefix of a record of `len` bytes, after the format if it is the
    /// first.
    fn start_record(&mut self, len: usize) {
        if self.buf.is_empty() {
            self.buf.push(FORMAT);
        }
        Enc(&mut self.buf).varu(len as u64);
        self.records += 1;
    }

    /// Appends a whole record ([`encode_event`], [`encode_watermark`]) if it fits; `false`
    /// leaves the frame as it was.
    #[must_use]
    pub fn push(&mut self, record: &[u8]) -> bool {
        if !self.has_room(record.len()) {
            return false;
        }
        self.start_record(record.len());
        self.buf.extend_from_slice(record);
        true
    }

    /// Appends a routed record if it fits, its token in full if it is the token's first in
    /// the frame, else as how many records back that one is; `false` leaves the frame as it
    /// was.
    #[must_use]
    pub fn push_event(&mut self, r: &mut Routed<'_>) -> bool {
        let index = self.records;
        let slot = match r.token {
            None => Slot::NoToken,
            Some(t) => match self
                .tokens
                .get(&address_key(t))
                .filter(|(held, _)| Arc::ptr_eq(held, t))
            {
                Some(&(_, at)) => Slot::Back((index - at) as u64),
                None => Slot::InFull(t, r.parts.part(t)),
            },
        };
        let len = r.head.len()
            + match slot {
                Slot::NoToken => 0,
                Slot::Back(back) => varu_len(back),
                Slot::InFull(_, part) => 1 + part.len(),
            };
        if !self.has_room(len) {
            return false;
        }
        self.start_record(len);
        self.buf.extend_from_slice(r.head);
        match slot {
            Slot::NoToken => {}
            Slot::Back(back) => Enc(&mut self.buf).varu(back),
            Slot::InFull(t, part) => {
                self.buf.push(0);
                self.buf.extend_from_slice(part);
                self.tokens.insert(address_key(t), (t.clone(), index));
            }
        }
        true
    }

    /// Writes a record with `write`, which says whether it fit. When the frame is full,
    /// `full` gets it first (to send it), and the record goes into the frame emptied, which
    /// takes any record.
    pub fn write_or_start_over(&mut self, mut write: impl FnMut(&mut Frame) -> bool, full: impl FnOnce(&Frame)) {
        if !write(self) {
            full(self);
            self.clear();
            let written = write(self);
            debug_assert!(written, "an empty frame takes any record");
        }
    }

    /// The message.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Empties it, keeping its buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
        self.tokens.clear();
    }
}

/// The bytes of `v` as [`Enc::varu`] writes it.
fn varu_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// The records of a message, each read with [`Records::next_record`]. A message of format 3
/// (every token in full) or 2 (one record per message, before frames) is read too, so that
/// records an older ingest stage left in the topic are detected after an upgrade. A message of
/// another format is refused whole; a damaged length ends the message with an error.
pub fn records(message: &[u8]) -> Result<Records<'_>, RecordError> {
    let (&format, rest) = message.split_first().ok_or(RecordError::Empty)?;
    let (d, whole) = match format {
        FORMAT | FRAMED => (Dec::new(rest), None),
        UNFRAMED => (Dec::new(&[]), Some(rest)),
        other => return Err(RecordError::Format(other)),
    };
    Ok(Records {
        d,
        whole,
        format,
        tokens: Vec::new(),
    })
}

/// The records of a message, in the order they were written ([`records`]).
pub struct Records<'a> {
    d: Dec<'a>,
    /// The record of a format 2 message.
    whole: Option<&'a [u8]>,
    format: u8,
    /// The token of each record read so far (format 4), which a later record may refer to.
    tokens: Vec<Option<Arc<TokenInfo>>>,
}

impl<'a> Records<'a> {
    /// The next record's bytes.
    fn next_bytes(&mut self) -> Option<Result<&'a [u8], RecordError>> {
        if let Some(r) = self.whole.take() {
            return Some(Ok(r));
        }
        if self.d.done() {
            return None;
        }
        match self.d.bytes() {
            Ok(r) => Some(Ok(r)),
            Err(e) => {
                self.d = Dec::new(&[]);
                Some(Err(RecordError::Frame(e)))
            }
        }
    }

    /// The next record, decoded ([`decode_with`]); `None` after the last.
    pub fn next_record(&mut self, memo: Option<&mut TokenMemo>) -> Option<Result<Record, RecordError>> {
        let bytes = match self.next_bytes()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        if self.format != FORMAT {
            return Some(decode_in(bytes, memo, Tokens::InFull));
        }
        let r = decode_in(bytes, memo, Tokens::Referred(&self.tokens));
        self.tokens.push(match &r {
            Ok(Record::Event(e)) => e.token.clone(),
            _ => None,
        });
        Some(r)
    }
}

/// Every record of a message, decoded; the first error refuses it whole.
pub fn decode_message(message: &[u8]) -> Result<Vec<Record>, RecordError> {
    let mut records = records(message)?;
    std::iter::from_fn(|| records.next_record(None)).collect()
}

/// Appends the record of `ev` to `out`, its token in full; `keys` are the names of the fields
/// that routed it ([`EventRecord::keys`]), none when it is routed by subject.
pub fn encode_event(ev: &Event<'_>, origin: Origin, tie: u64, keys: &[&str], out: &mut Vec<u8>) {
    encode_head(ev, origin, tie, keys, out);
    if let Some(t) = &ev.token {
        out.push(0);
        put_token(&mut Enc(out), t);
    }
}

/// [`encode_event`] but the token's part.
fn encode_head(ev: &Event<'_>, origin: Origin, tie: u64, keys: &[&str], out: &mut Vec<u8>) {
    let mut e = Enc(out);
    e.u8(KIND_EVENT);
    e.u64(u64::from(origin.topic));
    e.vari(i64::from(origin.partition));
    e.vari(origin.offset);
    e.varu(u64::from(origin.line));
    e.u8(origin.use_index);
    e.varu(keys.len() as u64);
    for k in keys {
        e.bytes(k.as_bytes());
    }
    e.u64(tie);
    e.vari(ev.ts_ms);
    let flags = u8::from(ev.client_ip.is_some())
        | u8::from(ev.status.is_some()) << 1
        | u8::from(ev.token.is_some()) << 2
        | u8::from(ev.token_in_url) << 3
        | u8::from(ev.authenticated) << 4
        | u8::from(ev.geo.is_some()) << 5
        | match ev.scheme {
            None => 0,
            Some(Scheme::Http) => 1 << 6,
            Some(Scheme::Https) => 2 << 6,
        };
    e.u8(flags);
    if let Some(ip) = &ev.client_ip {
        e.ip(ip);
    }
    if let Some(s) = ev.status {
        e.varu(u64::from(s));
    }
    e.bytes(ev.method.as_bytes());
    e.bytes(ev.path.as_bytes());
    e.bytes(ev.user_agent.as_bytes());
    if let Some(g) = &ev.geo {
        e.f64(g.lat);
        e.f64(g.lon);
        e.f64(g.accuracy_km);
    }
}

/// Appends a watermark record to `out`.
pub fn encode_watermark(w: &Watermark, out: &mut Vec<u8>) {
    let mut e = Enc(out);
    e.u8(KIND_WATERMARK);
    e.u64(w.producer);
    e.u64(u64::from(w.topic));
    e.vari(i64::from(w.partition));
    e.vari(w.ts_ms);
    e.u8(u8::from(w.idle));
}

/// The tokens of the records a detect task read lately, each decoded once. A token is used by
/// many requests, and each of its records carries its claims again: decoding them anew for
/// every record (a dozen allocations) was the detect stage's largest cost. The token's part of
/// a record is its last, and the same bytes for every use of one token, so those bytes are the
/// key, compared whole (never a hash alone: the claims are the sender's text). Bounded like
/// the ingest stage's token cache: when the entries' estimated heap passes the budget, it
/// starts over.
pub struct TokenMemo {
    hasher: TokenHasher,
    map: Recalled<(Box<[u8]>, Arc<TokenInfo>)>,
}

impl TokenMemo {
    /// A memo holding about `budget_bytes` of heap at most.
    pub fn new(budget_bytes: usize) -> Self {
        TokenMemo {
            hasher: TokenHasher::new(),
            map: Recalled::new(budget_bytes),
        }
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The token whose record part starts `d` (the rest of the record), decoded or recalled.
    fn token(&mut self, d: &mut Dec<'_>) -> Result<Arc<TokenInfo>, SnapshotError> {
        let part = d.rest();
        let h = self.hasher.hash(part);
        if let Some((_, t)) = self.map.get(h).filter(|(bytes, _)| **bytes == *part) {
            d.take(part.len())?;
            return Ok(t.clone());
        }
        let t = Arc::new(get_token(d)?);
        // (Bytes after the token make the record malformed: nothing to remember.)
        if d.done() {
            self.map.insert(h, Self::cost(part), (part.into(), t.clone()));
        }
        Ok(t)
    }

    /// An entry's heap, estimated: the key, the decoded strings (about the key's length
    /// again) and a dozen allocations' overhead.
    fn cost(part: &[u8]) -> usize {
        2 * part.len() + 256
    }
}

/// Reads a record written alone ([`encode_event`], [`Routed::write_alone`],
/// [`encode_watermark`]); all of it or an error.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    decode_with(bytes, None)
}

/// [`decode`], recalling the record's token from `memo` when it was decoded before.
fn decode_with(bytes: &[u8], memo: Option<&mut TokenMemo>) -> Result<Record, RecordError> {
    decode_in(bytes, memo, Tokens::Referred(&[]))
}

/// Where an event record's token is.
#[derive(Clone, Copy)]
enum Tokens<'a> {
    /// In full, last in the record (formats 2 and 3).
    InFull,
    /// In full after a 0, or as how many records back in its message (these, in order) one
    /// holds it (format 4).
    Referred(&'a [Option<Arc<TokenInfo>>]),
}

fn decode_in(bytes: &[u8], memo: Option<&mut TokenMemo>, tokens: Tokens<'_>) -> Result<Record, RecordError> {
    let (&kind, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    let mut d = Dec::new(body);
    let record = match kind {
        KIND_EVENT => Record::Event(get_event(&mut d, memo, tokens)?),
        KIND_WATERMARK => Record::Watermark(Watermark {
            producer: d.u64()?,
            topic: get_topic(&mut d)?,
            partition: get_i32(&mut d)?,
            ts_ms: d.vari()?,
            idle: get_bool(&mut d)?,
        }),
        other => return Err(RecordError::Kind(other)),
    };
    if !d.done() {
        return Err(SnapshotError::Invalid {
            at: d.pos(),
            what: "bytes after the record",
        }
        .into());
    }
    Ok(record)
}

fn get_event(d: &mut Dec<'_>, memo: Option<&mut TokenMemo>, tokens: Tokens<'_>) -> Result<EventRecord, SnapshotError> {
    let origin = Origin {
        topic: get_topic(d)?,
        partition: get_i32(d)?,
        offset: d.vari()?,
        line: u32::try_from(d.varu()?).map_err(|_| d.invalid("line index out of range"))?,
        use_index: d.u8()?,
    };
    let keys = (0..d.count(1)?)
        .map(|_| Field::parse(d.str()?).map_err(|_| d.invalid("unknown routing field")))
        .collect::<Result<Vec<_>, _>>()?;
    let tie = d.u64()?;
    let ts_ms = d.vari()?;
    let flags = d.u8()?;
    let client_ip = if flags & 1 != 0 { Some(d.ip()?) } else { None };
    let status = if flags & 2 != 0 {
        Some(u16::try_from(d.varu()?).map_err(|_| d.invalid("status out of range"))?)
    } else {
        None
    };
    let method = d.str()?.into();
    let path = d.str()?.into();
    let user_agent = d.str()?.into();
    let geo = if flags & 32 != 0 {
        Some(GeoPoint {
            lat: d.f64()?,
            lon: d.f64()?,
            accuracy_km: d.f64()?,
        })
    } else {
        None
    };
    let token = if flags & 4 == 0 {
        None
    } else {
        let back = match tokens {
            Tokens::InFull => 0,
            Tokens::Referred(_) => d.varu()?,
        };
        Some(match (back, memo) {
            (0, Some(memo)) => memo.token(d)?,
            (0, None) => Arc::new(get_token(d)?),
            (back, _) => referred(d, tokens, back)?,
        })
    };
    let scheme = match flags >> 6 {
        0 => None,
        1 => Some(Scheme::Http),
        2 => Some(Scheme::Https),
        _ => return Err(d.invalid("unknown scheme")),
    };
    Ok(EventRecord {
        origin,
        tie,
        ts_ms,
        client_ip,
        method,
        path,
        status,
        user_agent,
        token,
        token_in_url: flags & 8 != 0,
        authenticated: flags & 16 != 0,
        geo,
        scheme,
        keys: keys.into(),
    })
}

/// The token of the record `back` records before this one in its message.
fn referred(d: &Dec<'_>, tokens: Tokens<'_>, back: u64) -> Result<Arc<TokenInfo>, SnapshotError> {
    let Tokens::Referred(earlier) = tokens else {
        return Err(d.invalid("a token referred to outside a message"));
    };
    usize::try_from(back)
        .ok()
        .and_then(|back| earlier.len().checked_sub(back))
        .and_then(|i| earlier[i].clone())
        .ok_or_else(|| d.invalid("a token referred to in no earlier record of the message"))
}

fn put_opt(e: &mut Enc<'_>, s: Option<&str>) {
    match s {
        None => e.u8(0),
        Some(s) => {
            e.u8(1);
            e.bytes(s.as_bytes());
        }
    }
}

fn get_opt(d: &mut Dec<'_>) -> Result<Option<Arc<str>>, SnapshotError> {
    Ok(if get_bool(d)? { Some(d.str()?.into()) } else { None })
}

fn put_date(e: &mut Enc<'_>, v: Option<i64>) {
    match v {
        None => e.u8(0),
        Some(v) => {
            e.u8(1);
            e.vari(v);
        }
    }
}

fn get_date(d: &mut Dec<'_>) -> Result<Option<i64>, SnapshotError> {
    Ok(if get_bool(d)? { Some(d.vari()?) } else { None })
}

fn get_bool(d: &mut Dec<'_>) -> Result<bool, SnapshotError> {
    match d.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(d.invalid("a flag is neither 0 nor 1")),
    }
}

fn get_topic(d: &mut Dec<'_>) -> Result<u32, SnapshotError> {
    u32::try_from(d.u64()?).map_err(|_| d.invalid("topic id out of range"))
}

fn get_i32(d: &mut Dec<'_>) -> Result<i32, SnapshotError> {
    i32::try_from(d.vari()?).map_err(|_| d.invalid("partition out of range"))
}

/// The token's id and claims as [`TokenInfo`] holds them (the token itself never was).
fn put_token(e: &mut Enc<'_>, t: &TokenInfo) {
    e.bytes(t.token_id.as_bytes());
    let flags = u8::from(t.id_is_jti)
        | u8::from(t.unsigned) << 1
        | u8::from(t.verified) << 2
        | u8::from(t.signature_invalid) << 3;
    e.u8(flags);
    put_opt(e, t.iss.as_deref());
    put_opt(e, t.sub.as_deref());
    e.bytes(t.subject.as_bytes());
    put_opt(e, t.alg.as_deref());
    put_opt(e, t.kid.as_deref());
    e.varu(t.aud.len() as u64);
    for a in t.aud.iter() {
        e.bytes(a.as_bytes());
    }
    put_date(e, t.exp);
    put_date(e, t.iat);
    put_date(e, t.nbf);
    e.varu(t.claims.len() as u64);
    for (name, value) in t.claims.iter() {
        e.bytes(name.as_bytes());
        match value {
            ClaimValue::Str(s) => {
                e.u8(0);
                e.bytes(s.as_bytes());
            }
            ClaimValue::Num(n) => {
                e.u8(1);
                e.f64(*n);
            }
            ClaimValue::Bool(b) => e.u8(2 + u8::from(*b)),
        }
    }
    e.varu(t.sensitive_claims.len() as u64);
    for name in t.sensitive_claims.iter() {
        e.bytes(name.as_bytes());
    }
}

fn get_token(d: &mut Dec<'_>) -> Result<TokenInfo, SnapshotError> {
    let token_id = d.str()?.into();
    let flags = d.u8()?;
    let iss = get_opt(d)?;
    let sub = get_opt(d)?;
    let subject = d.str()?.into();
    let alg = get_opt(d)?;
    let kid = get_opt(d)?;
    let aud = (0..d.count(1)?)
        .map(|_| d.str().map(Box::from))
        .collect::<Result<Vec<_>, _>>()?;
    let (exp, iat, nbf) = (get_date(d)?, get_date(d)?, get_date(d)?);
    let claims = (0..d.count(2)?).map(|_| get_claim(d)).collect::<Result<Vec<_>, _>>()?;
    let sensitive_claims = (0..d.count(1)?)
        .map(|_| d.str().map(Box::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TokenInfo {
        token_id,
        id_is_jti: flags & 1 != 0,
        iss,
        sub,
        subject,
        alg,
        kid,
        aud: aud.into(),
        exp,
        iat,
        nbf,
        unsigned: flags & 2 != 0,
        verified: flags & 4 != 0,
        claims: claims.into(),
        signature_invalid: flags & 8 != 0,
        sensitive_claims: sensitive_claims.into(),
    })
}

fn get_claim(d: &mut Dec<'_>) -> Result<(Box<str>, ClaimValue), SnapshotError> {
    let name = d.str()?.into();
    let value = match d.u8()? {
        0 => ClaimValue::Str(d.str()?.into()),
        1 => ClaimValue::Num(d.f64()?),
        2 => ClaimValue::Bool(false),
        3 => ClaimValue::Bool(true),
        _ => return Err(d.invalid("unknown claim type")),
    };
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(token: Option<TokenInfo>) -> Event<'static> {
        Event {
            ts_ms: 1_795_910_400_123,
            client_ip: Some("2001:db8::7".parse().unwrap()),
            method: "GET".into(),
            path: "/billing/invoices".into(),
            status: Some(200),
            user_agent: "curl/8".into(),
            token: token.map(Arc::new),
            token_in_url: true,
            authenticated: true,
            geo: Some(GeoPoint {
                lat: 48.85,
                lon: 2.35,
                accuracy_km: 20.0,
            }),
            scheme: Some(Scheme::Http),
            second_token: false,
        }
    }

    fn full_token() -> TokenInfo {
        TokenInfo {
            kid: Some("k1".into()),
            aud: Arc::new(["billing-api".into(), "other".into()]),
            exp: Some(1_795_914_000),
            iat: Some(-5),
            nbf: None,
            claims: Box::new([
                ("tenant".into(), ClaimValue::Str("acme".into())),
                ("level".into(), ClaimValue::Num(2.5)),
                ("admin".into(), ClaimValue::Bool(true)),
            ]),
            sensitive_claims: Box::new(["password".into()]),
            signature_invalid: true,
            ..TokenInfo::test_token("jti-1", "alice")
        }
    }

    /// The first use of the first line of partition 0.
    const FIRST: Origin = Origin {
        topic: 7,
        partition: 0,
        offset: 0,
        line: 0,
        use_index: 0,
    };

    /// The record of `ev` at [`FIRST`], routed by `keys`.
    fn first_record(ev: &Event<'_>, keys: &[&str]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_event(ev, FIRST, 1, keys, &mut buf);
        buf
    }

    fn round_trip(ev: &Event<'_>) -> EventRecord {
        let origin = Origin {
            topic: 7,
            partition: 5,
            offset: 123_456_789,
            line: 3,
            // A second token in the URL is use 1: the record says which use it is.
            use_index: u8::from(ev.second_token),
        };
        let mut buf = Vec::new();
        encode_event(ev, origin, 0xdead_beef_cafe, &["kid", "claim.tenant"], &mut buf);
        match decode(&buf).unwrap() {
            Record::Event(r) => {
                assert_eq!((r.origin, r.tie), (origin, 0xdead_beef_cafe));
                assert_eq!(&*r.keys, &[Field::Kid, Field::Claim("tenant".into())]);
                r
            }
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn an_event_comes_back_as_the_engine_saw_it() {
        let second = Event {
            second_token: true,
            ..event(Some(full_token()))
        };
        for ev in [event(Some(full_token())), event(None), second] {
            let back = round_trip(&ev);
            assert_eq!(format!("{:?}", back.event()), format!("{ev:?}"));
            assert_eq!(back.token.as_deref(), ev.token.as_deref());
        }
        let bare = Event {
            client_ip: None,
            status: None,
            geo: None,
            scheme: None,
            ..event(None)
        };
        assert_eq!(round_trip(&bare).event().status, None);
    }

    fn memo_event(bytes: &[u8], memo: &mut TokenMemo) -> EventRecord {
        match decode_with(bytes, Some(memo)) {
            Ok(Record::Event(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_token_is_decoded_once_and_recalled_only_for_the_same_bytes() {
        let mut memo = TokenMemo::new(1 << 20);
        let alice = first_record(&event(Some(full_token())), &[]);
        let first = memo_event(&alice, &mut memo);
        let again = memo_event(&alice, &mut memo);
        assert!(Arc::ptr_eq(
            first.token.as_ref().unwrap(),
            again.token.as_ref().unwrap()
        ));
        let Ok(Record::Event(plain)) = decode(&alice) else {
            panic!("not an event")
        };
        assert_eq!(first, plain, "as decoded without the memo");
        // Another token of the same length: its own claims, never the first's.
        let other = TokenInfo {
            token_id: "jti-2".into(),
            ..full_token()
        };
        let r = memo_event(&first_record(&event(Some(other.clone())), &[]), &mut memo);
        assert_eq!(*r.token.unwrap(), other);
        assert_eq!(memo.len(), 2);
        // A damaged record is refused, as without the memo, and not remembered.
        let mut longer = alice.clone();
        longer.push(0);
        assert!(decode_with(&longer, Some(&mut memo)).is_err());
        assert_eq!(memo.len(), 2);
    }

    #[test]
    fn the_token_memo_stays_within_its_budget() {
        let budget = 4096;
        let mut memo = TokenMemo::new(budget);
        for i in 0..200 {
            let t = TokenInfo {
                token_id: format!("jti-{i}").into(),
                ..full_token()
            };
            let r = memo_event(&first_record(&event(Some(t.clone())), &[]), &mut memo);
            assert_eq!(*r.token.unwrap(), t);
            assert!(memo.map.bytes <= budget, "{} bytes", memo.map.bytes);
        }
        assert!(!memo.is_empty() && memo.len() < 200, "{} tokens", memo.len());
    }

    /// The records a router writes for `ev`, by subject and by key, in order.
    fn routed(router: &mut Router, ev: &Event<'_>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        router.route(ev, FIRST, 1, &mut Vec::new(), |_, _, r| {
            let mut bytes = Vec::new();
            r.write_alone(&mut bytes);
            out.push(bytes);
        });
        out
    }

    #[test]
    fn a_routed_record_is_the_encoded_event_whether_its_token_part_was_recalled_or_not() {
        let mut router = Router::new(
            &rules_keyed_by(&["token_id", "claim.tenant"]),
            Arc::default(),
            4,
            Some(2),
        );
        let alice = event(Some(full_token()));
        let bob = event(Some(TokenInfo {
            token_id: "jti-2".into(),
            ..full_token()
        }));
        for ev in [&alice, &bob, &alice, &bob] {
            let records = routed(&mut router, ev);
            assert_eq!(records.len(), 2, "by subject and by tenant");
            assert_eq!(records[0], first_record(ev, &[]));
            assert_eq!(records[1], first_record(ev, &["claim.tenant"]));
        }
        assert_eq!(router.tokens.map.len(), 2, "one part per token");
        // Tokens made one after the other, each dropped by the caller after its use: each its
        // own part (the router holds the ones it encoded, so no address is used twice).
        let mut router = Router::new(&rules_keyed_by(&["token_id"]), Arc::default(), 4, None);
        for i in 0..50 {
            let ev = event(Some(TokenInfo {
                token_id: format!("jti-{i}").into(),
                ..full_token()
            }));
            assert_eq!(routed(&mut router, &ev), [first_record(&ev, &[])]);
        }
    }

    #[test]
    fn the_token_parts_stay_within_their_budget() {
        let budget = 4096;
        let mut parts = TokenParts::new(budget);
        let tokens: Vec<Arc<TokenInfo>> = (0..200)
            .map(|i| {
                Arc::new(TokenInfo {
                    token_id: format!("jti-{i}").into(),
                    ..full_token()
                })
            })
            .collect();
        for t in tokens.iter().chain(&tokens) {
            let mut expected = Vec::new();
            put_token(&mut Enc(&mut expected), t);
            assert_eq!(parts.part(t), expected);
            assert!(parts.map.bytes <= budget, "{} bytes", parts.map.bytes);
        }
        assert!(
            parts.map.len() > 0 && parts.map.len() < 200,
            "{} tokens",
            parts.map.len()
        );
        // A part too large for the budget is written, not kept.
        let mut tiny = TokenParts::new(16);
        assert!(!tiny.part(&tokens[0]).is_empty() && tiny.map.len() == 0);
    }

    #[test]
    fn partitions_are_kafkas_murmur2() {
        // Kafka's UtilsTest vectors for murmur2 (signed 32-bit in Java).
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
        assert_eq!(partition_for(b"foobar", 6), (-790_332_482i32 & 0x7fff_ffff) % 6);
    }

    #[test]
    fn a_watermark_comes_back() {
        let w = Watermark {
            topic: u32::MAX,
            producer: u64::MAX,
            partition: 2,
            ts_ms: -1,
            idle: true,
        };
        let mut buf = Vec::new();
        encode_watermark(&w, &mut buf);
        assert_eq!(decode(&buf), Ok(Record::Watermark(w)));
    }

    #[test]
    fn damaged_records_are_refused_never_half_read() {
        let buf = first_record(&event(Some(full_token())), &[]);
        assert_eq!(decode(&[]), Err(RecordError::Empty));
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "a record cut at {cut} bytes was read");
        }
        let unknown = first_record(&event(None), &["no_such_field"]);
        assert!(matches!(decode(&unknown), Err(RecordError::Malformed(_))));
        let mut longer = buf.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(RecordError::Malformed(_))));
        let mut kind = buf.clone();
        kind[0] = 9;
        assert_eq!(decode(&kind), Err(RecordError::Kind(9)));
    }

    #[test]
    fn a_message_is_a_frame_of_records_and_another_format_is_refused_whole() {
        let ev = first_record(&event(Some(full_token())), &[]);
        let mut wm = Vec::new();
        let w = Watermark {
            producer: 1,
            topic: 7,
            partition: 0,
            ts_ms: 5,
            idle: false,
        };
        encode_watermark(&w, &mut wm);
        let mut frame = Frame::default();
        assert!(frame.is_empty());
        assert!(frame.push(&ev) && frame.push(&wm));
        assert_eq!(frame.len(), 2);
        let got = decode_message(frame.bytes()).unwrap();
        assert_eq!(got, [decode(&ev).unwrap(), Record::Watermark(w)]);
        assert_eq!(decode_message(&[]), Err(RecordError::Empty));
        // Format 3 (frames, every token in full) and 2 (one record per message, before
        // frames) are still read; any other format is refused whole (format 1 named no
        // routing fields).
        let old = in_full(&event(Some(full_token())));
        let mut framed = vec![3];
        Enc(&mut framed).bytes(&old);
        Enc(&mut framed).bytes(&wm);
        assert_eq!(decode_message(&framed).unwrap(), got);
        let mut unframed = vec![2];
        unframed.extend_from_slice(&old);
        assert_eq!(decode_message(&unframed).unwrap(), [decode(&ev).unwrap()]);
        for other in [1, FORMAT + 1] {
            let mut m = frame.bytes().to_vec();
            m[0] = other;
            assert_eq!(records(&m).err(), Some(RecordError::Format(other)));
        }
        // A message cut short: the records before the damage are read, then one error ends it.
        let whole = frame.bytes();
        let mut it = records(&whole[..whole.len() - 1]).unwrap();
        assert_eq!(it.next_bytes(), Some(Ok(&ev[..])));
        assert!(matches!(it.next_bytes(), Some(Err(RecordError::Frame(_)))));
        assert_eq!(it.next_bytes(), None);
        // A record that would pass the bound waits for the next frame; an empty frame takes any.
        let big = vec![0u8; FRAME_MAX_BYTES];
        assert!(!frame.push(&big) && frame.len() == 2);
        assert!(Frame::default().push(&big));
        frame.clear();
        assert!(frame.is_empty() && frame.bytes().is_empty());
    }

    /// `ev`'s record as formats 2 and 3 wrote it: the token's part right after the head.
    fn in_full(ev: &Event<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_head(ev, FIRST, 1, &[], &mut buf);
        put_token(&mut Enc(&mut buf), ev.token.as_ref().unwrap());
        buf
    }

    /// The frame a router writes for `events`, by subject, all to one partition.
    fn framed(router: &mut Router, events: &[&Event<'_>]) -> Frame {
        let mut frame = Frame::default();
        for ev in events {
            router.route(ev, FIRST, 1, &mut Vec::new(), |to, _, r| {
                assert!(matches!(to, Internal::Subject));
                assert!(frame.push_event(r));
            });
        }
        frame
    }

    #[test]
    fn a_token_is_written_once_per_message_and_referred_to_after() {
        let mut router = Router::new(&rules_keyed_by(&["token_id"]), Arc::default(), 1, None);
        let alice = event(Some(full_token()));
        let bob = event(Some(TokenInfo {
            token_id: "jti-2".into(),
            ..full_token()
        }));
        let none = event(None);
        let uses = [&alice, &bob, &alice, &none, &alice, &bob];
        let frame = framed(&mut router, &uses);
        // (A use without a token has no subject: it is not routed by subject.)
        assert_eq!(frame.len(), 5);
        let alone: Vec<Vec<u8>> = [&alice, &bob, &alice, &alice, &bob]
            .iter()
            .map(|ev| first_record(ev, &[]))
            .collect();
        let want: Vec<Record> = alone.iter().map(|b| decode(b).unwrap()).collect();
        assert_eq!(
            decode_message(frame.bytes()).unwrap(),
            want,
            "as if each held its token"
        );
        // Three records refer to their token (a byte) instead of holding it in full (a 0 and
        // its part); each record's length prefix is at most two bytes.
        let in_full: usize = 1 + alone.iter().map(|b| b.len() + 2).sum::<usize>();
        let mut part = Vec::new();
        put_token(&mut Enc(&mut part), &full_token());
        assert!(
            frame.bytes().len() <= in_full - 3 * part.len(),
            "each token in full once: {} bytes against {in_full}",
            frame.bytes().len()
        );
        // The detect stage decodes each token once per message, and once at all with a memo.
        let mut memo = TokenMemo::new(1 << 20);
        let mut seen: Vec<Arc<TokenInfo>> = Vec::new();
        for _ in 0..2 {
            let mut records = records(frame.bytes()).unwrap();
            while let Some(r) = records.next_record(Some(&mut memo)) {
                let Ok(Record::Event(r)) = r else { panic!("{r:?}") };
                let t = r.token.unwrap();
                match seen.iter().find(|s| s.token_id == t.token_id) {
                    Some(s) => assert!(Arc::ptr_eq(s, &t)),
                    None => seen.push(t),
                }
            }
        }
        assert_eq!((seen.len(), memo.len()), (2, 2));
        // A new frame writes its tokens in full again.
        let mut again = framed(&mut router, &[&alice]);
        assert_eq!(decode_message(again.bytes()).unwrap(), want[..1]);
        again.clear();
        assert!(again.tokens.is_empty(), "a cleared frame lets its tokens go");
    }

    /// A reference counts records, so a damaged record never shifts what a later one refers
    /// to: a reference to a record that was refused, or to none, is refused in turn.
    #[test]
    fn a_reference_to_a_refused_or_missing_record_is_refused_never_misread() {
        let mut router = Router::new(&rules_keyed_by(&["token_id"]), Arc::default(), 1, None);
        let alice = event(Some(full_token()));
        let frame = framed(&mut router, &[&alice, &alice]);
        let mut damaged = frame.bytes().to_vec();
        // The first record's kind, after the format and the record's length.
        let mut d = Dec::new(&damaged[1..]);
        d.varu().unwrap();
        let kind = 1 + d.pos();
        assert_eq!(damaged[kind], KIND_EVENT);
        damaged[kind] = 9;
        let mut records = records(&damaged).unwrap();
        assert_eq!(records.next_record(None), Some(Err(RecordError::Kind(9))));
        assert!(matches!(
            records.next_record(None),
            Some(Err(RecordError::Malformed(_)))
        ));
        assert_eq!(records.next_record(None), None);
        // The second record alone refers to a record before it: out of its message, refused.
        let mut it = self::records(frame.bytes()).unwrap();
        let _ = it.next_bytes();
        let second = it.next_bytes().unwrap().unwrap();
        assert!(matches!(decode(second), Err(RecordError::Malformed(_))));
        // A first record that refers back is refused too.
        let mut first = vec![FORMAT];
        Enc(&mut first).bytes(second);
        assert!(matches!(decode_message(&first), Err(RecordError::Malformed(_))));
    }

    /// Rules keyed by `keys` (one `match` rule each, on every event).
    fn rules_keyed_by(keys: &[&str]) -> RuleSet {
        let mut text = String::from("rules:\n");
        for (i, k) in keys.iter().enumerate() {
            text.push_str(&format!(
                "  - {{id: r{i}, description: d, severity: low, action: alert, kind: match, key: {k}}}\n"
            ));
        }
        RuleSet {
            rules: crate::rules::load_str(std::path::Path::new("t.yaml"), &text).unwrap(),
            files: 1,
        }
    }

    /// Where a router sends `ev`: (topic, partition, the fields the record names).
    fn routes(router: &mut Router, ev: &Event<'_>) -> Vec<(Internal, i32, Vec<Field>)> {
        let origin = FIRST;
        let mut out = Vec::new();
        router.route(ev, origin, 9, &mut Vec::new(), |to, p, routed| {
            let mut bytes = Vec::new();
            routed.write_alone(&mut bytes);
            let Ok(Record::Event(r)) = decode(&bytes) else {
                panic!("not an event")
            };
            assert_eq!(r.origin, origin);
            out.push((to, p, r.keys.to_vec()));
        });
        out
    }

    #[test]
    fn token_id_and_subject_go_by_subject_every_other_key_by_its_value() {
        let rules = rules_keyed_by(&["token_id", "subject", "kid", "iss", "client_ip", "network"]);
        assert_eq!(
            Router::by_key_fields(&rules, &Posture::default()),
            [Field::ClientIp, Field::Iss, Field::Kid, Field::Network],
            "in name order"
        );
        assert!(Router::by_key_fields(&rules_keyed_by(&["token_id", "subject"]), &Posture::default()).is_empty());
        // One partition: every by-key field lands in it, in one record naming them all.
        let mut one = Router::new(&rules, Arc::default(), 4, Some(1));
        let ev = event(Some(full_token()));
        assert_eq!(
            routes(&mut one, &ev),
            [
                (Internal::Subject, partition_for(b"https://idp|alice", 4), vec![]),
                (Internal::ByKey, 0, Router::by_key_fields(&rules, &Posture::default())),
            ]
        );
        // Many partitions: each field's record goes to the partition of its value.
        let mut many = Router::new(&rules, Arc::default(), 4, Some(64));
        let got = routes(&mut many, &ev);
        let kid = got.iter().find(|(_, _, k)| k.contains(&Field::Kid)).unwrap();
        assert_eq!(kid.1, partition_for(b"k1", 64));
        let iss = got.iter().find(|(_, _, k)| k.contains(&Field::Iss)).unwrap();
        assert_eq!(iss.1, partition_for(b"https://idp", 64));
        let fields: usize = got.iter().map(|(_, _, k)| k.len()).sum();
        assert_eq!(fields, 4, "each field once: {got:?}");
        let partitions: Vec<i32> = got.iter().filter(|r| r.0 == Internal::ByKey).map(|r| r.1).collect();
        let mut distinct = partitions.clone();
        distinct.dedup();
        assert_eq!(partitions, distinct, "one record per partition, in partition order");
    }

    #[test]
    fn a_rule_on_key_age_needs_no_by_key_topic_while_no_issuer_is_configured() {
        let text = "rules:\n  - {id: stale, description: d, severity: low, action: alert, kind: match, key: kid, where: {key_stale: true}}\n  - {id: young, description: d, severity: low, action: alert, kind: match, key: iss, where: {key_age: {exists: false}}}\n";
        let rules = RuleSet {
            rules: crate::rules::load_str(std::path::Path::new("t.yaml"), text).unwrap(),
            files: 1,
        };
        // `young` holds where `key_age` is absent: it may fire, `stale` may not.
        assert_eq!(Router::by_key_fields(&rules, &Posture::default()), [Field::Iss]);
        let mut r = Router::new(&rules, Arc::default(), 4, Some(8));
        let got = routes(&mut r, &event(Some(full_token())));
        assert_eq!(got.iter().filter(|g| g.2.contains(&Field::Kid)).count(), 0, "{got:?}");
        // With an issuer configured, keys are aged and `stale` may fire.
        let configured = Posture::new(vec!["https://idp".into()], vec![], vec![], vec![], 1000);
        assert_eq!(Router::by_key_fields(&rules, &configured), [Field::Iss, Field::Kid]);
        let mut r = Router::new(&rules, Arc::new(configured), 4, Some(8));
        let got = routes(&mut r, &event(Some(full_token())));
        assert_eq!(got.iter().filter(|g| g.2.contains(&Field::Kid)).count(), 1, "{got:?}");
    }

    #[test]
    fn a_use_without_a_value_is_not_routed_by_it() {
        let rules = rules_keyed_by(&["kid", "client_ip"]);
        let mut r = Router::new(&rules, Arc::default(), 4, Some(8));
        // No token: no subject record and no kid record, but the client address routes it.
        let got = routes(&mut r, &event(None));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, Internal::ByKey);
        assert_eq!(got[0].2, [Field::ClientIp]);
        // A token without kid, and no client address: the subject record only.
        let bare = Event {
            client_ip: None,
            ..event(Some(TokenInfo::test_token("j", "bob")))
        };
        assert_eq!(
            routes(&mut r, &bare),
            [(Internal::Subject, partition_for(b"https://idp|bob", 4), vec![])]
        );
        // Without the by-key topic (created only at start), the fields are reported unserved.
        let mut none = Router::new(&rules_keyed_by(&["token_id"]), Arc::default(), 4, None);
        assert_eq!(none.set_rules(&rules), [Field::ClientIp, Field::Kid]);
        assert_eq!(routes(&mut none, &event(None)), []);
    }

    #[test]
    fn a_record_holds_the_claims_never_the_token() {
        let raw = crate::token::encode_unsigned_parts(
            &serde_json::json!({"alg": "RS256", "kid": "k1"}),
            &serde_json::json!({"iss": "https://idp", "sub": "alice", "exp": 1_795_914_000}),
            b"the-signature-segment-of-this-token",
        );
        let info = crate::token::decode(crate::token::RawToken::new(&raw), &[]).unwrap();
        assert!(!info.id_is_jti, "a token without jti is known by its hash");
        let ev = event(Some(info));
        let buf = first_record(&ev, &[]);
        let contains = |needle: &[u8]| buf.windows(needle.len()).any(|w| w == needle);
        for (i, segment) in raw.split('.').enumerate() {
            assert!(
                !contains(segment.as_bytes()),
                "segment {i} of the token is in the record"
            );
        }
        assert!(contains(b"https://idp|alice"));
        assert_eq!(subject_key(&ev), Some("https://idp|alice"));
        assert_eq!(subject_key(&event(None)), None);
    }
}
