//! One stream of log lines through every stage: parse → decode → locate → engine.
//!
//! [`Pipeline`] is what `replay` drives from files and what the streaming service drives from
//! Kafka, so both make the same decisions for the same lines. It counts everything it skips,
//! by reason; one bad line never stops it.
//!
//! The work splits in two halves with different needs:
//! - **decoding** ([`Decoder`]: parse the JSON line, decode its tokens through the
//!   [`TokenCache`], locate the client in the GeoIP database) depends on the line alone, so
//!   any number of threads can do it, each with its own caches;
//! - **the engine** keeps event-time state and must see events in input order, on one thread.
//!
//! Lines travel in [`LineBatch`]es (one buffer, many lines) and come back as
//! [`DecodedBatch`]es whose events point into that buffer, so nothing is copied or allocated
//! per line once the buffers have grown. [`ParallelDecode`] runs decoding on worker threads
//! and hands batches back in submission order; [`Pipeline::apply_batch`] then runs the
//! engine. One thread ([`Pipeline::decode_batch`]) or many, the decisions are identical.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::decision::Decision;
use crate::engine::{Engine, EngineConfig, Scope};
use crate::geo::GeoDb;
use crate::input::lines::{LineBatch, LineSpan};
use crate::input::{Event, Format, FormatError, GeoPoint, Mapping, Parser, Skip};
use crate::posture::stats::ReportStats;
use crate::rules::RuleSet;
use crate::token::{DecodeError, TokenCache, TokenInfo};
use crate::verify::Verifier;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub format: Format,
    pub mapping: Option<Mapping>,
    /// Heap the decoded-token cache may hold (`[engine] token_cache_bytes`), shared among
    /// decoding threads ([`crate::token::TokenCache::heap_bytes`]).
    pub token_cache_bytes: usize,
    /// Longer compact tokens are not decoded (`token_too_large`; the request is still an
    /// event): `[input] max_token_bytes`.
    pub max_token_bytes: usize,
    pub engine: EngineConfig,
    /// Verifies token signatures (`--jwks`); `None`: no token is `verified`.
    pub verify: Option<Arc<Verifier>>,
    /// What the posture fields compare traffic with (`[verify] issuers`, `[audiences]`,
    /// `[posture]`).
    pub posture: Arc<crate::posture::Posture>,
}

impl PipelineConfig {
    /// The warning to show once at start when nothing configured can make an event
    /// authenticated ([`crate::verify::evidence_warning`]).
    pub fn evidence_warning(&self) -> Option<String> {
        let attests = self.mapping.as_ref().is_some_and(Mapping::attests);
        crate::verify::evidence_warning(self.verify.is_some(), attests)
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            format: Format::Auto,
            mapping: None,
            token_cache_bytes: crate::token::DEFAULT_TOKEN_CACHE_BYTES,
            max_token_bytes: crate::token::DEFAULT_MAX_TOKEN_BYTES,
            engine: EngineConfig::default(),
            verify: None,
            posture: Arc::default(),
        }
    }
}

/// Counters for the summary and the metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    pub events: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub token_errors: BTreeMap<&'static str, u64>,
    /// Events that carried no token at all (they still reach rules that need none).
    pub without_token: u64,
    /// Events whose token is authenticated (verified, or attested by the gateway).
    pub authenticated: u64,
    /// Lines whose gateway attested a token other than the one logged (not authenticated).
    pub attestation_mismatches: u64,
    /// Events whose Authorization header the gateway logged as `REDACTED`.
    pub authorization_redacted: u64,
    /// Decoded events by the format that read them, and what they lacked.
    pub by_format: ByFormat,
    pub decisions: BTreeMap<(String, &'static str), u64>,
    /// Token hygiene for the posture metrics ([`crate::posture::PostureStats`]).
    pub posture: crate::posture::PostureStats,
}

/// [`FormatCounts`] for each format, in an array: counting an event costs no lookup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ByFormat([FormatCounts; Format::ALL.len()]);

impl ByFormat {
    pub fn get(&self, f: Format) -> FormatCounts {
        self.0[f as usize]
    }

    pub fn get_mut(&mut self, f: Format) -> &mut FormatCounts {
        &mut self.0[f as usize]
    }

    /// The formats that read at least one event, in [`Format::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Format, FormatCounts)> + '_ {
        Format::ALL
            .into_iter()
            .map(|f| (f, self.get(f)))
            .filter(|(_, c)| c.events > 0)
    }
}

/// Decoded events of one format, and how many of them lacked a field that rules use: a
/// preset that does not match what the gateway writes shows here, not in skipped lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FormatCounts {
    pub events: u64,
    pub no_client_ip: u64,
    pub no_method: u64,
    pub no_path: u64,
}

impl FormatCounts {
    /// (field, events lacking it), in a fixed order: metric label values and summary lines.
    pub fn missing(&self) -> [(&'static str, u64); 3] {
        [
            ("client_ip", self.no_client_ip),
            ("method", self.no_method),
            ("path", self.no_path),
        ]
    }
}

impl Stats {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub fn decisions_total(&self) -> u64 {
        self.decisions.values().sum()
    }
}

/// A string of a decoded event: a range of the batch buffer, or (after JSON unescaping) owned.
/// No `Debug`: neither it nor [`DecodedEvent`] is ever printed.
enum Text {
    Span(usize, usize),
    Owned(Box<str>),
}

impl Text {
    fn new(c: Cow<'_, str>, base: &[u8]) -> Text {
        match c {
            Cow::Borrowed(s) => {
                let off = (s.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
                if off <= base.len() && s.len() <= base.len() - off {
                    Text::Span(off, off + s.len())
                } else {
                    Text::Owned(s.into())
                }
            }
            Cow::Owned(s) => Text::Owned(s.into_boxed_str()),
        }
    }

    fn get<'a>(&'a self, base: &'a [u8]) -> &'a str {
        match self {
            Text::Span(a, b) => {
                // SAFETY: the span is the location of a `&str` that was borrowed from these
                // very bytes (`Text::new`), and a batch's buffer cannot change between
                // decoding and applying it: the only way to it (`DecodedBatch::lines_mut`)
                // drops the decoded events first.
                #[allow(unsafe_code)]
                unsafe {
                    std::str::from_utf8_unchecked(&base[*a..*b])
                }
            }
            Text::Owned(s) => s,
        }
    }
}

/// One line after decoding, with its strings as ranges of the line's buffer.
struct DecodedEvent {
    ts_ms: i64,
    client_ip: Option<IpAddr>,
    method: Text,
    path: Text,
    status: Option<u16>,
    user_agent: Text,
    token: Option<Arc<TokenInfo>>,
    token_in_url: bool,
    authenticated: bool,
    url_token: Option<Arc<TokenInfo>>,
    geo: Option<GeoPoint>,
    scheme: Option<crate::input::Scheme>,
    token_errors: Vec<DecodeError>,
    attestation_mismatch: bool,
    format: Format,
    authorization_redacted: bool,
}

type Decoded = Result<DecodedEvent, Skip>;

/// A [`LineBatch`] with each line decoded, ready for the engine. `Debug` shows counts only.
#[derive(Default)]
pub struct DecodedBatch {
    /// Private so that the lines cannot change under decoded events that point into them:
    /// [`DecodedBatch::lines_mut`] drops the decoded events first.
    lines: LineBatch,
    items: Vec<Decoded>,
}

impl fmt::Debug for DecodedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedBatch")
            .field("lines", &self.lines)
            .field("decoded", &self.items.iter().filter(|d| d.is_ok()).count())
            .field("skipped", &self.items.iter().filter(|d| d.is_err()).count())
            .finish()
    }
}

impl DecodedBatch {
    pub fn new() -> Self {
        DecodedBatch::default()
    }

    /// The lines of the batch.
    pub fn lines(&self) -> &LineBatch {
        &self.lines
    }

    /// The lines, to fill: drops the decoded events, which point into the lines' buffer.
    pub fn lines_mut(&mut self) -> &mut LineBatch {
        self.items.clear();
        &mut self.lines
    }

    /// Drops the decoded events (and their token references), keeping the buffers.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.items.clear();
    }
}

/// The parallel half of the pipeline: lines to events, tokens decoded, clients located.
/// Holds caches only; [`Decoder::fork`] makes another one for another thread.
pub struct Decoder {
    parser: Parser,
    tokens: TokenCache,
    geo: Option<GeoDb>,
}

impl Decoder {
    pub fn new(geo: Option<GeoDb>, cfg: &PipelineConfig, wanted_claims: Vec<Box<str>>) -> Result<Self, FormatError> {
        Ok(Decoder {
            parser: Parser::new(cfg.format, cfg.mapping.clone())?,
            tokens: TokenCache::new(wanted_claims)
                .with_budget_bytes(cfg.token_cache_bytes)
                .with_verifier(cfg.verify.clone())
                .with_max_token_bytes(cfg.max_token_bytes)
                .with_posture(Some(cfg.posture.clone())),
            geo,
        })
    }

    /// Same format, rules' claims and GeoIP database, with empty caches of its own.
    pub fn fork(&self) -> Decoder {
        self.fork_share(1)
    }

    /// [`Decoder::fork`] for one of `parts` threads: its token cache gets `1/parts` of the
    /// byte budget, so that the threads together hold no more than the budget.
    pub fn fork_share(&self, parts: usize) -> Decoder {
        Decoder {
            parser: self.parser.clone(),
            tokens: self.tokens.fork(parts),
            geo: self.geo.as_ref().map(GeoDb::fork),
        }
    }

    fn decode(&mut self, line: &[u8], base: &[u8]) -> Decoded {
        let parsed = self.parser.parse(line, &mut self.tokens)?;
        let mut ev = parsed.event;
        if ev.geo.is_none() {
            if let (Some(db), Some(ip)) = (&mut self.geo, ev.client_ip) {
                ev.geo = db.locate_cached(ip);
            }
        }
        Ok(DecodedEvent {
            ts_ms: ev.ts_ms,
            client_ip: ev.client_ip,
            method: Text::new(ev.method, base),
            path: Text::new(ev.path, base),
            status: ev.status,
            user_agent: Text::new(ev.user_agent, base),
            token: ev.token,
            token_in_url: ev.token_in_url,
            authenticated: ev.authenticated,
            url_token: parsed.url_token,
            geo: ev.geo,
            scheme: ev.scheme,
            token_errors: parsed.token_errors,
            attestation_mismatch: parsed.attestation_mismatch,
            format: parsed.format,
            authorization_redacted: parsed.authorization_redacted,
        })
    }

    /// Decodes every line of `batch.lines` into `batch`.
    pub(crate) fn decode_batch(&mut self, batch: &mut DecodedBatch) {
        batch.items.clear();
        let DecodedBatch { lines, items } = batch;
        for span in &lines.lines {
            items.push(match *span {
                LineSpan::Ok(a, b) => self.decode(&lines.buf[a..b], &lines.buf),
                LineSpan::TooLong(_) => Err(Skip::LineTooLong),
            });
        }
    }
}

/// Decoding on worker threads, results in submission order.
///
/// Batch `i` goes to worker `i mod N` and is taken back from that worker's queue in turn, so
/// order needs no reordering buffer. Queues are bounded (`depth` batches per worker): a
/// producer that runs ahead blocks in [`ParallelDecode::submit`]. Dropping it stops and joins
/// the workers.
pub struct ParallelDecode {
    to_workers: Vec<SyncSender<DecodedBatch>>,
    from_workers: Vec<Receiver<DecodedBatch>>,
    handles: Vec<JoinHandle<()>>,
    next_in: usize,
    next_out: usize,
    in_flight: usize,
}

impl ParallelDecode {
    /// `workers` threads, each decoding with a fork of `decoder`.
    pub fn new(decoder: &Decoder, workers: usize, depth: usize) -> io::Result<Self> {
        let workers = workers.max(1);
        let mut to_workers = Vec::with_capacity(workers);
        let mut from_workers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx_in, rx_in) = sync_channel::<DecodedBatch>(depth.max(1));
            let (tx_out, rx_out) = sync_channel::<DecodedBatch>(depth.max(1));
            let mut d = decoder.fork_share(workers);
            let h = std::thread::Builder::new()
                .name(format!("tokenwatch-decode-{i}"))
                .spawn(move || {
                    for mut b in rx_in {
                        d.decode_batch(&mut b);
                        if tx_out.send(b).is_err() {
                            break;
                        }
                    }
                })?;
            to_workers.push(tx_in);
            from_workers.push(rx_out);
            handles.push(h);
        }
        Ok(ParallelDecode {
            to_workers,
            from_workers,
            handles,
            next_in: 0,
            next_out: 0,
            in_flight: 0,
        })
    }

    pub fn workers(&self) -> usize {
        self.to_workers.len()
    }

    /// Batches submitted and not yet received.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a batch for decoding; blocks while its worker's queue is full.
    pub fn submit(&mut self, batch: DecodedBatch) {
        let n = self.to_workers.len();
        // A worker only stops when its queue is dropped, so the send cannot fail.
        let _ = self.to_workers[self.next_in % n].send(batch);
        self.next_in = self.next_in.wrapping_add(1);
        self.in_flight += 1;
    }

    /// The oldest submitted batch, decoded; `None` when none is in flight.
    pub fn recv(&mut self) -> Option<DecodedBatch> {
        if self.in_flight == 0 {
            return None;
        }
        let n = self.from_workers.len();
        let b = self.from_workers[self.next_out % n].recv().ok()?;
        self.next_out = self.next_out.wrapping_add(1);
        self.in_flight -= 1;
        Some(b)
    }
}

impl Drop for ParallelDecode {
    fn drop(&mut self) {
        self.to_workers.clear();
        self.from_workers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A decoded line: what waits in the event-time buffer ([`crate::eventtime::Sequencer`])
/// until its turn. No `Debug`: it holds a raw line.
pub struct HeldLine {
    bytes: LineBytes,
    /// The tie-break between equal event times ([`crate::eventtime::tie_hash`]).
    tie: u64,
    ev: DecodedEvent,
}

/// Where a held line's bytes are. `replay` reads one source, so only the lines at the newest
/// event time read wait past their batch: its lines point into the batch they were read in,
/// and the few still held when the batch is done are copied out ([`HeldLine::own`]), instead
/// of copying every line.
enum LineBytes {
    Own(Box<[u8]>),
    /// `lines.buf[start..end]` of the batch being applied.
    InBatch {
        start: usize,
        end: usize,
    },
}

impl HeldLine {
    pub fn ts_ms(&self) -> i64 {
        self.ev.ts_ms
    }

    /// The tie-break between equal event times ([`crate::eventtime::tie_hash`]).
    pub fn tie(&self) -> u64 {
        self.tie
    }

    /// The line's bytes: its own, or its span of `batch`, the buffer of the batch it was read
    /// in (a line that points into a batch is applied or copied out before that batch is
    /// reused).
    fn bytes<'a>(&'a self, batch: &'a [u8]) -> &'a [u8] {
        match self.bytes {
            LineBytes::Own(ref b) => b,
            LineBytes::InBatch { start, end } => &batch[start..end],
        }
    }

    /// Copies the line out of `batch`, the buffer it points into, if it does.
    pub(crate) fn own(&mut self, batch: &[u8]) {
        if let LineBytes::InBatch { start, end } = self.bytes {
            self.bytes = LineBytes::Own(batch[start..end].into());
        }
    }
}

impl Text {
    /// The same text, for the line copied out of `base[start..]`.
    fn rebase(self, start: usize) -> Text {
        match self {
            Text::Span(a, b) => Text::Span(a - start, b - start),
            owned => owned,
        }
    }
}

pub struct Pipeline {
    decoder: Decoder,
    engine: Engine,
    pub stats: Stats,
    /// `tokenwatch report`'s collector, fed with every event and its decisions when set.
    posture_stats: Option<Box<ReportStats>>,
}

impl Pipeline {
    /// Fails only for a format that cannot read lines (`custom` without its mapping).
    pub fn new(rules: Arc<RuleSet>, geo: Option<GeoDb>, cfg: PipelineConfig) -> Result<Self, FormatError> {
        let decoder = Decoder::new(geo, &cfg, rules.wanted_claims())?;
        let mut engine = Engine::new(rules, cfg.engine);
        engine.set_posture(cfg.posture.clone());
        Ok(Pipeline {
            decoder,
            engine,
            stats: Stats::default(),
            posture_stats: None,
        })
    }

    /// Feeds every event from now on, with the decisions it caused, to a posture collector
    /// (`tokenwatch report`), as [`Engine::set_trace`] does for `explain`.
    pub fn set_posture_stats(&mut self, stats: Option<ReportStats>) {
        self.posture_stats = stats.map(Box::new);
    }

    /// The posture collector, taken out once the replay is over.
    pub fn take_posture_stats(&mut self) -> Option<ReportStats> {
        self.posture_stats.take().map(|p| *p)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configured issuers' signing keys (the key ids of their JWKS) that tokenwatch has
    /// seen sign, with the event time it first saw each: the per-key age metric. Bounded by
    /// the configured JWKS, never by traffic.
    pub fn key_first_seen(&self) -> Vec<(Box<str>, Box<str>, i64)> {
        let Some(v) = self.decoder.tokens.verifier() else {
            return Vec::new();
        };
        v.issuer_kids()
            .into_iter()
            .filter_map(|(iss, kid)| {
                let first = self.engine.key_first_seen(&iss, &kid)?;
                Some((iss, kid, first))
            })
            .collect()
    }

    /// JWKS reads and fetches that failed after the start.
    pub fn jwks_errors(&self) -> u64 {
        self.decoder.tokens.verifier().map_or(0, |v| v.errors())
    }

    /// The engine, to restore a checkpoint into or to trace one rule for `explain`
    /// ([`Engine::set_trace`]).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The decoding half, to fork for worker threads ([`ParallelDecode::new`]).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Re-arms a rule that tripped its revocation budget; false when no rule has that id.
    pub fn rearm(&mut self, rule: &str) -> bool {
        self.engine.rearm(rule)
    }

    /// Swaps the rules (hot reload): see [`Engine::replace_rules`]. Decoders forked before
    /// keep the claims of the old rules: fork them again after a reload.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        self.decoder.tokens.set_wanted_claims(rules.wanted_claims());
        self.engine.replace_rules(rules);
    }

    /// Processes one line (without newline), appending its decisions to `out`.
    pub fn process_line(&mut self, line: &[u8], out: &mut Vec<Decision>) {
        let d = self.decoder.decode(line, line);
        self.apply(&d, line, out);
    }

    /// Counts a line that the reader skipped for its length.
    pub fn line_too_long(&mut self) {
        self.apply(&Err(Skip::LineTooLong), &[], &mut Vec::new());
    }

    /// Decodes a batch on this thread (the one-thread form of [`ParallelDecode`]).
    pub fn decode_batch(&mut self, batch: &mut DecodedBatch) {
        self.decoder.decode_batch(batch);
    }

    /// Runs the engine over a decoded batch, in line order, appending decisions to `out`.
    pub fn apply_batch(&mut self, batch: &DecodedBatch, out: &mut Vec<Decision>) {
        for d in &batch.items {
            self.apply(d, &batch.lines.buf, out);
        }
    }

    /// Decodes one line for the event-time buffer. A line that is no event is counted (as
    /// [`Pipeline::apply_batch`] would) and gives `None`.
    pub fn hold_line(&mut self, line: &[u8]) -> Option<HeldLine> {
        match self.decoder.decode(line, line) {
            Ok(ev) => Some(HeldLine {
                bytes: LineBytes::Own(line.into()),
                tie: crate::eventtime::tie_hash(line),
                ev,
            }),
            Err(skip) => {
                self.apply(&Err(skip), &[], &mut Vec::new());
                None
            }
        }
    }

    /// The decoded lines of a batch for the event-time buffer, skipped lines counted. The
    /// lines point into the batch: apply them with [`Pipeline::apply_held_in`] and copy out
    /// those still held ([`HeldLine::own`]) before the batch is reused.
    pub(crate) fn hold_batch(&mut self, batch: &mut DecodedBatch, mut hold: impl FnMut(HeldLine)) {
        let DecodedBatch { lines, items } = batch;
        for (span, d) in lines.lines.iter().zip(items.drain(..)) {
            match (d, *span) {
                (Ok(ev), LineSpan::Ok(a, b)) => hold(HeldLine {
                    bytes: LineBytes::InBatch { start: a, end: b },
                    tie: crate::eventtime::tie_hash(&lines.buf[a..b]),
                    ev: DecodedEvent {
                        method: ev.method.rebase(a),
                        path: ev.path.rebase(a),
                        user_agent: ev.user_agent.rebase(a),
                        ..ev
                    },
                }),
                (Ok(_), LineSpan::TooLong(_)) => self.apply(&Err(Skip::LineTooLong), &[], &mut Vec::new()),
                (Err(skip), _) => self.apply(&Err(skip), &[], &mut Vec::new()),
            }
        }
    }

    /// Runs the engine over a line whose turn has come (one of [`Pipeline::hold_line`]).
    pub fn apply_held(&mut self, line: &HeldLine, out: &mut Vec<Decision>) {
        self.apply_held_in(line, &[], out);
    }

    /// Runs the engine over a line whose turn has come; `batch` is the buffer of the batch
    /// that [`Pipeline::hold_batch`] held it from, if it still points into it.
    pub(crate) fn apply_held_in(&mut self, line: &HeldLine, batch: &[u8], out: &mut Vec<Decision>) {
        self.apply_event(&line.ev, line.bytes(batch), out);
    }

    fn apply(&mut self, d: &Decoded, base: &[u8], out: &mut Vec<Decision>) {
        match d {
            Ok(p) => self.apply_event(p, base, out),
            Err(skip) => {
                self.stats.lines += 1;
                *self.stats.skipped.entry(skip.reason()).or_default() += 1;
            }
        }
    }

    fn apply_event(&mut self, p: &DecodedEvent, base: &[u8], out: &mut Vec<Decision>) {
        self.account(p, base);
        for (use_index, ev) in uses(p, base) {
            self.observe_use(&ev);
            self.apply_use(&ev, use_index, Scope::All, out);
        }
    }

    /// The uses of tokens of a decoded batch's lines, for the detect stage (the records of
    /// [`crate::record`]), in line order: `emit(line index, use index, event, tie-break)`.
    /// Counted here as [`Pipeline::apply_batch`] would count them; the engine is not run.
    pub fn batch_uses(&mut self, batch: &DecodedBatch, mut emit: impl FnMut(usize, u8, &Event<'_>, u64)) {
        let base = &batch.lines.buf;
        for (i, (span, d)) in batch.lines.lines.iter().zip(&batch.items).enumerate() {
            match (d, *span) {
                (Ok(p), LineSpan::Ok(a, b)) => {
                    self.account(p, base);
                    let tie = crate::eventtime::tie_hash(&base[a..b]);
                    for (use_index, ev) in uses(p, base) {
                        self.observe_use(&ev);
                        emit(i, use_index, &ev, tie);
                    }
                }
                (Ok(_), LineSpan::TooLong(_)) => self.apply(&Err(Skip::LineTooLong), &[], &mut Vec::new()),
                (Err(skip), _) => self.apply(&Err(*skip), &[], &mut Vec::new()),
            }
        }
    }

    /// Runs the engine over a use of a token that the ingest stage decoded
    /// ([`crate::record`]), for the rules its partition serves ([`EventRecord::scope`]); the
    /// line itself was counted there.
    ///
    /// [`EventRecord::scope`]: crate::record::EventRecord::scope
    pub fn apply_record(&mut self, r: &crate::record::EventRecord, out: &mut Vec<Decision>) {
        self.apply_use(&r.event(), r.origin.use_index, r.scope(), out);
    }

    /// Counts what the line says about the input (formats, token errors, missing fields).
    fn account(&mut self, p: &DecodedEvent, base: &[u8]) {
        self.stats.lines += 1;
        self.stats.events += 1;
        for e in &p.token_errors {
            *self.stats.token_errors.entry(e.reason()).or_default() += 1;
        }
        if p.token.is_none() {
            self.stats.without_token += 1;
        }
        self.stats.attestation_mismatches += u64::from(p.attestation_mismatch);
        if p.authorization_redacted {
            self.stats.authorization_redacted += 1;
        }
        let c = self.stats.by_format.get_mut(p.format);
        c.events += 1;
        c.no_client_ip += u64::from(p.client_ip.is_none());
        c.no_method += u64::from(p.method.get(base).is_empty());
        c.no_path += u64::from(p.path.get(base).is_empty());
    }

    /// Counts a use of a token for the posture metrics, which need no state.
    fn observe_use(&mut self, ev: &Event<'_>) {
        self.stats.authenticated += u64::from(ev.authenticated);
        self.stats.posture.observe(ev, self.engine.posture());
    }

    /// Runs the engine over one use and counts its decisions.
    fn apply_use(&mut self, ev: &Event<'_>, use_index: u8, scope: Scope<'_>, out: &mut Vec<Decision>) {
        let start = out.len();
        self.engine.process_in(ev, scope, out);
        if let Some(stats) = &mut self.posture_stats {
            if use_index == 0 {
                stats.observe(ev, &out[start..]);
            } else {
                stats.observe_use(ev, &out[start..]);
            }
        }
        for d in &out[start..] {
            *self
                .stats
                .decisions
                .entry((d.rule.to_string(), d.action.as_str()))
                .or_default() += 1;
        }
    }
}

/// The uses of tokens a line makes: the request's token (use 0), and a second, different token
/// found in its URL (use 1), which is genuine only if its own signature verifies (nothing the
/// gateway said about the header's token vouches for it).
fn uses<'a>(p: &'a DecodedEvent, base: &'a [u8]) -> impl Iterator<Item = (u8, Event<'a>)> {
    let ev = Event {
        ts_ms: p.ts_ms,
        client_ip: p.client_ip,
        method: Cow::Borrowed(p.method.get(base)),
        path: Cow::Borrowed(p.path.get(base)),
        status: p.status,
        user_agent: Cow::Borrowed(p.user_agent.get(base)),
        token: p.token.clone(),
        token_in_url: p.token_in_url,
        authenticated: p.authenticated,
        geo: p.geo,
        scheme: p.scheme,
        second_token: false,
    };
    let second = p.url_token.as_ref().map(|second| Event {
        token: Some(second.clone()),
        token_in_url: true,
        authenticated: second.verified,
        second_token: true,
        ..ev.clone()
    });
    std::iter::once((0, ev)).chain(second.map(|ev| (1, ev)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::lines::BatchReader;
    use serde_json::json;

    const T0: &str = "2026-11-29T00:00:00Z";

    fn jwt(claims: serde_json::Value) -> String {
        crate::token::encode_unsigned_parts(&json!({"alg":"RS256"}), &claims, b"the-signature-segment-of-this-token")
    }

    fn sig(t: &str) -> &str {
        t.rsplit('.').next().unwrap()
    }

    fn pipeline(rules: Arc<RuleSet>, cfg: PipelineConfig) -> Pipeline {
        Pipeline::new(rules, Some(crate::defaults::test_geo_db()), cfg).unwrap()
    }

    fn run(p: &mut Pipeline, lines: &[String]) -> Vec<Decision> {
        let mut out = Vec::new();
        for l in lines {
            p.process_line(l.as_bytes(), &mut out);
        }
        out
    }

    /// A request the gateway attests (canonical `authenticated`): genuine use, which may
    /// revoke.
    fn line(ts_s: i64, ip: &str, path: &str, t: &str) -> String {
        json!({"ts": 1_795_910_400 + ts_s, "client_ip": ip, "method": "GET", "path": path,
               "status": 200, "authorization": format!("Bearer {t}"), "authenticated": true})
        .to_string()
    }

    #[test]
    fn ipv4_mapped_clients_are_ipv4_clients() {
        let t = jwt(json!({"jti":"mapped","sub":"u","iat":1_795_910_400,"exp":1_795_911_300}));
        let mut p = pipeline(crate::defaults::rules().unwrap(), PipelineConfig::default());
        let ds = run(
            &mut p,
            &[
                line(0, "::ffff:198.51.100.7", "/a", &t),
                line(60, "::ffff:203.0.113.9", "/a", &t),
                line(120, "[::ffff:192.0.2.1]:51234", "/a", &t),
            ],
        );
        assert_eq!(ds.len(), 1, "{ds:?}");
        assert_eq!(&*ds[0].rule, "token-replay");
        assert_eq!(ds[0].client_ip, Some("192.0.2.1".parse().unwrap()));
        let nets = ds[0].evidence["values"].as_array().unwrap();
        assert_eq!(nets[0]["value"], "198.51.100.0/24");
        assert!(ds[0].to_json_line().contains("\"client_ip\":\"192.0.2.1\""));
        // located as IPv4
        let mut d = p.decoder.fork();
        let l = line(0, "::ffff:81.2.69.142", "/", &t);
        let e = d.decode(l.as_bytes(), l.as_bytes()).unwrap();
        assert_eq!(e.geo.map(|g| g.lat), Some(51.5142));
    }

    #[test]
    fn a_geo_field_in_the_line_wins_over_the_database() {
        let mut d = pipeline(Arc::new(RuleSet::default()), PipelineConfig::default())
            .decoder
            .fork();
        let with = json!({"ts": T0, "client_ip": "81.2.69.142",
                          "geo": {"lat": 35.6895, "lon": 139.6917, "accuracy_km": 5}})
        .to_string();
        let g = d.decode(with.as_bytes(), with.as_bytes()).unwrap().geo.unwrap();
        assert_eq!((g.lat, g.lon, g.accuracy_km), (35.6895, 139.6917, 5.0));
        let without = json!({"ts": T0, "client_ip": "81.2.69.142"}).to_string();
        let g = d.decode(without.as_bytes(), without.as_bytes()).unwrap().geo.unwrap();
        assert_eq!(
            (g.lat, g.lon, g.accuracy_km),
            (51.5142, -0.0931, 10.0),
            "the database's London"
        );
    }

    #[test]
    fn extreme_numeric_dates_through_the_whole_pipeline() {
        let mut p = pipeline(crate::defaults::rules().unwrap(), PipelineConfig::default());
        let max = crate::token::MAX_NUMERIC_DATE;
        let dates = [
            json!({"exp": i64::MAX, "iat": -1}),
            json!({"exp": i64::MIN, "iat": -1, "nbf": i64::MAX}),
            json!({"exp": u64::MAX, "iat": i64::MIN}),
            json!({"exp": -1, "iat": i64::MAX}),
            json!({"exp": 1e300, "iat": -1e300}),
            json!({"exp": "9223372036854775807", "iat": "-9223372036854775808"}),
            json!({"exp": max, "iat": -max}),
            json!({"exp": -max, "iat": 0}),
        ];
        let mut lines = Vec::new();
        for (i, d) in dates.iter().enumerate() {
            let mut c = d.clone();
            c["jti"] = json!(format!("x{i}"));
            c["sub"] = json!("u");
            let t = jwt(c);
            for (k, ip) in ["198.51.100.1", "203.0.113.1", "192.0.2.1", "192.0.2.2"]
                .iter()
                .enumerate()
            {
                lines.push(line(i as i64 * 10 + k as i64, ip, "/a", &t));
            }
        }
        let ds = run(&mut p, &lines);
        assert_eq!(p.stats.events, lines.len() as u64);
        let fired = |rule: &str, id: &str| {
            ds.iter()
                .find(|d| &*d.rule == rule && d.token_id.as_deref() == Some(id))
        };
        for i in 0..dates.len() {
            assert!(fired("token-replay", &format!("x{i}")).is_some(), "x{i}: {ds:?}");
        }
        // out of range is absent: no lifetime, not expired
        for i in 0..6 {
            assert!(fired("excessive-lifetime", &format!("x{i}")).is_none(), "x{i}");
        }
        assert!(fired("expired-token-accepted", "x3").is_some(), "exp -1 is a date");
        // the largest dates in range give exact, unwrapped arithmetic
        let long = fired("excessive-lifetime", "x6").unwrap();
        assert_eq!(long.evidence["lifetime_s"], json!(2 * max));
        assert_eq!(long.expires_at, Some(max));
        let old = fired("expired-token-accepted", "x7").unwrap();
        assert_eq!(old.evidence["expired_for_s"], json!(1_795_910_470 + max));
    }

    #[test]
    fn no_rule_field_or_evidence_carries_a_token_from_the_path() {
        let yaml = "\
rules:
  - {id: paths, severity: low, action: alert, kind: distinct_count, key: subject, distinct: path, threshold: 3, window: 1h}
  - {id: agents, severity: low, action: alert, kind: distinct_count, key: subject, distinct: user_agent, threshold: 2, window: 1h}
  - {id: any-path, severity: low, action: alert, kind: match, key: token_id, where: {path: {prefix: /}}, cooldown: 0}
";
        let rules = Arc::new(RuleSet {
            rules: crate::rules::load_str(std::path::Path::new("t.yaml"), yaml).unwrap(),
            files: 1,
        });
        let header = jwt(json!({"jti":"h","sub":"u"}));
        let in_query = jwt(json!({"jti":"q","sub":"u"}));
        let in_path = jwt(json!({"jti":"p","sub":"u","x":1}));
        let mut p = pipeline(rules, PipelineConfig::default());
        let mut lines = vec![
            line(0, "198.51.100.1", &format!("/cb?access_token={in_query}"), &header),
            line(1, "198.51.100.1", &format!("/reset/{in_path}/confirm"), &header),
            line(
                2,
                "198.51.100.1",
                &format!("/x/{in_path}?id_token={in_query}&y=1"),
                &header,
            ),
            line(3, "198.51.100.1", "/plain?access_token=opaque", &header),
        ];
        let mut ua = json!({"ts": 1_795_910_404, "path": "/", "user_agent": format!("bot {in_path}"),
                            "authorization": format!("Bearer {header}")});
        lines.push(ua.to_string());
        ua["user_agent"] = json!("bot");
        lines.push(ua.to_string());
        let ds = run(&mut p, &lines);
        let all: String = ds.iter().map(super::super::decision::Decision::to_json_line).collect();
        assert!(ds.iter().any(|d| &*d.rule == "paths"), "{all}");
        assert!(ds.iter().any(|d| &*d.rule == "agents"), "{all}");
        for t in [&header, &in_query, &in_path] {
            assert!(!all.contains(sig(t)), "a token's signature is in a decision: {all}");
            assert!(!all.contains(t.split('.').nth(1).unwrap()));
        }
        assert!(all.contains("/reset/<jwt sha256:"), "{all}");
        assert!(!all.contains("opaque"), "no query at all: {all}");
    }

    #[test]
    fn debug_of_batches_shows_sizes_not_lines() {
        let t = jwt(json!({"jti":"d","sub":"u"}));
        let mut p = pipeline(Arc::new(RuleSet::default()), PipelineConfig::default());
        let mut b = DecodedBatch::new();
        let text = format!("{}\n{}\n", line(0, "198.51.100.1", &format!("/p/{t}"), &t), "not json");
        BatchReader::new(text.as_bytes(), 1 << 20).fill(b.lines_mut()).unwrap();
        let before = format!("{:?}", b.lines());
        p.decode_batch(&mut b);
        let after = format!("{b:?}");
        for s in [&before, &after] {
            assert!(!s.contains(sig(&t)), "{s}");
        }
        assert!(after.contains("decoded: 1") && after.contains("skipped: 1"), "{after}");
    }

    /// `Text::get`'s `unsafe` rests on this: the only way to change a batch's lines drops
    /// the events decoded from them (and their token references) first.
    #[test]
    fn lines_mut_drops_the_decoded_events() {
        let t = jwt(json!({"jti":"m","sub":"u"}));
        let mut p = pipeline(Arc::new(RuleSet::default()), PipelineConfig::default());
        let mut b = DecodedBatch::new();
        let text = format!("{}\n{}\n", line(0, "198.51.100.1", "/a", &t), "not json");
        BatchReader::new(text.as_bytes(), 1 << 20).fill(b.lines_mut()).unwrap();
        p.decode_batch(&mut b);
        assert_eq!(b.items.len(), 2);
        let token = b.items[0].as_ref().ok().and_then(|e| e.token.clone()).unwrap();
        let held = Arc::strong_count(&token);
        let lines = b.lines_mut();
        lines.push(b"{}");
        assert!(b.items.is_empty(), "decoded events outlived lines_mut");
        assert_eq!(Arc::strong_count(&token), held - 1, "the batch still holds the token");
        assert_eq!(b.lines().lines.len(), 3, "the lines themselves are kept");
    }
}
