//! The commands that work on rule files and log files, with no service around them:
//! `validate`, `test`, `explain` and `diff`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use tokenwatch::config::flags::{jwks_only, FormatArg};
use tokenwatch::config::Config;
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};

use super::load_rules;

/// The rule directory of a command, `rules` unless given.
#[derive(Args)]
pub struct RulesDir {
    /// Directory of *.yaml / *.yml rule files (and their *.test.yaml files).
    #[arg(long, default_value_os_t = Config::default().rules)]
    pub rules: PathBuf,
}

/// Where `explain` and `diff` read and how.
#[derive(Args)]
pub struct OfflineArgs {
    /// MaxMind GeoIP2/GeoLite2 City database (.mmdb).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Log format.
    #[arg(long, default_value = "auto")]
    format: FormatArg,
    /// JWKS (file or URL) whose public keys verify token signatures; repeatable. Without it
    /// (or a gateway's attestation) revoking rules never fire.
    #[arg(long)]
    jwks: Vec<String>,
    /// Log files; none or `-` reads stdin.
    files: Vec<PathBuf>,
}

impl OfflineArgs {
    /// A pipeline for `rules` over these inputs' format and GeoIP database.
    fn pipeline(&self, rules: &Path) -> anyhow::Result<Pipeline> {
        let geo = self
            .geoip
            .as_deref()
            .map(GeoDb::open)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let cfg = PipelineConfig {
            format: self.format.0,
            verify: jwks_only(&self.jwks)?.verifier()?,
            ..PipelineConfig::default()
        };
        Pipeline::new(load_rules(rules)?, geo, cfg).map_err(anyhow::Error::msg)
    }

    fn inputs(&self) -> anyhow::Result<Vec<tokenwatch_core::replay::Input>> {
        tokenwatch_core::replay::open_inputs(&self.files).map_err(anyhow::Error::msg)
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["token", "subject"])))]
pub struct ExplainArgs {
    #[command(flatten)]
    rules: RulesDir,
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
pub struct DiffArgs {
    /// The old rule directory, then the new one: `--rules OLD --rules NEW`.
    #[arg(long, num_args = 1, required = true)]
    rules: Vec<PathBuf>,
    /// Exit 1 when the new rules revoke anything the old ones did not.
    #[arg(long)]
    fail_on_new_revocations: bool,
    #[command(flatten)]
    input: OfflineArgs,
}

/// Exit 1 when the rules have problems, each printed as `file:line: message`.
pub fn validate(dir: &Path) -> anyhow::Result<ExitCode> {
    match tokenwatch_core::rules::load_dir(dir) {
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

/// Exit 1 when a rule test fails.
pub fn rule_tests(dir: &Path) -> anyhow::Result<ExitCode> {
    let rules = load_rules(dir)?;
    let report = tokenwatch_core::ruletest::Suite::load(dir)
        .map_err(anyhow::Error::msg)?
        .run(&rules);
    print!("{}", report.render());
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn explain(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    use tokenwatch_core::engine::trace::Who;
    let who = match (a.token, a.subject) {
        (Some(t), _) => Who::Token(t.into()),
        (None, Some(s)) => Who::Subject(s.into()),
        (None, None) => anyhow::bail!("give --token or --subject"),
    };
    let mut p = a.input.pipeline(&a.rules.rules)?;
    let inputs = a.input.inputs()?;
    let e = tokenwatch_core::explain::explain(&mut p, &a.rule, who, inputs, DEFAULT_MAX_LINE)
        .map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 1 with `--fail-on-new-revocations` when the new rules revoke more.
pub fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let [old, new] = &a.rules[..] else {
        anyhow::bail!("give the rules twice: --rules OLD --rules NEW");
    };
    let (mut po, mut pn) = (a.input.pipeline(old)?, a.input.pipeline(new)?);
    let inputs = a.input.inputs()?;
    let report = tokenwatch_core::diff::diff(&mut po, &mut pn, inputs, DEFAULT_MAX_LINE).map_err(anyhow::Error::msg)?;
    print!("{}", report.render());
    Ok(if a.fail_on_new_revocations && report.added_revocations() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
