//! `tokenwatch report`: the Markdown form of a fixture's report is exactly the committed one;
//! text from the logs (paths, token ids, algorithm names) never becomes markup in either form;
//! and the HTML page of a generated day renders in a real browser (headless Chromium) to a
//! screenshot that is not blank, with no console error.
//!
//! Chromium comes from TOKENWATCH_TEST_CHROMIUM (`scripts/test-deps.sh` installs it and sets
//! it); without it the browser test says so and skips. Set TOKENWATCH_BLESS=1 to rewrite the
//! golden report after a deliberate change, then review the diff.

use crate::common;
use crate::support::keys;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// Runs `tokenwatch report` from the repository root with the default rules and the test
/// JWKS; returns the report. A log under the root is named relative to it (as the report's
/// inputs line shows it).
fn report(format: &str, log: &Path, jwks: &Path) -> String {
    let root = common::root();
    let log = log.strip_prefix(&root).unwrap_or(log);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run = common::tokenwatch_command()
        .current_dir(&root)
        .args(["report", "--format", format, "--rules", "rules", "--jwks"])
        .arg(jwks)
        .arg(log)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn the_markdown_report_of_the_canonical_fixture_matches_its_golden_file() {
    let got = report("md", Path::new("tests/fixtures/canonical.log"), &keys::jwks());
    let golden = common::fixture("golden/report-canonical.md");
    if std::env::var_os("TOKENWATCH_BLESS").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want, "the report differs from {}", golden.display());
    // what the fixture holds, as a security lead reads it
    for line in [
        "| unsigned-token | critical | 1 | 64 |",
        "| https://idp.example.com | k1 | 9 |",
        "| token in URL | /api/v1/export | 1 |",
        "Requests with a token over plain HTTP: not logged",
    ] {
        assert!(got.contains(line), "{line}\n{got}");
    }
    assert!(common::jwts_in(&got).is_empty(), "a token in the report:\n{got}");
}

/// A log whose paths, token ids and algorithm names are markup: a token in the URL of a
/// `<script>` path, with a `jti` and (forged) an `alg` that are HTML elements.
fn hostile_log(dir: &Path) -> PathBuf {
    let t0 = keys::T0;
    let mut claims = keys::claims("mallory", "<img src=x onerror=alert(1)>", t0);
    let signed = keys::rs256(&claims);
    claims["jti"] = json!("forged-1");
    let forged = keys::forged(&json!({"alg": "<svg onload=alert(2)>", "kid": "k1"}), &claims);
    let path = dir.join("hostile.log");
    let mut f = std::fs::File::create(&path).unwrap();
    for (i, (token, path)) in [(&signed, "/a/<script>alert(3)</script>|x"), (&forged, "/b")]
        .into_iter()
        .enumerate()
    {
        let line = json!({
            "ts": format!("2026-11-29T00:00:{:02}.000Z", 10 + i),
            "client_ip": "198.51.100.7", "method": "GET",
            "path": format!("{path}?access_token={token}"), "status": 200, "user_agent": "curl/8",
        });
        writeln!(f, "{line}").unwrap();
    }
    path
}

#[test]
fn text_from_the_logs_never_becomes_markup() {
    let dir = tempfile::tempdir().unwrap();
    let log = hostile_log(dir.path());
    let html = report("html", &log, &keys::jwks());
    for markup in ["<script", "<img", "<svg onload"] {
        assert!(!html.contains(markup), "{markup} in the HTML report:\n{html}");
    }
    for shown in [
        "/a/&lt;script&gt;alert(3)&lt;/script&gt;|x",
        "&lt;img src=x onerror=alert(1)&gt;",
        "&lt;svg onload=alert(2)&gt;",
    ] {
        assert!(html.contains(shown), "{shown} not shown escaped:\n{html}");
    }
    let md = report("md", &log, &keys::jwks());
    for markup in ["<script", "<img"] {
        assert!(!md.contains(markup), "{markup} in the Markdown report:\n{md}");
    }
    assert!(md.contains("/a/&lt;script&gt;alert(3)&lt;/script&gt;\\|x"), "{md}");
    assert!(common::jwts_in(&html).is_empty() && common::jwts_in(&md).is_empty());
}

/// Chromium, or `None` (with the reason on stderr) when TOKENWATCH_TEST_CHROMIUM is unset.
fn chromium() -> Option<PathBuf> {
    let Some(p) = std::env::var_os("TOKENWATCH_TEST_CHROMIUM").filter(|p| !p.is_empty()) else {
        eprintln!("skipped: TOKENWATCH_TEST_CHROMIUM is unset (scripts/test-deps.sh installs Chromium and sets it)");
        return None;
    };
    let p = PathBuf::from(p);
    assert!(p.is_file(), "TOKENWATCH_TEST_CHROMIUM={} does not exist", p.display());
    Some(p)
}

/// Headless Chromium on `page` with `args`; returns its stdout and stderr.
fn headless(chromium: &Path, profile: &Path, page: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"])
        .args(["--enable-logging=stderr", "--v=0", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines where the page itself failed: a script error or a console message.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("Uncaught") || l.contains("CONSOLE"))
        .collect()
}

/// Distinct colours and the share of pixels that differ from the page's background (the
/// top-left pixel).
fn pixel_variety(png_path: &Path) -> (u32, u32, usize, f64) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.color_type.samples();
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(bpp).collect();
    let bg = px[0];
    let colours: std::collections::HashSet<&[u8]> = px.iter().copied().collect();
    let other = px.iter().filter(|p| **p != bg).count();
    (info.width, info.height, colours.len(), other as f64 / px.len() as f64)
}

#[test]
fn the_html_report_of_a_generated_day_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&target).unwrap();
    let cfg = common::generated_day(tokenwatch_gen::GenFormat::Canonical);
    let seed = cfg.seed;
    let log = target.join("day.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    for g in tokenwatch_gen::Generator::new(cfg) {
        writeln!(f, "{}", g.line).unwrap();
    }
    drop(f);
    let page = target.join("report.html");
    std::fs::write(&page, report("html", &log, &common::gen_jwks_file(seed))).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=", "href=", "url(", "<script", "<link", "@import"] {
        assert!(
            !html.contains(external),
            "{external}: the page must need nothing outside itself"
        );
    }

    let profile = tempfile::tempdir().unwrap();
    let shot = target.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let (_, stderr) = headless(
        &chromium,
        profile.path(),
        &page,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(console_errors(&stderr).is_empty(), "{stderr}");
    let (w, h, colours, covered) = pixel_variety(&shot);
    assert_eq!((w, h), (1280, 2000));
    assert!(colours > 50, "{colours} colours: a blank page? {}", shot.display());
    assert!(
        covered > 0.10,
        "{covered:.3} of the page drawn: a blank page? {}",
        shot.display()
    );

    let (dom, stderr) = headless(&chromium, profile.path(), &page, &["--dump-dom"]);
    assert!(console_errors(&stderr).is_empty(), "{stderr}");
    for part in [
        "Findings, ranked by risk",
        "token-replay",
        "Signing keys",
        "<svg",
        "RS256",
    ] {
        assert!(dom.contains(part), "{part} not in the rendered page");
    }
    eprintln!("screenshot: {}", shot.display());
}
