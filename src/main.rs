//! The `tokenwatch` command: parses the command line and hands over to the library.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use tokenwatch::config::Config;
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::input::Format;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::rules::{load_dir, RuleSet};
use tokenwatch_gen::{GenConfig, GenFormat, Generator, Networks};

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
    /// Undo revocations in Redis: delete the blocklist keys, tell the feed's followers.
    Unrevoke(UnrevokeArgs),
    /// Re-arm a rule that tripped its revocation budget, in every running instance.
    Rearm(RearmArgs),
    /// Run the rule tests (*.test.yaml beside the rules); exit 1 if any fails.
    Test {
        /// Directory of the rules and their *.test.yaml files.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
    /// Show what one rule did with every event of one token or subject, and why it fired or not.
    Explain(ExplainArgs),
    /// Replay logs through two rule sets; report per rule the decisions added and removed.
    Diff(DiffArgs),
}

/// Where `explain` and `diff` read and how.
#[derive(Args)]
struct OfflineArgs {
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format: auto, canonical, traefik, kong, envoy, nginx.
    #[arg(long, default_value = "auto")]
    format: Format,
    /// JWKS (file or URL) whose public keys verify token signatures; repeatable. Without it
    /// (or a gateway's attestation) revoking rules never fire.
    #[arg(long)]
    jwks: Vec<String>,
    /// Log files; none or `-` reads stdin.
    files: Vec<PathBuf>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["token", "subject"])))]
struct ExplainArgs {
    /// Directory of *.yaml / *.yml rule files.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// The rule to explain.
    #[arg(long)]
    rule: String,
    /// The token's id (its `jti`, or the `sha256:` id of decisions).
    #[arg(long)]
    token: Option<String>,
    /// The subject (`iss|sub`, as decisions print it).
    #[arg(long)]
    subject: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    input: OfflineArgs,
}

#[derive(Args)]
struct DiffArgs {
    /// The old rule directory, then the new one: `--rules OLD --rules NEW`.
    #[arg(long, num_args = 1, required = true)]
    rules: Vec<PathBuf>,
    /// Exit 1 when the new rules revoke anything the old ones did not.
    #[arg(long)]
    fail_on_new_revocations: bool,
    #[command(flatten)]
    input: OfflineArgs,
}

#[derive(Args)]
struct RearmArgs {
    /// The rule id (as in tokenwatch_rule_tripped{rule}).
    rule: String,
    #[command(flatten)]
    redis: RedisArgs,
}

/// Where `unrevoke` and `rearm` reach Redis: as `run` does.
#[derive(Args)]
struct RedisArgs {
    /// Redis URL (repeat for Redis Cluster seed nodes); or `redis` in the config.
    #[arg(long)]
    redis: Vec<String>,
    /// Key prefix (default tokenwatch:).
    #[arg(long)]
    key_prefix: Option<String>,
    /// TOML config file (`redis`, `key_prefix`, the `[revocation]` settings).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl RedisArgs {
    /// The Redis settings from the flags, the environment and the config file.
    fn redis_config(&self) -> Result<tokenwatch::sinks::redis::RedisConfig, String> {
        let config = Config::load_with_env(self.config.as_deref(), std::env::vars())?;
        tokenwatch::service::redis_config(&config, &self.redis, self.key_prefix.as_deref())
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["token", "subject", "rule"])))]
struct UnrevokeArgs {
    /// A token's revocation key (a decision's `revocation_key`, a feed entry's `id`).
    #[arg(long)]
    token: Option<String>,
    /// A subject's revocation key (a decision's `revocation_key`, a feed entry's `id`).
    #[arg(long)]
    subject: Option<String>,
    /// Every revocation this rule made that is still in the feed.
    #[arg(long)]
    rule: Option<String>,
    /// With --rule: only revocations made at or after this time (RFC 3339, epoch seconds, or
    /// a duration before now such as 2h).
    #[arg(long, requires = "rule")]
    since: Option<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Args)]
struct ReplayArgs {
    /// Directory of *.yaml / *.yml rule files.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format: auto, canonical, traefik, kong, apisix, envoy, nginx, aws, custom.
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
    /// JWKS file or URL whose public keys verify token signatures (repeatable; replaces
    /// `[verify] jwks` of --config).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
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
            .map(|d| tokenwatch_core::rules::parse_duration_ms(d).map(|ms| (ms / 1000) as u64))
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
    /// JWKS file or URL whose public keys verify token signatures (repeatable).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
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
        std::fs::write(p, tokenwatch_gen::jwks(cfg.seed) + "\n")
            .map_err(|e| format!("cannot write --jwks-out {}: {e}", p.display()))?;
    }
    if let Some(brokers) = &a.kafka {
        use tokenwatch_gen::kafka::{produce, Pace};
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
        let produced = produce(Generator::new(cfg), brokers, &a.topic, pace, &[], &stop).map_err(|e| e.to_string())?;
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
    let duration = tokenwatch_core::rules::parse_duration_ms(&a.duration).map_err(|e| format!("--duration: {e}"))?;
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
        verify: Config::default().verifier(&a.jwks)?,
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
    /// Log format: auto, canonical, traefik, kong, apisix, envoy, nginx, aws, custom.
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
    /// JWKS file or URL whose public keys verify token signatures (repeatable; replaces
    /// `[verify] jwks`).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
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
        jwks: a.jwks,
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

fn unrevoke(a: UnrevokeArgs) -> Result<ExitCode, String> {
    use tokenwatch::sinks::unrevoke::Target;
    let redis = a.redis.redis_config()?;
    let now_s = chrono::Utc::now().timestamp();
    let target = match (a.token, a.subject, a.rule) {
        (Some(t), _, _) => Target::Token(t),
        (_, Some(s), _) => Target::Subject(s),
        (_, _, Some(rule)) => Target::Rule {
            rule,
            since_s: a.since.as_deref().map(|s| since(s, now_s)).transpose()?,
        },
        _ => return Err("give --token, --subject or --rule".into()),
    };
    let rt = runtime()?;
    let removed = rt.block_on(async {
        let mut w = tokenwatch::sinks::redis::RevocationWriter::connect(redis).await?;
        tokenwatch::sinks::unrevoke::unrevoke(&mut w, &target, now_s).await
    })?;
    let mut out = io::stdout().lock();
    for r in &removed {
        let kind = match r.kind {
            tokenwatch::sinks::redis::Kind::Token => "token",
            tokenwatch::sinks::redis::Kind::Subject => "subject",
        };
        let _ = writeln!(out, "unrevoked {kind} {}: {}", r.id, r.value);
    }
    let _ = writeln!(out, "{} revocation(s) removed", removed.len());
    Ok(ExitCode::SUCCESS)
}

fn rearm(a: RearmArgs) -> Result<ExitCode, String> {
    let redis = a.redis.redis_config()?;
    let now_s = chrono::Utc::now().timestamp();
    runtime()?.block_on(async {
        let mut w = tokenwatch::sinks::redis::RevocationWriter::connect(redis).await?;
        w.request_rearm(&a.rule, now_s).await
    })?;
    println!(
        "asked every running tokenwatch to re-arm rule {} (each does within a few seconds; tokenwatch_rule_tripped{{rule=\"{}\"}} goes to 0)",
        a.rule, a.rule
    );
    Ok(ExitCode::SUCCESS)
}

/// `--since`: RFC 3339, epoch seconds, or a duration before `now_s`.
fn since(s: &str, now_s: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    tokenwatch_core::rules::parse_duration_ms(s)
        .map(|ms| now_s - ms / 1000)
        .map_err(|e| format!("--since `{s}`: not RFC 3339, epoch seconds or a duration: {e}"))
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
        Cmd::Unrevoke(a) => unrevoke(a),
        Cmd::Rearm(a) => rearm(a),
        Cmd::Test { rules } => rule_tests(&rules),
        Cmd::Explain(a) => explain(a),
        Cmd::Diff(a) => diff(a),
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
            for w in tokenwatch_core::ruletest::untested_revoking(dir, &set) {
                eprintln!("{w}");
            }
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

fn rule_tests(dir: &Path) -> Result<ExitCode, String> {
    let rules = load_rules(dir)?;
    let report = tokenwatch_core::ruletest::Suite::load(dir)?.run(&rules);
    print!("{}", report.render());
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

impl OfflineArgs {
    /// A pipeline for `rules` over these inputs' format and GeoIP database.
    fn pipeline(&self, rules: &Path) -> Result<Pipeline, String> {
        let geo = self
            .geoip
            .as_deref()
            .map(GeoDb::open)
            .transpose()
            .map_err(|e| e.to_string())?;
        let cfg = PipelineConfig {
            format: self.format,
            verify: Config::default().verifier(&self.jwks)?,
            ..PipelineConfig::default()
        };
        Pipeline::new(load_rules(rules)?, geo, cfg)
    }
}

fn explain(a: ExplainArgs) -> Result<ExitCode, String> {
    use tokenwatch_core::engine::trace::Who;
    let who = match (a.token, a.subject) {
        (Some(t), _) => Who::Token(t.into()),
        (None, Some(s)) => Who::Subject(s.into()),
        (None, None) => return Err("give --token or --subject".into()),
    };
    let mut p = a.input.pipeline(&a.rules)?;
    let inputs = tokenwatch_core::replay::open_inputs(&a.input.files)?;
    let max = tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
    let e = tokenwatch_core::explain::explain(&mut p, &a.rule, who, inputs, max)?;
    if a.json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(a: DiffArgs) -> Result<ExitCode, String> {
    let [old, new] = &a.rules[..] else {
        return Err("give the rules twice: --rules OLD --rules NEW".into());
    };
    let (mut po, mut pn) = (a.input.pipeline(old)?, a.input.pipeline(new)?);
    let inputs = tokenwatch_core::replay::open_inputs(&a.input.files)?;
    let max = tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
    let report = tokenwatch_core::diff::diff(&mut po, &mut pn, inputs, max)?;
    print!("{}", report.render());
    Ok(if a.fail_on_new_revocations && report.added_revocations() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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
        verify: config.verifier(&a.jwks)?,
    };
    if let Some(w) = cfg.evidence_warning() {
        eprintln!("tokenwatch: warning: {w}");
    }
    let max_line = a.max_line_bytes.unwrap_or_else(|| config.max_line_bytes());
    let inputs = tokenwatch_core::replay::open_inputs(&a.files)?;
    let mut pipeline = Pipeline::new(rules, geo, cfg)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = io::stderr();
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    let summary = tokenwatch_core::replay::replay_threads(
        &mut pipeline,
        inputs,
        max_line,
        threads,
        &mut out,
        &mut err,
        !a.quiet,
    )?;
    drop(out);
    let _ = err.write_all(summary.render().as_bytes());
    Ok(ExitCode::SUCCESS)
}
