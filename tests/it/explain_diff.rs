//! `tokenwatch explain` and `tokenwatch diff` on the canonical fixture log give exactly the
//! committed outputs: a token that fired and one that did not (and why), a subject, JSON for
//! tools, and the impact of a changed and a removed rule. Set TOKENWATCH_BLESS=1 to rewrite
//! the expected files after a deliberate change, then review the diff.

use crate::common;

use std::process::{Command, Output};

/// Runs the binary; `explain` and `diff` verify the fixture's tokens with the test JWKS (they
/// are signed with its key), so its revoking rules may fire.
fn tokenwatch(args: &[&str]) -> Output {
    let mut args: Vec<&str> = args.to_vec();
    if matches!(args.first(), Some(&"explain" | &"diff")) {
        args.splice(1..1, ["--jwks", "tests/fixtures/keys/jwks.json"]);
    }
    Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(&args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

/// Runs `args`, expects `code`, and compares stdout with `tests/fixtures/golden/NAME`.
fn golden(name: &str, args: &[&str], code: i32) -> String {
    let out = tokenwatch(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = common::fixture("golden").join(name);
    if std::env::var_os("TOKENWATCH_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &stdout).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(stdout, want, "{args:?} differs from {}", path.display());
    stdout
}

const LOG: &str = "tests/fixtures/canonical.log";
const GEO: &str = "assets/GeoLite2-City-Test.mmdb";

#[test]
fn explain_a_token_that_fired() {
    let out = golden(
        "explain-token-replay-bob.txt",
        &["explain", "--rule", "token-replay", "--token", "tok-bob-1", LOG],
        0,
    );
    assert!(out.contains("progress: 3 of 3 distinct network within 10m"), "{out}");
    assert!(
        out.contains("verdict: fired at tests/fixtures/canonical.log:23"),
        "{out}"
    );
}

#[test]
fn explain_a_token_that_did_not_fire_and_why() {
    let out = golden(
        "explain-token-replay-ivan.txt",
        &["explain", "--rule", "token-replay", "--token", "tok-ivan-1", LOG],
        0,
    );
    assert!(out.contains("where failed: accepted is false, needs eq true"), "{out}");
    assert!(out.contains("verdict: did not fire: at its last evaluation"), "{out}");
    assert!(out.contains("below the threshold: 2 of 3 distinct network"), "{out}");
    assert!(out.contains("2 event(s) stopped by `accepted eq true`"), "{out}");
    // no token ever reaches the output
    assert!(common::jwts_in(&out).is_empty(), "{out}");

    let json = golden(
        "explain-token-replay-ivan.json",
        &[
            "explain",
            "--json",
            "--rule",
            "token-replay",
            "--token",
            "tok-ivan-1",
            LOG,
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["token_id"], "tok-ivan-1");
    assert_eq!(v["events"][0]["step"], "where_failed");
    assert_eq!(v["events"][0]["field"], "accepted");
    assert_eq!(v["decisions"].as_array().unwrap().len(), 0);
}

#[test]
fn explain_a_subject_and_its_travel() {
    let out = golden(
        "explain-impossible-travel-carol.txt",
        &[
            "explain",
            "--geoip",
            GEO,
            "--rule",
            "impossible-travel",
            "--subject",
            "https://idp.example.com|carol",
            LOG,
        ],
        0,
    );
    assert!(out.contains("FIRED: Subject travelled impossibly fast"), "{out}");
    assert!(out.contains("cooling down from an earlier decision until"), "{out}");
}

#[test]
fn explain_an_unknown_rule_names_the_rules() {
    let out = tokenwatch(&["explain", "--rule", "nope", "--token", "x", LOG]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no rule `nope`") && err.contains("token-replay"), "{err}");
}

#[test]
fn diff_shows_what_a_rule_change_would_have_done() {
    let args = [
        "diff",
        "--geoip",
        GEO,
        "--rules",
        "rules",
        "--rules",
        "tests/fixtures/rules-next",
        LOG,
    ];
    let out = golden("diff-rules-next.txt", &args, 0);
    assert!(out.contains("token-replay: +"), "{out}");
    assert!(
        out.contains("excessive-lifetime (removed rule): +0 decisions (0 revocations), -1"),
        "{out}"
    );
    assert!(common::jwts_in(&out).is_empty(), "{out}");

    let mut strict = args.to_vec();
    strict.insert(1, "--fail-on-new-revocations");
    assert_eq!(tokenwatch(&strict).status.code(), Some(1));
}

#[test]
fn diff_of_a_rule_set_with_itself_is_empty() {
    let out = tokenwatch(&[
        "diff",
        "--fail-on-new-revocations",
        "--rules",
        "rules",
        "--rules",
        "rules",
        LOG,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("total: +0 decisions (0 revocations), -0 decisions (0 revocations)"),
        "{text}"
    );
}
