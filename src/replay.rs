//! `tokenwatch replay`: files (or stdin) through the pipeline, decisions to stdout.
//!
//! Every input file is opened before the first line is read, so a typo in the last file name
//! fails at once rather than after an hour of replay. Decisions go to the given writer as
//! JSON lines; progress and the summary go to the other, so stdout stays machine-readable.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::input::lines::{Line, LineReader};
use crate::pipeline::{Pipeline, Stats};

/// A named input stream.
pub type Input = (String, Box<dyn BufRead>);

/// One input per file, or stdin for `-` or no file at all.
pub fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>, String> {
    if files.is_empty() {
        return Ok(vec![(
            "<stdin>".into(),
            Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
        )]);
    }
    files
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                return Ok((
                    "<stdin>".to_string(),
                    Box::new(BufReader::with_capacity(1 << 20, io::stdin())) as Box<dyn BufRead>,
                ));
            }
            let f = File::open(p).map_err(|e| format!("cannot open input {}: {e}", p.display()))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(format!("input {} is a directory, not a log file", p.display()));
            }
            Ok((
                p.display().to_string(),
                Box::new(BufReader::with_capacity(1 << 20, f)) as Box<dyn BufRead>,
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
    pub fn events_per_sec(&self) -> f64 {
        self.stats.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The human summary printed on stderr.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "tokenwatch replay: {} lines read, {} events decoded, {} skipped, {} decisions in {:.2} s ({:.0} lines/s)\n",
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
        out.push_str(&format!(
            "  events without a token: {}; late events: {}; tracked keys: {}; evicted keys: {}\n",
            s.without_token, self.late_events, self.tracked_keys, self.evictions
        ));
        out
    }
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
) -> Result<Summary, String> {
    let start = Instant::now();
    let mut last_report = start;
    let mut decisions = Vec::new();
    let mut buf = String::new();
    for (name, input) in inputs {
        let mut reader = LineReader::new(input, max_line);
        loop {
            let line = match reader.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => return Err(format!("error reading {name}: {e}")),
            };
            match line {
                Line::Ok(l) => pipeline.process_line(l, &mut decisions),
                Line::TooLong(_) => pipeline.line_too_long(),
            }
            if !decisions.is_empty() {
                buf.clear();
                for d in decisions.drain(..) {
                    buf.push_str(&d.to_json_line());
                }
                out.write_all(buf.as_bytes())
                    .map_err(|e| format!("cannot write decisions: {e}"))?;
            }
            if progress && pipeline.stats.lines & 0xFFFF == 0 {
                let now = Instant::now();
                if now - last_report >= Duration::from_secs(2) {
                    let secs = (now - start).as_secs_f64();
                    let _ = writeln!(
                        err,
                        "replay: {} lines, {} decisions, {:.0} lines/s",
                        pipeline.stats.lines,
                        pipeline.stats.decisions_total(),
                        pipeline.stats.lines as f64 / secs
                    );
                    last_report = now;
                }
            }
        }
    }
    out.flush().map_err(|e| format!("cannot write decisions: {e}"))?;
    let es = pipeline.engine().stats();
    Ok(Summary {
        stats: pipeline.stats.clone(),
        elapsed: start.elapsed(),
        tracked_keys: pipeline.engine().tracked_keys(),
        late_events: es.late_events,
        evictions: es.evictions,
    })
}
