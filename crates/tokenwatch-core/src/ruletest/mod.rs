//! `tokenwatch test`: rule tests that live beside the rules, as `NAME.test.yaml`.
//!
//! A test file names the rule under test and holds cases: requests in a shorthand (virtual
//! time offsets, tokens built from claims and signed with the runner's own key, see
//! [`keys`]) or raw lines in any log format, and the decisions that must and must not come
//! out. Each case runs through its own fresh [`Pipeline`] with the *whole* rule set, as the
//! service would run it, and then only the decisions of the rules the case is about are
//! compared: the file's rule, the rules its expectations name, and `expect_none`. Within
//! those, the match is exact: an expected decision that did not happen and a decision that
//! was not expected both fail the case.
//!
//! Cases are built once ([`Suite::load`]) and can run against any rule set
//! ([`Suite::run`]): that is how a test shows the shipped cases catch a mutated rule.

pub mod build;
pub mod keys;
pub(crate) mod spec;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decision::Decision;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::rules::load::is_rule_test;
use crate::rules::RuleSet;

use build::{build_case, fmt_offset, BuildError, BuiltCase, Expect, START_MS};

/// The rule directory cannot be listed: no test can run.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the rule directory {}: {source}", dir.display())]
pub struct SuiteError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// A test file that cannot be read or does not fit the schema ([`spec`]).
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// `file:line: message`, or `file: message` when the parser knows no line.
    #[error("{}: {message}", at(path, *line))]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// Why a case cannot run: its file is broken, or the case itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaseError {
    #[error(transparent)]
    File(Arc<TestFileError>),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// `file:line`, or only `file` when the line is unknown (never `file:0`).
fn at(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

/// One case, built, with where it was written.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// `file:line` of the case's name.
    pub origin: String,
    pub name: String,
    /// The rule of its file.
    pub rule: String,
    /// What to run, or why the case cannot be built.
    pub built: Result<BuiltCase, CaseError>,
}

/// Every case found beside a rule directory.
#[derive(Debug, Clone, Default)]
pub struct Suite {
    pub files: usize,
    pub cases: Vec<TestCase>,
}

/// The test files in `dir`, by name.
pub(crate) fn test_files(dir: &Path) -> Result<Vec<PathBuf>, SuiteError> {
    let rd = std::fs::read_dir(dir).map_err(|source| SuiteError {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_rule_test(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one test file; the error says `file:line: message` when the line is known.
pub(crate) fn read_test_file(path: &Path) -> Result<spec::TestFile, TestFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    marked_yaml::from_yaml::<spec::TestFile>(0, &text).map_err(|e| {
        let line = match &e {
            marked_yaml::FromYamlError::FromNode(n) => n.start_mark().map(|m| m.line()),
            marked_yaml::FromYamlError::ParseYaml(_) => None,
        };
        TestFileError::Yaml {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        }
    })
}

/// The ids of the rules that the test files of `dir` name (as their rule or in an
/// expectation); unreadable files name none.
pub(crate) fn tested_rules(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in test_files(dir).unwrap_or_default() {
        if let Ok(t) = read_test_file(&f) {
            out.extend(t.rules_named().map(String::from));
        }
    }
    out
}

impl Suite {
    /// Reads and builds every test file in `dir`. A file that cannot be read is one failing
    /// case, so a broken test file fails the run rather than vanishing from it.
    pub fn load(dir: &Path) -> Result<Suite, SuiteError> {
        let files = test_files(dir)?;
        let mut signer = keys::Signer::default();
        let mut suite = Suite {
            files: files.len(),
            cases: Vec::new(),
        };
        for path in &files {
            let file = match read_test_file(path) {
                Ok(f) => f,
                Err(e) => {
                    suite.cases.push(TestCase {
                        origin: path.display().to_string(),
                        name: "<the test file>".into(),
                        rule: String::new(),
                        built: Err(CaseError::File(Arc::new(e))),
                    });
                    continue;
                }
            };
            let posture = build::posture(file.posture.as_ref()).map(Arc::new);
            for case in &file.cases {
                let line = case.name.span().start().map(marked_yaml::Marker::line);
                let built = posture.clone().and_then(|p| {
                    let mut b = build_case(case, &file.rule, file.format.as_deref(), &mut signer)?;
                    b.posture = p;
                    Ok(b)
                });
                suite.cases.push(TestCase {
                    origin: at(path, line),
                    name: case.name.to_string(),
                    rule: file.rule.clone(),
                    built: built.map_err(CaseError::from),
                });
            }
        }
        Ok(suite)
    }

    /// Runs every case against `rules`.
    pub fn run(&self, rules: &Arc<RuleSet>) -> Report {
        let results = self
            .cases
            .iter()
            .map(|c| CaseResult {
                origin: c.origin.clone(),
                name: c.name.clone(),
                outcome: match &c.built {
                    Ok(b) => run_case(b, &c.rule, rules),
                    Err(e) => Outcome::Broken(e.to_string()),
                },
            })
            .collect();
        Report {
            files: self.files,
            results,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub origin: String,
    pub name: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Passed,
    Failed {
        missing: Vec<Expect>,
        unexpected: Vec<Decision>,
        /// Every decision of the rules in scope, in order.
        actual: Vec<Decision>,
    },
    /// The case could not be built or run.
    Broken(String),
}

/// The results of a run, printed like `cargo test`.
#[derive(Debug, Clone)]
pub struct Report {
    pub files: usize,
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Passed))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// One line per case, then each failure with its diff, then `N passed, M failed`.
    pub fn render(&self) -> String {
        let mut out = format!("running {} cases from {} test files\n", self.results.len(), self.files);
        for r in &self.results {
            let verdict = if matches!(r.outcome, Outcome::Passed) {
                "ok"
            } else {
                "FAILED"
            };
            let _ = writeln!(out, "case {} {} ... {verdict}", r.origin, r.name);
        }
        let failures: Vec<_> = self
            .results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Passed))
            .collect();
        if !failures.is_empty() {
            out.push_str("\nfailures:\n");
            for r in failures {
                let _ = writeln!(out, "\n---- {} {} ----", r.origin, r.name);
                render_failure(&mut out, &r.outcome);
            }
        }
        let _ = writeln!(out, "\n{} passed, {} failed", self.passed(), self.failed());
        out
    }
}

fn render_failure(out: &mut String, o: &Outcome) {
    match o {
        Outcome::Passed => {}
        Outcome::Broken(e) => {
            let _ = writeln!(out, "  cannot run: {e}");
        }
        Outcome::Failed {
            missing,
            unexpected,
            actual,
        } => {
            let _ = writeln!(out, "  decisions (- expected, not made; + made, not expected):");
            for e in missing {
                let _ = writeln!(out, "  - {}", show_expect(e));
            }
            for d in unexpected {
                let _ = writeln!(out, "  + {}", show_decision(d));
                let _ = writeln!(out, "      reason: {}", d.reason);
            }
            let _ = writeln!(out, "  all decisions of the rules under test ({}):", actual.len());
            for d in actual {
                let _ = writeln!(out, "    {}", show_decision(d));
            }
        }
    }
}

fn run_case(b: &BuiltCase, rule: &str, rules: &Arc<RuleSet>) -> Outcome {
    let mut scope: BTreeSet<&str> = b.expect.iter().map(|e| &*e.rule).collect();
    scope.insert(rule);
    scope.extend(b.expect_none.iter().map(|s| &**s));
    if let Some(r) = scope.iter().find(|r| !rules.rules.iter().any(|x| &*x.id == **r)) {
        return Outcome::Broken(format!("no rule `{r}` in the rule set"));
    }
    let cfg = PipelineConfig {
        format: b.format,
        verify: Some(keys::verifier()),
        posture: b.posture.clone(),
        ..PipelineConfig::default()
    };
    let mut p = match Pipeline::new(rules.clone(), Some(crate::defaults::test_geo_db()), cfg) {
        Ok(p) => p,
        Err(e) => return Outcome::Broken(e.to_string()),
    };
    let mut all = Vec::new();
    for l in &b.lines {
        p.process_line(l.as_bytes(), &mut all);
    }
    let actual: Vec<Decision> = all.into_iter().filter(|d| scope.contains(&*d.rule)).collect();
    let mut taken = vec![false; actual.len()];
    let mut missing = Vec::new();
    for e in &b.expect {
        match (0..actual.len()).find(|&i| !taken[i] && matches(e, &actual[i])) {
            Some(i) => taken[i] = true,
            None => missing.push(e.clone()),
        }
    }
    let unexpected: Vec<Decision> = actual
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(d, _)| d.clone())
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed {
            missing,
            unexpected,
            actual,
        }
    }
}

fn matches(e: &Expect, d: &Decision) -> bool {
    *e.rule == *d.rule
        && e.token_id.as_deref().is_none_or(|t| d.token_id.as_deref() == Some(t))
        && e.subject.as_deref().is_none_or(|s| d.subject.as_deref() == Some(s))
        && e.at_ms.is_none_or(|at| d.ts - START_MS == at)
        && e.action.as_deref().is_none_or(|a| a == d.action.as_str())
        && e.client_ip.is_none_or(|ip| d.client_ip == Some(ip))
}

fn show_expect(e: &Expect) -> String {
    let mut s = format!("{{rule: {}", e.rule);
    if let Some(t) = &e.token_id {
        let _ = write!(s, ", token_id: {t}");
    }
    if let Some(t) = &e.subject {
        let _ = write!(s, ", subject: {t}");
    }
    if let Some(at) = e.at_ms {
        let _ = write!(s, ", at: {}", fmt_offset(at));
    }
    if let Some(a) = &e.action {
        let _ = write!(s, ", action: {a}");
    }
    if let Some(ip) = &e.client_ip {
        let _ = write!(s, ", client_ip: {ip}");
    }
    s.push('}');
    s
}

/// A decision in the shorthand of `expect:`, so a failing case shows what to write.
pub(crate) fn show_decision(d: &Decision) -> String {
    let mut s = format!("{{rule: {}", d.rule);
    if let Some(t) = &d.token_id {
        let _ = write!(s, ", token_id: {t}");
    }
    if let Some(t) = &d.subject {
        let _ = write!(s, ", subject: {t}");
    }
    let _ = write!(
        s,
        ", at: {}, action: {}",
        fmt_offset(d.ts - START_MS),
        d.action.as_str()
    );
    if let Some(ip) = &d.client_ip {
        let _ = write!(s, ", client_ip: {ip}");
    }
    s.push('}');
    s
}

/// A warning for each rule of `set` that revokes (in enforce mode) and that no test file in
/// `dir` names: a revoking rule can lock users out, so it should not change untested.
pub fn untested_revoking(dir: &Path, set: &RuleSet) -> Vec<String> {
    let tested = tested_rules(dir);
    set.rules
        .iter()
        .filter(|r| r.action != crate::rules::Action::Alert && !r.shadow && !tested.contains(&*r.id))
        .map(|r| {
            format!(
                "{}: warning: rule `{}` revokes ({}) but no *.test.yaml in {} tests it",
                r.origin,
                r.id,
                r.action.as_str(),
                dir.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.test.yaml");
        std::fs::write(&path, text).unwrap();
        read_test_file(&path).unwrap_err().to_string()
    }

    /// An error with a line says `file:line:`; one without says `file:`, never `file:0:`.
    #[test]
    fn broken_test_files_name_the_file_and_a_known_line_only() {
        for text in [
            "rule: r\ncases:\n  - name: a\n    nam: b\n",
            "cases: []\n",
            "rule: [\n",
            "",
            "rule: r\ncases: 5\n",
        ] {
            let e = broken(text);
            assert!(e.contains("x.test.yaml"), "{e}");
            assert!(!e.contains(":0:") && !e.contains(":0 "), "{text:?}: {e}");
        }
        let e = broken("rule: r\ncases:\n  - name: a\n    nam: b\n");
        assert!(e.contains("x.test.yaml:4: "), "{e}");
        assert_eq!(at(Path::new("r/x.test.yaml"), None), "r/x.test.yaml");
        assert_eq!(at(Path::new("r/x.test.yaml"), Some(3)), "r/x.test.yaml:3");
    }
}
