//! `apisix`: the default JSON of Apache APISIX's loggers (file-logger, kafka-logger,
//! http-logger, udp-logger ... without a `log_format`).
//!
//! Shaped like Kong's (`client_ip`, `request` {method, uri, url, headers}, `response` {status})
//! but timed by `start_time` in epoch milliseconds, which is also the name of Envoy's
//! timestamp: `auto` takes a line for APISIX only when `request` is an object, and then the
//! preset that reads more of it wins. APISIX logs request headers as received, so the
//! Authorization header (and the token in it) is there unless removed.

use super::{kong, Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    let ts = r.start_time.take();
    kong::request_fields(r, ts)
}
