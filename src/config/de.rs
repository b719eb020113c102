//! How the configuration's typed values are read from their text, and the conversions
//! between its [`Duration`]s and the detection core's integer milliseconds and seconds.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Error};

use tokenwatch_core::rules::parse_duration_ms;

/// A duration as rules write them (`20ms`, `5s`, `10m`, `24h`, `7d`; `0`).
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let ms = parse_duration_ms(&s).map_err(D::Error::custom)?;
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| D::Error::custom(format!("`{s}` is negative")))
}

/// A value parsed by its type's `FromStr` (formats, budgets, alert outputs).
pub(super) fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    String::deserialize(d)?.parse().map_err(D::Error::custom)
}

/// A listening address, `host:port` with a numeric host.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|_| D::Error::custom(format!("`{s}` is not an address like 127.0.0.1:9464")))
}

pub(super) fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

pub(super) fn as_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn as_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
