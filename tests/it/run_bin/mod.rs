//! The real `tokenwatch run` process, for the tests that need a process: signals, exit
//! codes, what reaches stderr. Kafka is librdkafka's mock cluster, started in the test process
//! (it listens on a real port the binary connects to); Redis is a real redis-server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `tokenwatch run`; killed on drop if still running.
pub struct Tokenwatch {
    child: Child,
    pub metrics: SocketAddr,
    pub alerts: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `tokenwatch run` command line of every process test: topic `logs` of `brokers`,
/// consumer group `group`, the repository's rules and test GeoIP database, alerts to `alerts`,
/// metrics on `metrics`, and batches that wait at most 10 ms. Add arguments, environment and
/// stdio to it, then spawn.
pub fn command(brokers: &str, redis_url: &str, group: &str, metrics: SocketAddr, alerts: &Path) -> Command {
    let root = crate::common::root();
    let mut c = crate::common::tokenwatch_command();
    c.arg("run")
        .args([
            "--brokers",
            brokers,
            "--topic",
            "logs",
            "--group",
            group,
            "--redis",
            redis_url,
        ])
        .arg("--rules")
        .arg(root.join("rules"))
        .arg("--geoip")
        .arg(root.join("assets/GeoLite2-City-Test.mmdb"))
        .arg("--alerts")
        .arg(alerts)
        .args(["--metrics-addr", &metrics.to_string()])
        .env("TOKENWATCH_BATCH__MAX_WAIT", "10ms");
    c
}

/// Starts `tokenwatch run` ([`command`]) with `args` and `env` added (or overriding), in the
/// repository's root, its stderr kept for [`Tokenwatch::stderr`].
pub fn start(brokers: &str, redis_url: &str, group: &str, args: &[&str], env: &[(&str, &str)]) -> Tokenwatch {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let stderr = dir.path().join("stderr.log");
    let metrics: SocketAddr = format!("127.0.0.1:{}", crate::common::free_port()).parse().unwrap();
    let child = command(brokers, redis_url, group, metrics, &alerts)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .current_dir(crate::common::root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Tokenwatch {
        child,
        metrics,
        alerts,
        stderr,
        _dir: dir,
    }
}

impl Tokenwatch {
    /// GET on the metrics address: (status, body), or None while nothing listens.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    }

    /// Waits until /metrics satisfies `f`; returns that body.
    pub fn wait_metrics(&mut self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some((200, body)) = self.get("/metrics") {
                if f(&body) {
                    return body;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tokenwatch exited ({status}) while waiting for {what}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.get("/readyz").map(|(c, _)| c) != Some(200) {
            assert!(Instant::now() < deadline, "not ready; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a signal by name (`HUP`, `INT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -s {sig}");
    }

    /// Waits for the process to exit; panics after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tokenwatch still running after {secs} s; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The alert lines written so far (none before the file exists).
    pub fn alert_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.alerts)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Tokenwatch {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines the service has read (decoded and skipped).
pub fn seen(body: &str) -> u64 {
    let n = |r| crate::common::metric(body, &format!("tokenwatch_events_total{{result=\"{r}\"}}")).unwrap_or(0.0);
    (n("decoded") + n("skipped")) as u64
}
