//! `tokenwatch report`: access-log files through the rules, as `replay` runs them, into a
//! one-page posture report (HTML or Markdown) instead of decision lines.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};

use tokenwatch::config::flags::{FormatArg, ReplayFlags};
use tokenwatch::report::{html, markdown, Report};
use tokenwatch_core::posture::stats::ReportStats;

use super::replay::{open_pipeline, threads};
use super::OrFailed;

/// The form of the report.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// One self-contained page (inline CSS and SVG, works offline).
    Html,
    /// Markdown, for tickets and wikis.
    Md,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The form of the report.
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    format: ReportFormat,
    /// Write the report here (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Directory of *.yaml / *.yml rule files.
    #[arg(long, default_value_os_t = tokenwatch::config::Config::default().rules)]
    rules: PathBuf,
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format (default: `input.format` of --config, else auto).
    #[arg(long)]
    log_format: Option<FormatArg>,
    /// TOML config file (input mapping, engine settings).
    #[arg(long)]
    config: Option<PathBuf>,
    /// JWKS file or URL whose public keys verify token signatures (repeatable).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
    /// Threads decoding lines (the report is the same for any value). Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Log files; none or `-` reads stdin.
    files: Vec<PathBuf>,
}

pub fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let flags = ReplayFlags {
        format: a.log_format,
        max_line_bytes: None,
        jwks: a.jwks,
    };
    let (mut pipeline, inputs, max_line) =
        open_pipeline(&flags, a.config.as_deref(), &a.rules, a.geoip.as_deref(), &a.files)?;
    let names: Vec<String> = inputs.iter().map(|(n, _)| n.clone()).collect();
    pipeline.set_posture_stats(Some(ReportStats::new()));
    let summary = tokenwatch_core::replay::replay_threads(
        &mut pipeline,
        inputs,
        max_line,
        threads(a.threads),
        &mut io::sink(),
        &mut io::stderr(),
        false,
    )
    .or_failed()?;
    let posture = pipeline.take_posture_stats().unwrap_or_default();
    let report = Report {
        inputs: &names,
        posture: &posture,
        stats: &summary.stats,
    };
    let text = match a.format {
        ReportFormat::Html => html::render(&report),
        ReportFormat::Md => markdown::render(&report),
    };
    match &a.output {
        Some(p) => std::fs::write(p, text)
            .with_context(|| format!("cannot write {}", p.display()))
            .or_failed()?,
        None => io::Write::write_all(&mut io::stdout().lock(), text.as_bytes()).or_failed()?,
    }
    eprintln!(
        "tokenwatch report: {} lines, {} events in {:.2} s",
        summary.stats.lines,
        summary.stats.events,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
