//! The `tokenwatch` command: parses the command line and hands over to the library.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use tokenwatch::config::Config;
use tokenwatch::gen::{GenConfig, GenFormat, Generator, Networks};
use tokenwatch::geo::GeoDb;
use tokenwatch::input::Format;
use tokenwatch::pipeline::{Pipeline, PipelineConfig};
use tokenwatch::rules::{load_dir, RuleSet};

#[derive(Parser)]
#[command(
    name = "tokenwatch",
    version,
    about = "Catches stolen and misused JWTs in API-gateway access logs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run access-log files (or stdin) through the rules; print decisions as JSON lines.
    Replay(ReplayArgs),
    /// Check the rule files; print every problem as file:line: message.
    Validate {
        /// Directory of *.yaml / *.yml rule files.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
    /// Write synthetic gateway access logs with labelled attacks.
    Gen(GenArgs),
    /// Show tokenwatch at work on generated traffic with the default rules.
    Demo(DemoArgs),
    /// Run the service: Kafka in, revocations to Redis, metrics on HTTP.
    Run(RunArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Directory of *.yaml / *.yml rule files.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format: auto, canonical, traefik, kong, envoy, nginx, custom.
    #[arg(long)]
    format: Option<Format>,
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
    /// Log files; none or `-` reads stdin.
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct TrafficArgs {
    /// Seed: the same seed and options give the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of lines to write.
    #[arg(long)]
    events: Option<u64>,
    /// Or: this much event time (e.g. 10m, 24h).
    #[arg(long)]
    duration: Option<String>,
    /// Number of simulated users.
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Injected attacks per 10,000 lines.
    #[arg(long, default_value_t = 5.0)]
    attack_rate: f64,
    /// Fraction of malformed lines (0..1).
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Average requests per second of event time.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Place users in the networks this MaxMind City database (.mmdb) locates, instead of
    /// the built-in ones of MaxMind's test database; replay the traffic with the same file.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Inject no forged decoys (an engine that does not verify signatures fires on them).
    #[arg(long)]
    no_decoys: bool,
}

impl TrafficArgs {
    fn config(&self, format: GenFormat) -> Result<GenConfig, String> {
        let duration_secs = self
            .duration
            .as_deref()
            .map(|d| tokenwatch::rules::parse_duration_ms(d).map(|ms| (ms / 1000) as u64))
            .transpose()
            .map_err(|e| format!("--duration: {e}"))?;
        checked(GenConfig {
            seed: self.seed,
            events: self.events,
            duration_secs,
            users: self.users,
            rate_per_sec: self.rate,
            attack_rate: self.attack_rate,
            malformed_rate: self.malformed_rate,
            format,
            networks: networks(self.geoip.as_deref())?,
            decoys: !self.no_decoys,
            ..GenConfig::default()
        })
    }
}

/// The built-in networks, or those of a `--geoip` database (announced on stderr).
fn networks(geoip: Option<&Path>) -> Result<Arc<Networks>, String> {
    let Some(path) = geoip else {
        return Ok(Networks::builtin());
    };
    let nets = Networks::from_geoip(path).map_err(|e| e.to_string())?;
    eprintln!(
        "tokenwatch: users in {} regions ({} located networks) of {}",
        nets.regions(),
        nets.located_networks(),
        path.display()
    );
    Ok(Arc::new(nets))
}

/// The generator's settings as given, or an error naming the flag that cannot work (a zero
/// rate or a negative attack rate is refused, not silently corrected).
fn checked(cfg: GenConfig) -> Result<GenConfig, String> {
    cfg.validate().map_err(|e| {
        let flag = match e.field {
            "rate_per_sec" => "rate",
            "attack_rate" => "attack-rate",
            "malformed_rate" => "malformed-rate",
            f => f,
        };
        format!("--{flag} {}", e.problem)
    })?;
    Ok(cfg)
}

#[derive(Args)]
struct GenArgs {
    /// Output format: canonical, traefik, kong, envoy or nginx.
    #[arg(long, default_value = "canonical")]
    format: GenFormat,
    /// Write the lines here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Write the injected attacks (and the decoys that must not fire) here, one JSON object
    /// per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Write the public keys that verify the generated tokens here, as a JWK Set.
    #[arg(long)]
    jwks_out: Option<PathBuf>,
    /// Produce to Kafka (these bootstrap servers) instead of writing a file.
    #[arg(long)]
    kafka: Option<String>,
    /// The topic for --kafka.
    #[arg(long, default_value = "gateway-logs")]
    topic: String,
    /// With --kafka: send as fast as possible instead of at --rate lines per second.
    #[arg(long)]
    fast: bool,
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// How long to run (wall clock).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Event time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 100.0)]
    speedup: f64,
    /// Write revocations to this Redis instead of memory.
    #[arg(long)]
    redis: Option<String>,
    /// Address of /metrics during the demo.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: String,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Simulated users.
    #[arg(long, default_value_t = 300)]
    users: u32,
    /// Requests per second of event time.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Injected attacks per 10,000 lines.
    #[arg(long, default_value_t = 10.0)]
    attack_rate: f64,
    /// Place users in the networks this MaxMind City database (.mmdb) locates; the demo's
    /// engine then geolocates with it too.
    #[arg(long)]
    geoip: Option<PathBuf>,
}

fn gen(a: GenArgs) -> Result<ExitCode, String> {
    let mut cfg = a.traffic.config(a.format)?;
    if cfg.events.is_none() && cfg.duration_secs.is_none() {
        cfg.events = Some(100_000);
    }
    let create = |p: &Path| {
        std::fs::File::create(p)
            .map(|f| io::BufWriter::with_capacity(1 << 16, f))
            .map_err(|e| format!("cannot create {}: {e}", p.display()))
    };
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(create(p)?),
        None => Box::new(io::BufWriter::with_capacity(1 << 16, io::stdout().lock())),
    };
    let mut labels = a.labels.as_deref().map(create).transpose()?;
    let werr = |e: io::Error| format!("cannot write: {e}");
    if let Some(p) = &a.jwks_out {
        std::fs::write(p, tokenwatch::gen::jwks(cfg.seed) + "\n")
            .map_err(|e| format!("cannot write --jwks-out {}: {e}", p.display()))?;
    }
    if let Some(brokers) = &a.kafka {
        use tokenwatch::gen::kafka::{produce, Pace};
        let pace = if a.fast {
            Pace::Fast
        } else {
            Pace::Realtime { speedup: 1.0 }
        };
        if !a.fast {
            // A live feed: event time is now.
            cfg.start_ms = tokenwatch::service::now_ms();
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let produced = produce(Generator::new(cfg), brokers, &a.topic, pace, &[], &stop)?;
        if let Some(l) = labels.as_mut() {
            for label in &produced.labels {
                serde_json::to_writer(&mut *l, label).map_err(|e| format!("cannot write labels: {e}"))?;
                l.write_all(b"\n").map_err(werr)?;
            }
            l.flush().map_err(werr)?;
        }
        eprintln!(
            "tokenwatch gen: {} lines produced to {} on {brokers}",
            produced.lines, a.topic
        );
        return Ok(ExitCode::SUCCESS);
    }
    for g in Generator::new(cfg) {
        out.write_all(g.line.as_bytes()).map_err(werr)?;
        out.write_all(b"\n").map_err(werr)?;
        if let Some(l) = labels.as_mut() {
            for label in &g.labels {
                serde_json::to_writer(&mut *l, label).map_err(|e| format!("cannot write labels: {e}"))?;
                l.write_all(b"\n").map_err(werr)?;
            }
        }
    }
    out.flush().map_err(werr)?;
    if let Some(mut l) = labels {
        l.flush().map_err(werr)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn demo(a: DemoArgs) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    let duration = tokenwatch::rules::parse_duration_ms(&a.duration).map_err(|e| format!("--duration: {e}"))?;
    let opts = tokenwatch::demo::DemoOptions {
        traffic: checked(GenConfig {
            seed: a.seed,
            users: a.users,
            rate_per_sec: a.rate,
            attack_rate: a.attack_rate,
            networks: networks(a.geoip.as_deref())?,
            ..GenConfig::default()
        })?,
        speedup: a.speedup.max(1.0),
        duration: std::time::Duration::from_millis(duration.max(1000) as u64),
        redis: a.redis,
        metrics_addr: a.metrics_addr,
        full_screen: io::stdout().is_terminal(),
    };
    let rt = runtime()?;
    let mut out = io::stdout();
    rt.block_on(tokenwatch::demo::live(opts, &mut out))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; every key can also be set as TOKENWATCH_KEY in the environment.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to consume (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Consumer group id.
    #[arg(long)]
    group: Option<String>,
    /// Log format: auto, canonical, traefik, kong, envoy, nginx, custom.
    #[arg(long)]
    format: Option<Format>,
    /// Directory of rule files.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// MaxMind City database.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Redis URL (repeat for Redis Cluster seed nodes).
    #[arg(long)]
    redis: Vec<String>,
    /// Address for /metrics, /healthz, /readyz.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long)]
    key_prefix: Option<String>,
    /// Where decision lines go: stdout, none, or a file.
    #[arg(long)]
    alerts: Option<String>,
    /// Also produce decisions to this Kafka topic.
    #[arg(long)]
    alerts_topic: Option<String>,
    /// Logs on stderr: human or json.
    #[arg(long)]
    log_format: Option<String>,
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    let config = Config::load_with_env(a.config.as_deref(), std::env::vars())?;
    let log_format = a
        .log_format
        .clone()
        .or_else(|| config.log_format.clone())
        .unwrap_or_else(|| "human".into());
    init_logs(&log_format)?;
    let overrides = tokenwatch::service::Overrides {
        brokers: a.brokers,
        topics: a.topics,
        group: a.group,
        format: a.format,
        rules: a.rules,
        geoip: a.geoip,
        redis: a.redis,
        metrics_addr: a.metrics_addr,
        key_prefix: a.key_prefix,
        alerts: a.alerts,
        alerts_topic: a.alerts_topic,
    };
    let (cfg, addr) = tokenwatch::service::resolve(&config, &overrides)?;
    let rt = runtime()?;
    let summary = rt.block_on(tokenwatch::service::serve(cfg, addr))?;
    tracing::info!(
        lines = summary.stats.lines,
        events = summary.stats.events,
        decisions = summary.stats.decisions_total(),
        revocations = summary.revocations_written,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// The async runtime of `run` and `demo`, with the TLS provider that `rediss://` needs.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn init_logs(format: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        "human" => b.init(),
        "json" => b.json().init(),
        other => return Err(format!("log_format: `{other}` is not human or json")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Replay(a) => replay(a),
        Cmd::Validate { rules } => validate(&rules),
        Cmd::Gen(a) => gen(a),
        Cmd::Demo(a) => demo(a),
        Cmd::Run(a) => run(a),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("tokenwatch: {msg}");
            ExitCode::from(2)
        }
    }
}

fn load_rules(dir: &Path) -> Result<Arc<RuleSet>, String> {
    load_dir(dir).map(Arc::new).map_err(|e| format!("invalid rules:\n{e}"))
}

fn validate(dir: &Path) -> Result<ExitCode, String> {
    match load_dir(dir) {
        Ok(set) => {
            println!(
                "{}: {} rules in {} files are valid",
                dir.display(),
                set.rules.len(),
                set.files
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) found", errors.0.len());
            Ok(ExitCode::from(1))
        }
    }
}

fn replay(a: ReplayArgs) -> Result<ExitCode, String> {
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let rules = load_rules(&a.rules)?;
    let geo = a
        .geoip
        .as_deref()
        .map(GeoDb::open)
        .transpose()
        .map_err(|e| e.to_string())?;
    let format = match a.format {
        Some(f) => f,
        None => config.format()?.unwrap_or(Format::Auto),
    };
    let cfg = PipelineConfig {
        format,
        mapping: config.mapping()?,
        token_cache: config.token_cache(),
        engine: config.engine()?,
    };
    let max_line = a.max_line_bytes.unwrap_or_else(|| config.max_line_bytes());
    let inputs = tokenwatch::replay::open_inputs(&a.files)?;
    let mut pipeline = Pipeline::new(rules, geo, cfg)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = io::stderr();
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let summary =
        tokenwatch::replay::replay_threads(&mut pipeline, inputs, max_line, threads, &mut out, &mut err, !a.quiet)?;
    drop(out);
    let _ = err.write_all(summary.render().as_bytes());
    Ok(ExitCode::SUCCESS)
}
