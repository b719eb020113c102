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
