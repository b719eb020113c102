//! tokenwatch, the service: reads gateway access logs from Kafka, runs the detection core
//! ([`tokenwatch_core`]) over them, and acts on what it decides.
//!
//! The data flow of the service, in the order a line meets it:
//!
//! 1. [`source`] consumes the log topic (librdkafka), keeping per-partition offsets;
//! 2. the core's pipeline decodes, verifies and judges each line (`tokenwatch_core::pipeline`),
//!    in one event-time order across partitions (`tokenwatch_core::eventtime`);
//! 3. [`sinks`] write revocations to Redis (blocklist and feed), alerts to stdout, a file or a
//!    topic, and what cannot be delivered to a dead-letter file;
//! 4. [`checkpoint`] saves the engine state beside the committed offsets;
//! 5. [`service`] wires 1–4 together with hot reload, readiness and shutdown, and [`metrics`]
//!    serves Prometheus metrics and health endpoints; [`config`] is the typed configuration;
//!    [`demo`] runs the whole job on generated traffic.

pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod report;
pub mod service;
pub mod sinks;
pub mod source;
