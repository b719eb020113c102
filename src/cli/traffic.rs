//! The commands that make traffic: `gen` writes synthetic access logs (to a file, stdout or
//! Kafka), `demo` runs the whole service on them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use tokenwatch::config::flags::jwks_only;
use tokenwatch::config::Config;
use tokenwatch_core::rules::parse_duration_ms;
use tokenwatch_gen::{GenConfig, GenFormat, Generator, Networks};

use super::{runtime, OrFailed};

/// An output format of `gen`; `--help` lists the names.
#[derive(Debug, Clone, Copy)]
pub struct GenFormatArg(GenFormat);

impl clap::ValueEnum for GenFormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [GenFormatArg; GenFormat::ALL.len()] = {
            let mut all = [GenFormatArg(GenFormat::Canonical); GenFormat::ALL.len()];
            let mut i = 0;
            while i < all.len() {
                all[i] = GenFormatArg(GenFormat::ALL[i]);
                i += 1;
            }
            all
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()))
    }
}

#[derive(Args)]
pub struct TrafficArgs {
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
    /// Injected posture findings per 10,000 lines (weak algorithm, unknown issuer, audience
    /// mismatch, invalid signature accepted, sensitive claims, token over HTTP; and, above 0,
    /// signing keys that grow stale after 15 minutes). 0 injects none.
    #[arg(long, default_value_t = 1.0)]
    posture_rate: f64,
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
    fn config(&self, format: GenFormat) -> anyhow::Result<GenConfig> {
        let duration_secs = self
            .duration
            .as_deref()
            .map(|d| parse_duration_ms(d).map(|ms| (ms / 1000) as u64))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
        checked(GenConfig {
            seed: self.seed,
            events: self.events,
            duration_secs,
            users: self.users,
            rate_per_sec: self.rate,
            attack_rate: self.attack_rate,
            posture_rate: self.posture_rate,
            malformed_rate: self.malformed_rate,
            format,
            networks: networks(self.geoip.as_deref())?,
            decoys: !self.no_decoys,
            ..GenConfig::default()
        })
    }
}

/// The built-in networks, or those of a `--geoip` database (announced on stderr).
fn networks(geoip: Option<&Path>) -> anyhow::Result<Arc<Networks>> {
    let Some(path) = geoip else {
        return Ok(Networks::builtin());
    };
    let nets = Networks::from_geoip(path).map_err(|e| anyhow::anyhow!("{e}"))?;
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
fn checked(cfg: GenConfig) -> anyhow::Result<GenConfig> {
    if let Err(e) = cfg.validate() {
        let flag = match e.field {
            "rate_per_sec" => "rate",
            "attack_rate" => "attack-rate",
            "posture_rate" => "posture-rate",
            "malformed_rate" => "malformed-rate",
            f => f,
        };
        anyhow::bail!("--{flag} {}", e.problem);
    }
    Ok(cfg)
}

#[derive(Args)]
pub struct GenArgs {
    /// Output format.
    #[arg(long, default_value = "canonical")]
    format: GenFormatArg,
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

type Out = io::BufWriter<Box<dyn Write>>;

fn create(p: &Path) -> anyhow::Result<Out> {
    let f = std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
    Ok(io::BufWriter::with_capacity(1 << 16, Box::new(f)))
}

/// One JSON object per label and line.
fn write_labels<'a>(l: &mut Out, labels: impl IntoIterator<Item = &'a tokenwatch_gen::Label>) -> anyhow::Result<()> {
    for label in labels {
        serde_json::to_writer(&mut *l, label).context("cannot write labels")?;
        l.write_all(b"\n").context("cannot write labels")?;
    }
    Ok(())
}

pub fn gen(a: GenArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = a.traffic.config(a.format.0)?;
    if cfg.events.is_none() && cfg.duration_secs.is_none() {
        cfg.events = Some(100_000);
    }
    let mut labels = a.labels.as_deref().map(create).transpose()?;
    if let Some(p) = &a.jwks_out {
        std::fs::write(p, tokenwatch_gen::jwks(cfg.seed) + "\n")
            .with_context(|| format!("cannot write --jwks-out {}", p.display()))?;
    }
    if let Some(brokers) = &a.kafka {
        return produce(&a, cfg, brokers, labels.as_mut());
    }
    let mut out = match &a.output {
        Some(p) => create(p)?,
        None => io::BufWriter::with_capacity(1 << 16, Box::new(io::stdout().lock()) as Box<dyn Write>),
    };
    let written: anyhow::Result<()> = (|| {
        for g in Generator::new(cfg) {
            out.write_all(g.line.as_bytes())?;
            out.write_all(b"\n")?;
            if let Some(l) = labels.as_mut() {
                write_labels(l, &g.labels)?;
            }
        }
        out.flush()?;
        if let Some(l) = labels.as_mut() {
            l.flush()?;
        }
        Ok(())
    })();
    written.context("cannot write").or_failed()?;
    Ok(ExitCode::SUCCESS)
}

/// `gen --kafka`: the lines to a topic, the labels to their file.
fn produce(a: &GenArgs, mut cfg: GenConfig, brokers: &str, labels: Option<&mut Out>) -> anyhow::Result<ExitCode> {
    use tokenwatch_gen::kafka::{produce, Pace};
    let pace = if a.fast {
        Pace::Fast
    } else {
        // A live feed: event time is now.
        cfg.start_ms = tokenwatch::service::now_ms();
        Pace::Realtime { speedup: 1.0 }
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let produced = produce(Generator::new(cfg), brokers, &a.topic, pace, &[], &stop).or_failed()?;
    if let Some(l) = labels {
        write_labels(l, &produced.labels).or_failed()?;
        l.flush().context("cannot write labels").or_failed()?;
    }
    eprintln!(
        "tokenwatch gen: {} lines produced to {} on {brokers}",
        produced.lines, a.topic
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DemoArgs {
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
    #[arg(long, default_value_t = Config::default().metrics_addr.to_string())]
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
    /// Injected posture findings per 10,000 lines (as `gen --posture-rate`).
    #[arg(long, default_value_t = 10.0)]
    posture_rate: f64,
    /// Place users in the networks this MaxMind City database (.mmdb) locates; the demo's
    /// engine then geolocates with it too.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// JWKS file or URL whose public keys verify token signatures (repeatable).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    jwks: Vec<String>,
}

pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let duration = parse_duration_ms(&a.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let opts = tokenwatch::demo::DemoOptions {
        traffic: checked(GenConfig {
            seed: a.seed,
            users: a.users,
            rate_per_sec: a.rate,
            attack_rate: a.attack_rate,
            posture_rate: a.posture_rate,
            networks: networks(a.geoip.as_deref())?,
            ..GenConfig::default()
        })?,
        speedup: a.speedup.max(1.0),
        duration: std::time::Duration::from_millis(duration.max(1000) as u64),
        redis: a.redis,
        metrics_addr: a.metrics_addr,
        full_screen: io::stdout().is_terminal(),
        verify: jwks_only(&a.jwks)?.verifier()?,
    };
    let rt = runtime()?;
    let mut out = io::stdout();
    rt.block_on(tokenwatch::demo::live(opts, &mut out)).or_failed()?;
    Ok(ExitCode::SUCCESS)
}
