//! `tokenwatch replay`: files (or stdin) through the pipeline, decisions to stdout.
//!
//! Every input file is opened before the first line is read, so a typo in the last file name
//! fails at once rather than after an hour of replay. Decisions go to the given writer as
//! JSON lines; progress and the summary go to the other, so stdout stays machine-readable.
//!
//! Input is read in chunks straight into line batches. With `threads > 1`, the calling thread
//! reads and runs the engine while `threads` workers decode batches
//! ([`crate::pipeline::ParallelDecode`]); batches come back in input order, so the decisions
//! and the summary are the same as with one thread. Decoded lines then reach the engine in
//! the canonical event-time order of [`crate::eventtime`] (time, then a hash of the line), the
//! order in which `run` applies the same lines from any number of partitions.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::eventtime::{EventTimeConfig, Sequencer};
use crate::input::lines::BatchReader;
use crate::pipeline::{DecodedBatch, HeldLine, ParallelDecode, Pipeline, Stats};

/// A named input stream.
pub type Input = (String, Box<dyn BufRead>);

/// The readers' own buffer: reads of a whole chunk bypass it (no second copy).
const IN_BUF: usize = 64 * 1024;

/// An input file that cannot be read at all: found before the first line is read.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open input {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("input {} is a directory, not a log file", path.display())]
    Directory { path: PathBuf },
}

/// An input that failed while it was read (`replay`, `explain`, `diff`).
#[derive(Debug, thiserror::Error)]
#[error("error reading {name}: {source}")]
pub struct ReadError {
    /// The input's name: its path, or `<stdin>`.
    pub name: String,
    pub source: io::Error,
}

/// Why a replay stopped before the end of its input.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot start decoding threads: {0}")]
    Threads(io::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the decisions failed (a full disk, a closed pipe).
    #[error("cannot write decisions: {0}")]
    Write(io::Error),
}

/// One input per file, or stdin for `-` or no file at all.
pub fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>, OpenError> {
    if files.is_empty() {
        return Ok(vec![(
            "<stdin>".into(),
            Box::new(BufReader::with_capacity(IN_BUF, io::stdin())),
        )]);
    }
    files
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                return Ok((
                    "<stdin>".to_string(),
                    Box::new(BufReader::with_capacity(IN_BUF, io::stdin())) as Box<dyn BufRead>,
                ));
            }
            let f = File::open(p).map_err(|source| OpenError::Open {
                path: p.clone(),
                source,
            })?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(OpenError::Directory { path: p.clone() });
            }
            Ok((
                p.display().to_string(),
                Box::new(BufReader::with_capacity(IN_BUF, f)) as Box<dyn BufRead>,
            ))
        })
        .collect()
}

/// What a replay did.
pub struct Summary {
    pub stats: Stats,
    pub elapsed: Duration,
    pub tracked_keys: usize,
    pub late_events: u64,
    pub evictions: u64,
}

impl Summary {
    /// Decoded events per second of wall time (lines read is a separate count: skipped lines
    /// are read but are no events).
    pub(crate) fn events_per_sec(&self) -> f64 {
        events_per_sec(self.stats.events, self.elapsed)
    }

    /// The human summary printed on stderr.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "tokenwatch replay: {} lines read, {} events decoded, {} skipped, {} decisions in {:.2} s ({:.0} events/s)\n",
            s.lines,
            s.events,
            s.skipped_total(),
            s.decisions_total(),
            self.elapsed.as_secs_f64(),
            self.events_per_sec()
        );
        let list = |m: &mut String, title: &str, items: Vec<(String, u64)>| {
            if !items.is_empty() {
                m.push_str(&format!("  {title}:\n"));
                for (k, v) in items {
                    m.push_str(&format!("    {k:<40} {v}\n"));
                }
            }
        };
        list(
            &mut out,
            "skipped lines by reason",
            s.skipped.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        );
        list(
            &mut out,
            "undecodable tokens by reason",
            s.token_errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        );
        list(
            &mut out,
            "decisions by rule and action",
            s.decisions.iter().map(|((r, a), v)| (format!("{r} {a}"), *v)).collect(),
        );
        list(
            &mut out,
            "decoded events by format (without client_ip / method / path)",
            s.by_format
                .iter()
                .map(|(f, c)| {
                    let k = format!("{} ({} / {} / {})", f.name(), c.no_client_ip, c.no_method, c.no_path);
                    (k, c.events)
                })
                .collect(),
        );
        out.push_str(&format!(
            "  events without a token: {}; late events: {}; tracked keys: {}; evicted keys: {}\n",
            s.without_token, self.late_events, self.tracked_keys, self.evictions
        ));
        out.push_str(&format!(
            "  authenticated events (may revoke): {}; attestation mismatches: {}\n",
            s.authenticated, s.attestation_mismatches
        ));
        if s.authorization_redacted > 0 {
            out.push_str(&format!(
                "  events whose Authorization header the gateway redacted: {} (log the decoded claims instead: see README)\n",
                s.authorization_redacted
            ));
        }
        for h in hints(s) {
            out.push_str(&h);
            out.push('\n');
        }
        out
    }
}

/// A field missing on at least this share of a format's events earns a hint.
const HINT_SHARE: f64 = 0.5;

/// One line per (format, field) that most events lack, saying where the preset reads it: a
/// gateway that logs the field under another name, or not at all, shows up here.
pub fn hints(s: &Stats) -> Vec<String> {
    let mut out = Vec::new();
    for (format, c) in s.by_format.iter() {
        let format = format.name();
        for (field, n) in c.missing() {
            if c.events == 0 || (n as f64) < HINT_SHARE * c.events as f64 {
                continue;
            }
            let pct = (100 * n).div_ceil(c.events).min(100);
            out.push(format!(
                "hint: {field} missing on {pct} % of {format} lines: log it as {}",
                where_read(format, field)
            ));
        }
    }
    out
}

/// The fields a preset reads an event field from (README's "Input formats" says the same).
fn where_read(format: &str, field: &str) -> &'static str {
    match (format, field) {
        ("canonical", "client_ip") => "client_ip",
        ("canonical" | "envoy", "method") => "method",
        ("canonical", "path") => "path",
        ("traefik", "client_ip") => "ClientHost or ClientAddr",
        ("traefik", "method") => "RequestMethod",
        ("traefik", "path") => "RequestPath",
        ("kong" | "apisix", "client_ip") => "client_ip",
        ("kong" | "apisix", "method") => "request.method",
        ("kong" | "apisix", "path") => "request.uri or request.url",
        ("envoy", "client_ip") => "downstream_remote_address (%DOWNSTREAM_REMOTE_ADDRESS%) or client_ip",
        ("envoy", "path") => "path or x-envoy-origin-path (%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%)",
        ("nginx", "client_ip") => "remote_addr ($remote_addr) or x_forwarded_for",
        ("nginx", "method") => "request_method, method or request ($request)",
        ("nginx", "path") => "request_uri, path or request ($request)",
        ("aws", "client_ip") => "ip ($context.identity.sourceIp)",
        ("aws", "method") => "httpMethod ($context.httpMethod) or routeKey",
        ("aws", "path") => "path ($context.path), resourcePath or routeKey",
        (_, "client_ip") => "the client_ip of [input.mapping]",
        (_, "method") => "the method of [input.mapping]",
        _ => "the path of [input.mapping]",
    }
}

fn events_per_sec(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The progress line printed every few seconds during a replay.
fn progress_line(stats: &Stats, elapsed: Duration) -> String {
    format!(
        "replay: {} lines read, {} events decoded, {} decisions, {:.0} events/s",
        stats.lines,
        stats.events,
        stats.decisions_total(),
        events_per_sec(stats.events, elapsed)
    )
}

/// Streams every input through `pipeline`, writing decisions to `out` and (when `progress`)
/// a progress line every few seconds to `err`.
pub fn replay(
    pipeline: &mut Pipeline,
    inputs: Vec<Input>,
    max_line: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: bool,
) -> Result<Summary, ReplayError> {
    replay_threads(pipeline, inputs, max_line, 1, out, err, progress)
}

/// [`replay`] with `threads` decoding workers (1: everything on the calling thread).
pub fn replay_threads(
    pipeline: &mut Pipeline,
    inputs: Vec<Input>,
    max_line: usize,
    threads: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: bool,
) -> Result<Summary, ReplayError> {
    let start = Instant::now();
    let mut order = Sequencer::new(EventTimeConfig {
        idle_timeout: Duration::MAX,
        max_held: usize::MAX,
        ..EventTimeConfig::default()
    });
    order.assign("input", 0, start);
    let mut w = Writer {
        order,
        decisions: Vec::new(),
        buf: String::new(),
        start,
        last_report: start,
        progress,
    };
    let mut par = if threads > 1 {
        Some(ParallelDecode::new(pipeline.decoder(), threads, 4).map_err(ReplayError::Threads)?)
    } else {
        None
    };
    let mut spare: Vec<DecodedBatch> = Vec::new();
    for (name, input) in inputs {
        let mut reader = BatchReader::new(input, max_line);
        loop {
            let mut batch = spare.pop().unwrap_or_default();
            let more = reader.fill(batch.lines_mut()).map_err(|source| ReadError {
                name: name.clone(),
                source,
            })?;
            if !more {
                spare.push(batch);
                break;
            }
            match &mut par {
                None => {
                    pipeline.decode_batch(&mut batch);
                    w.apply(pipeline, &mut batch, out, err)?;
                    spare.push(batch);
                }
                Some(p) => {
                    p.submit(batch);
                    // Keep every worker busy: take results back once all queues are primed.
                    if p.in_flight() >= 2 * p.workers() {
                        if let Some(mut b) = p.recv() {
                            w.apply(pipeline, &mut b, out, err)?;
                            spare.push(b);
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = &mut par {
        while let Some(mut b) = p.recv() {
            w.apply(pipeline, &mut b, out, err)?;
        }
    }
    drop(par);
    w.finish(pipeline, out)?;
    out.flush().map_err(ReplayError::Write)?;
    let es = pipeline.engine().stats();
    Ok(Summary {
        stats: pipeline.stats.clone(),
        elapsed: start.elapsed(),
        tracked_keys: pipeline.engine().tracked_keys(),
        late_events: es.late_events,
        evictions: es.evictions,
    })
}

/// The engine side of a replay: decisions out, progress lines.
struct Writer {
    /// The event-time order that `run` gives the same lines: one source, never idle.
    order: Sequencer<HeldLine>,
    decisions: Vec<crate::decision::Decision>,
    buf: String,
    start: Instant,
    last_report: Instant,
    progress: bool,
}

impl Writer {
    fn apply(
        &mut self,
        pipeline: &mut Pipeline,
        batch: &mut DecodedBatch,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        let order = &mut self.order;
        let now = self.start;
        pipeline.hold_batch(batch, |line| order.push(0, 0, 0, line.ts_ms(), line.tie(), line, now));
        let decisions = &mut self.decisions;
        let buf = &batch.lines().buf;
        order.release(now, |line, _| pipeline.apply_held_in(&line, buf, decisions));
        order.held_mut(|line| line.own(buf));
        batch.clear();
        self.write_decisions(out)?;
        if self.progress {
            let now = Instant::now();
            if now - self.last_report >= Duration::from_secs(2) {
                let _ = writeln!(err, "{}", progress_line(&pipeline.stats, now - self.start));
                self.last_report = now;
            }
        }
        Ok(())
    }

    /// The end of the input: every line still held goes to the engine.
    fn finish(&mut self, pipeline: &mut Pipeline, out: &mut dyn Write) -> Result<(), ReplayError> {
        let decisions = &mut self.decisions;
        self.order.release_all(|line, _| pipeline.apply_held(&line, decisions));
        self.write_decisions(out)
    }

    fn write_decisions(&mut self, out: &mut dyn Write) -> Result<(), ReplayError> {
        if !self.decisions.is_empty() {
            self.buf.clear();
            for d in self.decisions.drain(..) {
                self.buf.push_str(&d.to_json_line());
            }
            out.write_all(self.buf.as_bytes()).map_err(ReplayError::Write)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Format;
    use crate::pipeline::FormatCounts;

    fn stats() -> Stats {
        let mut s = Stats {
            lines: 1_000,
            events: 600,
            ..Stats::default()
        };
        s.skipped.insert("invalid_json", 400);
        s.decisions.insert(("token-replay".into(), "revoke_token"), 3);
        s
    }

    /// Replay's decisions (JSON lines) on `lines`, with a rule that fires once per path.
    fn decide(lines: &[String]) -> (String, u64) {
        let yaml = "id: per-path\nseverity: low\naction: alert\nkind: match\nkey: path\ncooldown: forever\n";
        let rules = crate::rules::RuleSet {
            rules: crate::rules::load_str(std::path::Path::new("r.yaml"), yaml).unwrap(),
            files: 1,
        };
        let mut p = Pipeline::new(
            std::sync::Arc::new(rules),
            None,
            crate::pipeline::PipelineConfig::default(),
        )
        .unwrap();
        let input: Input = ("in".into(), Box::new(std::io::Cursor::new(lines.concat().into_bytes())));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let sum = replay(&mut p, vec![input], 1 << 16, &mut out, &mut err, false).unwrap();
        (String::from_utf8(out).unwrap(), sum.stats.decisions.values().sum())
    }

    /// Lines at one event time wait for a newer one across several batches (256 KiB each):
    /// they are copied out of their batch before it is reused, so replay decides on them as on
    /// the same lines in the opposite order (one canonical order for both).
    #[test]
    fn lines_held_across_batches_keep_their_bytes() {
        let pad = "x".repeat(100);
        let mut lines: Vec<String> = (0..4000)
            .map(|i| format!("{{\"ts\":\"2026-11-29T00:00:00Z\",\"method\":\"GET\",\"path\":\"/p/{i}/{pad}\"}}\n"))
            .collect();
        assert!(lines.concat().len() > 2 * 256 * 1024);
        let newer = "{\"ts\":\"2026-11-29T00:00:01Z\",\"method\":\"GET\",\"path\":\"/last\"}\n".to_string();
        lines.push(newer.clone());
        let (forward, fired) = decide(&lines);
        assert_eq!(fired, 4001, "one decision per distinct path");
        lines.pop();
        lines.reverse();
        lines.push(newer);
        assert_eq!(decide(&lines).0, forward);
        assert!(forward.contains("/p/3999/"), "{}", &forward[..200]);
    }

    #[test]
    fn throughput_is_decoded_events_per_second() {
        let sum = Summary {
            stats: stats(),
            elapsed: Duration::from_secs(2),
            tracked_keys: 0,
            late_events: 0,
            evictions: 0,
        };
        assert_eq!(sum.events_per_sec(), 300.0);
        let r = sum.render();
        assert!(
            r.starts_with(
                "tokenwatch replay: 1000 lines read, 600 events decoded, 400 skipped, 3 decisions in 2.00 s (300 events/s)\n"
            ),
            "{r}"
        );
        assert_eq!(
            progress_line(&stats(), Duration::from_secs(4)),
            "replay: 1000 lines read, 600 events decoded, 3 decisions, 150 events/s"
        );
    }

    #[test]
    fn a_field_most_events_lack_earns_a_one_line_hint() {
        let mut s = stats();
        *s.by_format.get_mut(Format::Envoy) = FormatCounts {
            events: 600,
            no_client_ip: 600,
            no_method: 0,
            no_path: 299,
        };
        s.authorization_redacted = 7;
        let h = hints(&s);
        assert_eq!(
            h,
            vec![
                "hint: client_ip missing on 100 % of envoy lines: log it as downstream_remote_address (%DOWNSTREAM_REMOTE_ADDRESS%) or client_ip"
            ]
        );
        let sum = Summary {
            stats: s,
            elapsed: Duration::from_secs(1),
            tracked_keys: 0,
            late_events: 0,
            evictions: 0,
        };
        let r = sum.render();
        assert!(r.contains("envoy (600 / 0 / 299)"), "{r}");
        assert!(r.contains("redacted: 7"), "{r}");
        assert!(r.ends_with(&format!("{}\n", h[0])), "{r}");
        // a share just under the threshold stays quiet
        let mut quiet = stats();
        *quiet.by_format.get_mut(Format::Nginx) = FormatCounts {
            events: 10,
            no_client_ip: 4,
            ..FormatCounts::default()
        };
        assert!(hints(&quiet).is_empty());
    }
}
