//! tokenwatch-core: the detection core of tokenwatch, which catches stolen and misused JSON Web Tokens in API-gateway access logs.
//!
//! The modules follow the data flow of one log line:
//!
//! 1. [`input`] reads lines (bounded in length) and parses each gateway's format into one
//!    [`input::Event`];
//! 2. [`token`] decodes the JWT's header and claims without any key, once per distinct token;
//!    with a JWKS, [`verify`] checks its signature with public keys, once per distinct token;
//! 3. [`geo`] gives the client address a location;
//! 4. [`rules`] loads the YAML rule files into compiled rules, and [`engine`] runs them over
//!    event-time windows with bounded state, fed in one event-time order by [`eventtime`];
//! 5. [`decision`] is what comes out: one JSON object per firing rule;
//! 6. [`pipeline`] wires 1–5 together for one stream of lines, and [`replay`] drives it from
//!    files for `tokenwatch replay`; [`posture::stats`] gathers the statistics of `tokenwatch report`
//!    during such a replay.
//! 7. [`record`] carries a decoded use of a token (never the token) from the service's ingest
//!    stage to its detect stage when the work is split by key over Kafka.
//!
//! Around the data flow, for the people who write rules: [`ruletest`] runs the rule tests
//! kept beside the rules (`tokenwatch test`), [`explain`] shows what one rule did with one
//! token or subject, and [`diff`] compares two rule sets over the same logs.

//!
//! This crate holds no runtime: no tokio, Kafka, Redis or Prometheus. The service around it
//! (the `tokenwatch` binary's crate) reads Kafka, writes Redis and exports metrics.

pub mod decision;
pub mod defaults;
pub mod diff;
pub mod engine;
pub mod eventtime;
pub mod explain;
pub mod geo;
pub mod hash;
pub mod heap;
pub mod input;
pub mod pipeline;
pub mod posture;
pub mod record;
pub mod replay;
pub mod rules;
pub mod ruletest;
pub mod token;
pub mod verify;
