//! tokenwatch's integration tests: one binary, one module per subject (each module opens
//! with what it specifies). Shared helpers live in [`common`], test keys in [`support`], the
//! real `tokenwatch run` process in [`run_bin`].
//!
//! `tests/perf_alloc/` stays a binary of its own: it installs a counting global allocator,
//! which counts the allocations of the whole process, so any other test running beside it
//! would disturb its figures.

mod common;
mod run_bin;
mod support;

mod alerts;
mod attestation;
mod cli;
mod code_shape;
mod compose;
mod demo;
mod deploy;
mod e2e_tansu;
mod explain_diff;
mod field_types;
mod forged_never_revoke;
mod forged_tokens;
mod gateways;
mod gen_geoip;
mod gen_signing;
mod golden;
mod kafka_codecs;
mod memory_spray;
mod never_panics;
mod no_raw_token;
mod redis_sink;
mod report;
mod restart;
mod ruletest;
mod run_process;
mod scale_out;
mod service;
mod shuffle;
mod size_caps;
mod token_reference;
mod verify_jwks;
