//! The `tokenwatch` command: parses the command line and hands each subcommand to its module
//! under `cli/`.
//!
//! Exit status: 0 success; 1 the command ran and found something (invalid rules, a failing
//! rule test, new revocations with `diff --fail-on-new-revocations`) or failed while working
//! (Kafka, Redis, a write, `run`'s shutdown timeout); 2 the command line, the configuration or
//! an input must be fixed (clap's usage errors are 2 too).

mod cli;

/// jemalloc for Rust and, unprefixed, for librdkafka's C allocations too: glibc's malloc and
/// its page faults on librdkafka's receive buffers were 15-20 % of a drain's samples.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::offline::{DiffArgs, ExplainArgs, RulesDir};
use cli::replay::ReplayArgs;
use cli::report::ReportArgs;
use cli::run::{RearmArgs, UnrevokeArgs};
use cli::traffic::{DemoArgs, GenArgs};
use tokenwatch::config::flags::RunFlags;

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
    /// Replay access-log files into a one-page posture report (HTML or Markdown).
    Report(ReportArgs),
    /// Check the rule files; print every problem as file:line: message.
    Validate(RulesDir),
    /// Write synthetic gateway access logs with labelled attacks.
    Gen(GenArgs),
    /// Show tokenwatch at work on generated traffic with the default rules.
    Demo(DemoArgs),
    /// Run the service: Kafka in, revocations to Redis, metrics on HTTP.
    // A flag given again overrides the earlier one, so that a wrapper's command line can be
    // extended (a manifest's args plus an operator's override).
    #[command(args_override_self = true)]
    Run(RunFlags),
    /// Undo revocations in Redis: delete the blocklist keys, tell the feed's followers.
    Unrevoke(UnrevokeArgs),
    /// Re-arm a rule that tripped its revocation budget, in every running instance.
    Rearm(RearmArgs),
    /// Run the rule tests (*.test.yaml beside the rules); exit 1 if any fails.
    Test(RulesDir),
    /// Show what one rule did with every event of one token or subject, and why it fired or not.
    Explain(ExplainArgs),
    /// Replay logs through two rule sets; report per rule the decisions added and removed.
    Diff(DiffArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Replay(a) => cli::replay::replay(a),
        Cmd::Report(a) => cli::report::report(a),
        Cmd::Validate(d) => cli::offline::validate(&d.rules),
        Cmd::Gen(a) => cli::traffic::gen(a),
        Cmd::Demo(a) => cli::traffic::demo(a),
        Cmd::Run(flags) => cli::run::run(flags),
        Cmd::Unrevoke(a) => cli::run::unrevoke(a),
        Cmd::Rearm(a) => cli::run::rearm(a),
        Cmd::Test(d) => cli::offline::rule_tests(&d.rules),
        Cmd::Explain(a) => cli::offline::explain(a),
        Cmd::Diff(a) => cli::offline::diff(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("tokenwatch: {e:#}");
        if e.is::<cli::Failed>() {
            ExitCode::from(1)
        } else {
            ExitCode::from(2)
        }
    })
}
