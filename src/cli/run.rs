//! The commands of a deployment: `run` (the service), and `unrevoke` and `rearm`, which act
//! on the Redis that running instances write to.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Args;

use tokenwatch::config::flags::{RedisFlags, RunFlags};
use tokenwatch::config::LogFormat;
use tokenwatch::sinks::redis::{Kind, RevocationWriter};
use tokenwatch::sinks::unrevoke::Target;

use super::{runtime, OrFailed};

pub fn run(flags: RunFlags) -> anyhow::Result<ExitCode> {
    let config = flags.load(std::env::vars())?;
    init_logs(config.config.log_format);
    let (cfg, addr) = config.service()?;
    let summary = runtime()?.block_on(tokenwatch::service::serve(cfg, addr)).or_failed()?;
    tracing::info!(
        lines = summary.stats.lines,
        events = summary.stats.events,
        decisions = summary.stats.decisions_total(),
        revocations = summary.revocations_written,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["token", "subject", "rule"])))]
pub struct UnrevokeArgs {
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
    redis: RedisFlags,
}

pub fn unrevoke(a: UnrevokeArgs) -> anyhow::Result<ExitCode> {
    let redis = a.redis.resolve(std::env::vars())?;
    let now_s = chrono::Utc::now().timestamp();
    let target = match (a.token, a.subject, a.rule) {
        (Some(t), _, _) => Target::Token(t),
        (_, Some(s), _) => Target::Subject(s),
        (_, _, Some(rule)) => Target::Rule {
            rule,
            since_s: a.since.as_deref().map(|s| since(s, now_s)).transpose()?,
        },
        _ => anyhow::bail!("give --token, --subject or --rule"),
    };
    let removed = runtime()?
        .block_on(async {
            let mut w = RevocationWriter::connect(redis).await?;
            tokenwatch::sinks::unrevoke::unrevoke(&mut w, &target, now_s).await
        })
        .or_failed()?;
    let mut out = io::stdout().lock();
    for r in &removed {
        let kind = match r.kind {
            Kind::Token => "token",
            Kind::Subject => "subject",
        };
        let _ = writeln!(out, "unrevoked {kind} {}: {}", r.id, r.value);
    }
    let _ = writeln!(out, "{} revocation(s) removed", removed.len());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RearmArgs {
    /// The rule id (as in tokenwatch_rule_tripped{rule}).
    rule: String,
    #[command(flatten)]
    redis: RedisFlags,
}

pub fn rearm(a: RearmArgs) -> anyhow::Result<ExitCode> {
    let redis = a.redis.resolve(std::env::vars())?;
    let now_s = chrono::Utc::now().timestamp();
    runtime()?
        .block_on(async {
            let mut w = RevocationWriter::connect(redis).await?;
            w.request_rearm(&a.rule, now_s).await
        })
        .or_failed()?;
    println!(
        "asked every running tokenwatch to re-arm rule {} (each does within a few seconds; tokenwatch_rule_tripped{{rule=\"{}\"}} goes to 0)",
        a.rule, a.rule
    );
    Ok(ExitCode::SUCCESS)
}

/// `--since`: RFC 3339, epoch seconds, or a duration before `now_s`.
fn since(s: &str, now_s: i64) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    tokenwatch_core::rules::parse_duration_ms(s)
        .map(|ms| now_s - ms / 1000)
        .map_err(|e| anyhow::anyhow!("--since `{s}`: not RFC 3339, epoch seconds or a duration: {e}"))
}
