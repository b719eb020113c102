//! Where log lines come from in the service: Kafka ([`kafka`]).

pub mod kafka;
