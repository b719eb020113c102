//! The `tokenwatch` binary as an operator runs it: exit codes, stdout, stderr.

use crate::common;

use std::process::Output;

fn tokenwatch(args: &[&str]) -> Output {
    common::tokenwatch_command()
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn replay_prints_decisions_and_a_summary() {
    let f = common::fixture("traefik.log");
    let geo = common::root().join("assets/GeoLite2-City-Test.mmdb");
    // the fixtures' tokens are signed with the test key of this JWKS
    let jwks = common::root().join("tests/fixtures/keys/jwks.json");
    let out = tokenwatch(&[
        "replay",
        "--geoip",
        geo.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let golden = std::fs::read_to_string(common::fixture("traefik.decisions.jsonl")).unwrap();
    assert_eq!(stdout, golden);
    let err = text(&out.stderr);
    assert!(
        err.contains("26 lines read, 23 events decoded, 3 skipped, 9 decisions"),
        "{err}"
    );
    assert!(
        err.contains("invalid_json") && err.contains("token_not_three_segments"),
        "{err}"
    );
    assert!(err.contains("token-replay revoke_token"), "{err}");
    assert!(err.contains("authenticated events (may revoke): 21;"), "{err}");
    // throughput is decoded events per second
    assert!(err.contains(" events/s)") && !err.contains("lines/s"), "{err}");
}

#[test]
fn replay_reads_stdin_and_several_files() {
    let f = common::fixture("canonical.log");
    let mut child = common::tokenwatch_command()
        .args(["replay", "-q", "--format", "canonical", "-", f.to_str().unwrap()])
        .current_dir(common::root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&std::fs::read(&f).unwrap()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("52 lines read"), "{}", text(&out.stderr));
}

#[test]
fn unreadable_inputs_fail_clearly() {
    let out = tokenwatch(&["replay", "/nonexistent/access.log"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot open input /nonexistent/access.log"),
        "{}",
        text(&out.stderr)
    );

    let out = tokenwatch(&["replay", "--rules", "/nonexistent-rules", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read the rule directory"),
        "{}",
        text(&out.stderr)
    );

    let bad_db = common::fixture("canonical.log");
    let out = tokenwatch(&["replay", "--geoip", bad_db.to_str().unwrap(), "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot open GeoIP database"),
        "{}",
        text(&out.stderr)
    );

    // a usage error, listing the formats there are
    let out = tokenwatch(&["replay", "--format", "apache", "-"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid value 'apache' for '--format <FORMAT>'")
            && err.contains("possible values: auto, canonical"),
        "{err}"
    );
}

#[test]
fn validate_accepts_the_shipped_rules_and_points_at_broken_ones() {
    let out = tokenwatch(&["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("15 rules in 15 files are valid"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "id: x\nseverity: low\naction: alert\nkind: count\nkey: subject\nthreshold: 3\nwindow: 5 minutes\n",
    )
    .unwrap();
    let out = tokenwatch(&["validate", "--rules", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml:7: `window`: "), "{err}");
}

#[test]
fn long_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.log");
    let good = std::fs::read_to_string(common::fixture("canonical.log")).unwrap();
    let long = format!("{{\"ts\":1,\"path\":\"/{}\"}}\n", "a".repeat(5000));
    std::fs::write(&f, format!("{long}{good}")).unwrap();
    let out = tokenwatch(&["replay", "-q", "--max-line-bytes", "4096", f.to_str().unwrap()]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line_too_long") && err.contains("27 lines read"), "{err}");
}

/// `tokenwatch unrevoke` as an operator runs it against redis-server: it names what it removed,
/// removes nothing the second time, and refuses to run without saying what to undo.
#[test]
fn unrevoke_prints_what_it_removed() {
    let r = common::RedisServer::start();
    let mut c = r.conn();
    let key = "tokenwatch:revoked:tok:0123456789abcdef0123456789abcdef";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(r#"{"rule":"token-replay","reason":"r","revoked_at":5}"#)
        .query(&mut c)
        .unwrap();
    let url = r.url();
    let args = [
        "unrevoke",
        "--token",
        "0123456789abcdef0123456789abcdef",
        "--redis",
        url.as_str(),
    ];
    let out = tokenwatch(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("unrevoked token 0123456789abcdef0123456789abcdef") && stdout.contains("token-replay"),
        "{stdout}"
    );
    assert!(stdout.contains("1 revocation(s) removed"), "{stdout}");
    let again = tokenwatch(&args);
    assert!(text(&again.stdout).contains("0 revocation(s) removed"));
    let none = tokenwatch(&["unrevoke", "--redis", url.as_str()]);
    assert_eq!(none.status.code(), Some(2), "usage error without a target");
    let bad = tokenwatch(&[
        "unrevoke",
        "--rule",
        "x",
        "--since",
        "yesterday",
        "--redis",
        url.as_str(),
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("--since"), "{}", text(&bad.stderr));
}

/// `--help` lists the values of every enumerated flag.
#[test]
fn help_lists_the_formats_and_log_formats() {
    let out = tokenwatch(&["run", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("auto, canonical, traefik, kong, apisix, envoy, nginx, aws, custom"),
        "{help}"
    );
    assert!(help.contains("human") && help.contains("json"), "{help}");
    let out = tokenwatch(&["gen", "--help"]);
    assert!(
        text(&out.stdout).contains("possible values: canonical, traefik, kong, envoy, nginx"),
        "{}",
        text(&out.stdout)
    );
}

/// `tokenwatch run` with a broker, topic and Redis, and `args`.
fn run_with(args: &[&str]) -> Output {
    let mut all = vec!["run", "--brokers", "b:9092", "--topic", "t", "--redis", "redis://r"];
    all.extend(args);
    tokenwatch(&all)
}

/// `run`'s command line can be extended: a flag given again overrides the earlier one (the
/// second `--metrics-addr` is the one refused).
#[test]
fn a_run_flag_given_twice_takes_the_last() {
    let out = run_with(&["--metrics-addr", "127.0.0.1:0", "--metrics-addr", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("`nowhere` is not an address"), "{err}");
}

/// Exit status 2: what must be fixed before anything runs, named where it was set (the flag,
/// the variable); status 1 is for failures at run time and for findings (`validate`).
#[test]
fn configuration_mistakes_exit_2_naming_the_flag_or_the_variable() {
    let out = tokenwatch(&["run", "--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'xml'"),
        "{}",
        text(&out.stderr)
    );

    let out = run_with(&["--metrics-addr", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("tokenwatch: --metrics-addr: metrics_addr: `nowhere` is not an address"),
        "{err}"
    );

    let out = common::tokenwatch_command()
        .args(["unrevoke", "--token", "x"])
        .env("TOKENWATCH_REDIS_CLUSTR", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("TOKENWATCH_REDIS_CLUSTR: redis_clustr: unknown field `redis_clustr`"),
        "{err}"
    );

    let out = tokenwatch(&["run", "--brokers", "b:9092", "--topic", "t"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("redis: no Redis URL given"),
        "{}",
        text(&out.stderr)
    );
}

/// A Redis that cannot be reached is a failure at run time, not a mistake: exit status 1.
#[test]
fn a_failure_at_run_time_exits_1() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let out = tokenwatch(&["rearm", "some-rule", "--redis", url.as_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}
