//! Helpers shared by the integration tests (each test file includes this with `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenwatch::decision::Decision;
use tokenwatch::geo::GeoDb;
use tokenwatch::input::Format;
use tokenwatch::pipeline::{Pipeline, PipelineConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn geo() -> GeoDb {
    GeoDb::open(&root().join("assets/GeoLite2-City-Test.mmdb")).unwrap()
}

pub fn pipeline(format: Format) -> Pipeline {
    let rules = Arc::new(tokenwatch::rules::load_dir(&root().join("rules")).unwrap());
    Pipeline::new(
        rules,
        Some(geo()),
        PipelineConfig {
            format,
            ..PipelineConfig::default()
        },
    )
    .unwrap()
}

/// Runs a file through a pipeline, returning the decisions.
pub fn run_file(p: &mut Pipeline, path: &Path) -> Vec<Decision> {
    let text = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        p.process_line(line, &mut out);
    }
    out
}

/// Compact JWTs found in a text (header.payload.signature; the signature may be empty).
pub fn jwts_in(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(env: &str, name: &str) -> String {
    match std::env::var(env) {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let found = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}"))
                .output()
                .unwrap();
            let p = String::from_utf8_lossy(&found.stdout).trim().to_string();
            assert!(
                !p.is_empty(),
                "{name} not found: run scripts/test-deps.sh (or set {env})"
            );
            p
        }
    }
}

/// A real redis-server on a free loopback port, with no persistence unless asked; killed on
/// drop. Never the machine's own Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    aof: bool,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// With `aof`, writes are fsynced to an append-only file, so a restart keeps them.
    pub fn start_with(aof: bool) -> RedisServer {
        Self::start_args(aof, &[])
    }

    /// With extra redis-server arguments (`--requirepass`, `--cluster-enabled`...). The
    /// readiness check then only waits for the port.
    pub fn start_args(aof: bool, extra: &[&str]) -> RedisServer {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            aof,
            extra,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = tool("TOKENWATCH_TEST_REDIS_SERVER", "redis-server");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        if !self.extra.is_empty() {
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start on port {}",
                    self.port
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            return;
        }
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (and, with AOF, the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The entries of the revocation stream: (kind, id) pairs in order.
pub fn stream_entries(c: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let v: redis::Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(c).unwrap();
    let mut out = Vec::new();
    if let redis::Value::Array(entries) = v {
        for e in entries {
            let redis::Value::Array(parts) = e else { continue };
            let Some(redis::Value::Array(fields)) = parts.get(1) else {
                continue;
            };
            let s = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            let mut kind = String::new();
            let mut id = String::new();
            for kv in fields.chunks(2) {
                match s(&kv[0]).as_str() {
                    "kind" => kind = s(&kv[1]),
                    "id" => id = s(&kv[1]),
                    _ => {}
                }
            }
            out.push((kind, id));
        }
    }
    out
}
