//! `nginx`: the `log_format ... escape=json` recommended in README.
//!
//! `$msec` (epoch seconds with milliseconds) is preferred over `$time_iso8601`, which has
//! only whole seconds; either is accepted.

use super::{Fields, RawLine};

pub fn fields(r: RawLine<'_>) -> Fields<'_> {
    Fields {
        ts: r.msec.or(r.time_iso8601),
        client_ip: r.remote_addr.0,
        method: r.request_method.0,
        path: r.request_uri.0,
        status: r.status,
        user_agent: r.http_user_agent.0,
        authorization: r.http_authorization.0,
        ..Fields::default()
    }
}
