//! The rule tests shipped beside the default rules pass, and they would catch a change to any
//! default rule: each rule's threshold, window and `where` conditions are mutated one at a
//! time (here, on the compiled rules), and every mutant makes at least one shipped case fail.

use crate::common;

use std::process::Command;
use std::sync::Arc;

use tokenwatch_core::rules::filter::{Const, Op};
use tokenwatch_core::rules::{load_dir, Kind, Rule, RuleSet};
use tokenwatch_core::ruletest::{Outcome, Suite};

fn shipped() -> (Arc<RuleSet>, Suite) {
    let dir = common::root().join("rules");
    let rules = Arc::new(load_dir(&dir).unwrap());
    (rules, Suite::load(&dir).unwrap())
}

/// The opposite condition, where there is one.
fn negated(op: &Op) -> Option<Op> {
    Some(match op {
        Op::Eq(Const::Bool(b)) => Op::Eq(Const::Bool(!b)),
        Op::Eq(c) => Op::Ne(c.clone()),
        Op::Ne(c) => Op::Eq(c.clone()),
        Op::In(c) => Op::NotIn(c.clone()),
        Op::NotIn(c) => Op::In(c.clone()),
        Op::Gt(x) => Op::Lte(*x),
        Op::Gte(x) => Op::Lt(*x),
        Op::Lt(x) => Op::Gte(*x),
        Op::Lte(x) => Op::Gt(*x),
        Op::Cidr(n) => Op::NotCidr(n.clone()),
        Op::NotCidr(n) => Op::Cidr(n.clone()),
        Op::Exists(b) => Op::Exists(!b),
        _ => return None,
    })
}

/// A numeric bound moved by `f` (`gt 24h` to `gt 48h`).
fn scaled(op: &Op, f: f64) -> Option<Op> {
    Some(match op {
        Op::Gt(x) => Op::Gt(x * f),
        Op::Gte(x) => Op::Gte(x * f),
        Op::Lt(x) => Op::Lt(x * f),
        Op::Lte(x) => Op::Lte(x * f),
        _ => return None,
    })
}

/// Every mutant of a rule's threshold, window and `where`, named.
fn mutants(rule: &Rule) -> Vec<(String, Rule)> {
    let mut out = Vec::new();
    let mut with = |name: String, f: &dyn Fn(&mut Rule)| {
        let mut r = rule.clone();
        f(&mut r);
        out.push((name, r));
    };
    match rule.kind.clone() {
        Kind::Count { threshold, window_ms }
        | Kind::DistinctCount {
            threshold, window_ms, ..
        } => {
            let set = |k: &mut Kind, t: u32, w: i64| match k {
                Kind::Count { threshold, window_ms }
                | Kind::DistinctCount {
                    threshold, window_ms, ..
                } => (*threshold, *window_ms) = (t, w),
                _ => unreachable!(),
            };
            with(format!("threshold {threshold} -> {}", threshold + 1), &|r| {
                set(&mut r.kind, threshold + 1, window_ms);
            });
            with(format!("threshold {threshold} -> {}", threshold - 1), &|r| {
                set(&mut r.kind, threshold - 1, window_ms);
            });
            with("window doubled".into(), &|r| set(&mut r.kind, threshold, window_ms * 2));
            with("window halved".into(), &|r| set(&mut r.kind, threshold, window_ms / 2));
        }
        Kind::GeoVelocity { .. } => {
            // Its thresholds are the distance and the speed, its window `max_gap`. Only a
            // shorter max_gap can change anything: no two points on Earth are more than
            // 20,015 km apart, which is under 900 km/h for any gap over 22.3 h.
            let scale = |name: &'static str, f: f64| {
                move |r: &mut Rule| {
                    if let Kind::GeoVelocity {
                        max_gap_ms,
                        min_distance_km,
                        max_speed_kmh,
                        ..
                    } = &mut r.kind
                    {
                        match name {
                            "min_distance_km" => *min_distance_km *= f,
                            "max_speed_kmh" => *max_speed_kmh *= f,
                            _ => *max_gap_ms = (*max_gap_ms as f64 * f) as i64,
                        }
                    }
                }
            };
            for p in ["min_distance_km", "max_speed_kmh"] {
                with(format!("{p} doubled"), &scale(p, 2.0));
                with(format!("{p} halved"), &scale(p, 0.5));
            }
            with("max_gap halved".into(), &scale("max_gap", 0.5));
        }
        Kind::Match | Kind::RevokedUse => {}
    }
    for (i, c) in rule.filter.conds.iter().enumerate() {
        let field = c.field.name();
        with(format!("where `{field}` dropped"), &|r| {
            r.filter.conds.remove(i);
        });
        let neg = negated(&c.op).unwrap_or_else(|| panic!("{}: no negation for `{field}`", rule.id));
        with(format!("where `{field}` negated"), &|r| {
            r.filter.conds[i].op = neg.clone();
        });
        for f in [2.0, 0.5] {
            if let Some(op) = scaled(&c.op, f) {
                with(format!("where `{field}` bound x{f}"), &|r| {
                    r.filter.conds[i].op = op.clone();
                });
            }
        }
    }
    out
}

#[test]
fn the_shipped_rule_tests_pass_and_cover_every_default_rule() {
    let (rules, suite) = shipped();
    let report = suite.run(&rules);
    assert_eq!(report.failed(), 0, "{}", report.render());
    // One test file per default rule, and a second where a rule's configuration changes
    // what it means (its `posture:`).
    assert!(suite.files >= rules.rules.len(), "a test file per default rule");
    for r in &rules.rules {
        let n = suite.cases.iter().filter(|c| c.rule == *r.id).count();
        assert!(n >= 4, "{}: only {n} cases", r.id);
    }
}

#[test]
fn every_mutation_of_a_default_rule_fails_a_shipped_case() {
    let (rules, suite) = shipped();
    let mut survived = Vec::new();
    let mut tried = 0;
    for (i, rule) in rules.rules.iter().enumerate() {
        let ms = mutants(rule);
        let has_params = !matches!(rule.kind, Kind::Match | Kind::RevokedUse);
        assert!(
            ms.len() >= 2 + 4 * usize::from(has_params),
            "{}: too few mutants",
            rule.id
        );
        for (name, m) in ms {
            tried += 1;
            let mut set = (*rules).clone();
            set.rules[i] = m;
            let report = suite.run(&Arc::new(set));
            let failed: Vec<_> = report
                .results
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
                .collect();
            // A mutant must be caught by a wrong decision, not by a case that cannot run.
            assert!(
                report.results.iter().all(|r| !matches!(r.outcome, Outcome::Broken(_))),
                "{}",
                report.render()
            );
            if failed.is_empty() {
                survived.push(format!("{}: {name}", rule.id));
            }
        }
    }
    assert!(tried >= 30, "{tried} mutants");
    assert!(survived.is_empty(), "mutants no shipped case catches: {survived:#?}");
}

#[test]
fn an_allow_list_is_tested_like_any_condition() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "id: replay-allow\nseverity: high\naction: revoke_token\nkind: distinct_count\nkey: token_id\n\
                distinct: network\nthreshold: 2\nwindow: 10m\nwhere: {authenticated: true}\nallow:\n  cidrs: [203.0.113.0/24]\n";
    std::fs::write(dir.path().join("replay-allow.yaml"), rule).unwrap();
    let cases = r#"
rule: replay-allow
cases:
  - name: two networks fire
    events:
      - {at: 0s, token: {jti: t1, sub: a}, ip: 198.51.100.7}
      - {at: 1m, token: t1, ip: 192.0.2.1}
    expect: [{token_id: t1, at: 1m}]
  - name: the egress pool on the allow list is not counted
    events:
      - {at: 0s, token: {jti: t1, sub: a}, ip: 198.51.100.7}
      - {at: 1m, token: t1, ip: 203.0.113.9}
    expect_none: [replay-allow]
"#;
    std::fs::write(dir.path().join("replay-allow.test.yaml"), cases).unwrap();
    let rules = Arc::new(load_dir(dir.path()).unwrap());
    let suite = Suite::load(dir.path()).unwrap();
    assert_eq!(suite.run(&rules).failed(), 0, "{}", suite.run(&rules).render());
    // without the allow list, the second case fails
    let mut open = (*rules).clone();
    open.rules[0].allow = Default::default();
    let report = suite.run(&Arc::new(open));
    assert_eq!((report.passed(), report.failed()), (1, 1), "{}", report.render());
    assert!(
        report.render().contains("+ {rule: replay-allow, token_id: t1"),
        "{}",
        report.render()
    );
}

fn tokenwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

#[test]
fn the_test_command_prints_each_case_a_diff_and_the_totals() {
    let out = tokenwatch(&["test", "--rules", "rules"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().ends_with(" passed, 0 failed"),
        "{stdout}"
    );
    assert!(stdout
        .contains("case rules/token-replay.test.yaml:4 three networks within ten minutes revoke the token ... ok"));

    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::root().join("rules")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let replay = dir.path().join("token-replay.yaml");
    let text = std::fs::read_to_string(&replay)
        .unwrap()
        .replace("threshold: 3", "threshold: 4");
    std::fs::write(&replay, text).unwrap();
    std::fs::write(
        dir.path().join("broken.test.yaml"),
        "rule: token-replay\ncases:\n  - nam: x\n",
    )
    .unwrap();
    let out = tokenwatch(&["test", "--rules", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("three networks within ten minutes revoke the token ... FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  - {rule: token-replay, token_id: t1, at: 9m, action: revoke_token}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken.test.yaml") && stdout.contains("nam"),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(" failed") && !last.ends_with(" 0 failed"), "{last}");
}

#[test]
fn validate_warns_about_a_revoking_rule_without_tests() {
    let out = tokenwatch(&["validate"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    let dir = tempfile::tempdir().unwrap();
    for name in [
        "token-replay.yaml",
        "unsigned-token.yaml",
        "token-in-url.yaml",
        "token-in-url.test.yaml",
    ] {
        std::fs::copy(common::root().join("rules").join(name), dir.path().join(name)).unwrap();
    }
    let out = tokenwatch(&["validate", "--rules", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token-replay.yaml:")
            && err.contains("warning: rule `token-replay` revokes (revoke_token) but no *.test.yaml"),
        "{err}"
    );
    // alerting rules and tested rules are not warned about
    assert!(
        !err.contains("unsigned-token") && !err.contains("`token-in-url`"),
        "{err}"
    );
}
