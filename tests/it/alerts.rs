//! The Prometheus alerting rules (deploy/prometheus/alerts.yml) and the dashboard's queries, run
//! through promtool, the checker of the Prometheus release they are written for.
//!
//! `promtool check rules` catches what Prometheus would reject at load time (it would then run with
//! no alerts at all); `promtool test rules` runs alerts.test.yml, which feeds series and asserts
//! which alerts fire, with which labels and text. The rest checks what promtool does not: the
//! shape every alert must have, and that no annotation can carry a credential into a pager.
//!
//! promtool comes from TOKENWATCH_TEST_PROMTOOL or PATH. Without it these tests fail rather than pass
//! silently: `scripts/test-deps.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use marked_yaml::types::{MarkedMappingNode, Node};
use serde_json::Value;

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/tokenwatch.json";

/// Labels an annotation may template. tokenwatch exports no token, subject or client address as a
/// label, and an alert text must not start to print one if a label is ever added by mistake.
const TEMPLATABLE_LABELS: &[&str] = &[
    "rule",
    "action",
    "severity",
    "kind",
    "result",
    "reason",
    "topic",
    "partition",
    "output",
    "instance",
    "job",
    // The posture metrics' issuer and key id: configured issuers and their JWKS key ids only
    // (anything else is `other`), never text from a token.
    "issuer",
    "kid",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Node {
    marked_yaml::parse_yaml(0, read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("TOKENWATCH_TEST_PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TOKENWATCH_TEST_PROMTOOL={} does not exist; run scripts/test-deps.sh",
            p.display()
        );
        return p;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found: set TOKENWATCH_TEST_PROMTOOL or put it on PATH. \
                 `eval \"$(scripts/test-deps.sh)\"` installs it (Debian package prometheus) and sets it."
            )
        })
}

/// Runs promtool in the repository root: whether it succeeded, and what it printed.
fn promtool_output(args: &[&str]) -> (bool, String) {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs promtool; fails the test with promtool's own output.
fn run_promtool(args: &[&str]) -> String {
    let (ok, text) = promtool_output(args);
    assert!(ok, "promtool {} failed:\n{text}", args.join(" "));
    text
}

fn mapping<'a>(node: &'a Node, what: &str) -> &'a MarkedMappingNode {
    node.as_mapping().unwrap_or_else(|| panic!("{what} is not a mapping"))
}

fn scalar<'a>(m: &'a MarkedMappingNode, key: &str, what: &str) -> &'a str {
    m.get(key)
        .and_then(Node::as_scalar)
        .unwrap_or_else(|| panic!("{what} has no `{key}`"))
        .as_str()
}

fn list<'a>(m: &'a MarkedMappingNode, key: &str, what: &str) -> &'a [Node] {
    m.get(key)
        .and_then(Node::as_sequence)
        .unwrap_or_else(|| panic!("{what} has no list `{key}`"))
}

/// Every alerting rule of alerts.yml.
fn alert_rules(doc: &Node) -> Vec<&MarkedMappingNode> {
    list(mapping(doc, ALERTS), "groups", ALERTS)
        .iter()
        .flat_map(|g| list(mapping(g, "a group"), "rules", "a group"))
        .map(|r| mapping(r, "a rule"))
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = run_promtool(&["check", "rules", ALERTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let out = run_promtool(&["test", "rules", ALERT_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Grafana replaces its variables before Prometheus sees a query; these stand-ins let promtool
/// parse the queries as Prometheus will receive them.
fn substitute_grafana_variables(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    assert!(!e.contains('$'), "unknown Grafana variable in `{expr}`");
    e
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut queries = Vec::new();
    exprs(&dash, &mut queries);
    assert!(!queries.is_empty(), "{DASHBOARD} has no queries");
    // promtool parses PromQL only as part of a rule file, so each query becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&substitute_grafana_variables(q)).unwrap();
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {expr}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let listing: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("dashboard:query_{i} = {q}"))
        .collect();
    let (ok, text) = promtool_output(&["check", "rules", file.to_str().expect("a UTF-8 temporary path")]);
    assert!(
        ok,
        "a dashboard query is not valid PromQL:\n{text}\nqueries:\n{}",
        listing.join("\n")
    );
}

#[test]
fn every_alert_has_a_pending_period_a_severity_and_text() {
    let doc = yaml(ALERTS);
    let rules = alert_rules(&doc);
    assert!(
        rules.len() >= 7,
        "expected at least the 7 documented alerts, found {}",
        rules.len()
    );
    for r in rules {
        let name = scalar(r, "alert", "a rule");
        // An explicit `for:` (even 0m) says the pending period was decided, not forgotten.
        scalar(r, "for", name);
        let labels = mapping(
            r.get("labels").unwrap_or_else(|| panic!("{name} has no labels")),
            "labels",
        );
        let severity = scalar(labels, "severity", name);
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity} is neither critical nor warning"
        );
        let annotations = mapping(
            r.get("annotations")
                .unwrap_or_else(|| panic!("{name} has no annotations")),
            "annotations",
        );
        for key in ["summary", "description"] {
            assert!(!scalar(annotations, key, name).trim().is_empty(), "{name}: empty {key}");
        }
    }
}

/// The labels an annotation text reads through `$labels`; any other use of `$labels` (the whole
/// map, `index`) is returned as-is so that it fails the allow-list.
fn templated_labels(text: &str) -> Vec<String> {
    text.match_indices("$labels")
        .map(|(i, _)| {
            let rest = &text[i + "$labels".len()..];
            match rest.strip_prefix('.') {
                Some(r) => r
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
                None => format!("$labels{}", rest.chars().take(20).collect::<String>()),
            }
        })
        .collect()
}

#[test]
fn templated_labels_are_found() {
    assert_eq!(
        templated_labels("rule {{ $labels.rule }} on {{$labels.instance}}: {{ $value }}"),
        ["rule", "instance"]
    );
    assert_eq!(
        templated_labels("{{ index $labels \"token\" }}"),
        ["$labels \"token\" }}"]
    );
    assert_eq!(templated_labels("{{ $labels }}"), ["$labels }}"]);
}

#[test]
fn alert_text_templates_no_credential_or_client_label() {
    let doc = yaml(ALERTS);
    for r in alert_rules(&doc) {
        let name = scalar(r, "alert", "a rule");
        let annotations = r
            .get("annotations")
            .and_then(Node::as_mapping)
            .into_iter()
            .flat_map(|m| m.iter());
        for (key, value) in annotations {
            let text = value.as_scalar().map_or("", |s| s.as_str());
            for label in templated_labels(text) {
                assert!(
                    TEMPLATABLE_LABELS.contains(&label.as_str()),
                    "{name}: annotation {} templates `{label}`; only {TEMPLATABLE_LABELS:?} may appear in alert text",
                    key.as_str()
                );
            }
        }
    }
}

#[test]
fn every_alert_is_shown_firing_by_a_unit_test() {
    let alerts = yaml(ALERTS);
    let tests = yaml(ALERT_TESTS);
    let tests_map = mapping(&tests, ALERT_TESTS);
    let rule_files: Vec<&str> = list(tests_map, "rule_files", ALERT_TESTS)
        .iter()
        .filter_map(|n| n.as_scalar())
        .map(marked_yaml::types::MarkedScalarNode::as_str)
        .collect();
    let alerts_file = Path::new(ALERTS).file_name().unwrap().to_str().unwrap();
    assert!(
        rule_files.contains(&alerts_file),
        "{ALERT_TESTS} does not load {alerts_file}"
    );
    let mut fired = Vec::new();
    for t in list(tests_map, "tests", ALERT_TESTS) {
        for case in mapping(t, "a test")
            .get("alert_rule_test")
            .and_then(Node::as_sequence)
            .into_iter()
            .flat_map(|s| s.iter())
        {
            let case = mapping(case, "an alert_rule_test");
            let expected = case
                .get("exp_alerts")
                .and_then(Node::as_sequence)
                .map_or(0, |s| s.len());
            if expected > 0 {
                fired.push(scalar(case, "alertname", "an alert_rule_test").to_string());
            }
        }
    }
    for r in alert_rules(&alerts) {
        let name = scalar(r, "alert", "a rule");
        assert!(
            fired.iter().any(|f| f == name),
            "{name} has no unit test in {ALERT_TESTS} in which it fires"
        );
    }
}
