//! Where decisions go: revocations to Redis ([`redis`]), every decision as a JSON line to
//! stdout, a file or a Kafka topic ([`alerts`]).

pub mod alerts;
pub mod redis;
