//! `tokenwatch replay`: access-log files (or stdin) through the rules, decisions to stdout.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use tokenwatch::config::flags::{FormatArg, ReplayFlags};
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::pipeline::Pipeline;
use tokenwatch_core::replay::Input;

use super::{load_rules, OrFailed};

#[derive(Args)]
pub struct ReplayArgs {
    /// Directory of *.yaml / *.yml rule files.
    #[arg(long, default_value_os_t = tokenwatch::config::Config::default().rules)]
    rules: PathBuf,
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format (default: `input.format` of --config, else auto).
    #[arg(long)]
    format: Option<FormatArg>,
    /// TOML config file (input mapping, engine settings).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Skip lines longer than this many bytes.
    #[arg(long)]
    max_line_bytes: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Threads decoding lines (the engine runs on the calling thread, in input order;
    /// decisions are the same for any value). Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// JWKS file or URL whose public keys verify token signatures (repeatable; replaces
    /// `[verify] jwks` of --config).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
    /// Log files; none or `-` reads stdin.
    files: Vec<PathBuf>,
}

pub fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let flags = ReplayFlags {
        format: a.format,
        max_line_bytes: a.max_line_bytes,
        jwks: a.jwks,
    };
    let (mut pipeline, inputs, max_line) =
        open_pipeline(&flags, a.config.as_deref(), &a.rules, a.geoip.as_deref(), &a.files)?;
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut err = io::stderr();
    let threads = threads(a.threads);
    let summary =
        tokenwatch_core::replay::replay_threads(&mut pipeline, inputs, max_line, threads, &mut out, &mut err, !a.quiet)
            .or_failed()?;
    drop(out);
    let _ = err.write_all(summary.render().as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// The pipeline of an offline replay (`replay`, `report`): configuration, rules, GeoIP and
/// every input opened, so that a wrong name fails before any work; also the line cap.
pub fn open_pipeline(
    flags: &ReplayFlags,
    config: Option<&Path>,
    rules: &Path,
    geoip: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<(Pipeline, Vec<Input>, usize)> {
    let config = flags.load(config)?;
    let rules = load_rules(rules)?;
    let geo = geoip.map(GeoDb::open).transpose().map_err(anyhow::Error::msg)?;
    let cfg = config.pipeline()?;
    if let Some(w) = cfg.evidence_warning() {
        eprintln!("tokenwatch: warning: {w}");
    }
    let inputs = tokenwatch_core::replay::open_inputs(files).map_err(anyhow::Error::msg)?;
    let pipeline = Pipeline::new(rules, geo, cfg).map_err(anyhow::Error::msg)?;
    Ok((pipeline, inputs, config.config.input.max_line_bytes))
}

/// The decoding threads: `--threads`, or all cores.
pub fn threads(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}
